"""The LeJEPA loss: every view predicts its sample's global-view centre, and SIGReg keeps each view's
embeddings an isotropic Gaussian (docs/method/lejepa.md, "Prediction term" and "Loss").

For V views (the first Vg global) of B samples, embeddings ``z_v`` of shape ``(B, K)``::

    mu         = mean of the Vg global views' z          (or an EMA teacher's centre, as given)
    prediction = mean over samples, views and coordinates of (mu - z_v)^2
    sigreg     = mean over views of SIGReg(z_v)           (:mod:`jepa.objectives.sigreg`)
    loss       = (1 - lam) * prediction + lam * sigreg

There is no predictor and no stop-gradient: ``mu`` carries gradients.

Under data parallelism (``group`` given) the SIGReg term is the global batch's on every rank,
while the prediction term is this rank's mean; with equal local batches, averaging the gradients
(and the logged values) over ranks gives the single-process result on the concatenated batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jepa.objectives.sigreg import epps_pulley


def lejepa_loss(z_views: list[Tensor], num_global: int, directions_KM: Tensor, lam: float, *,
                centre_BK: Tensor | None = None, num_points: int = 17, t_max: float = 3.0,
                group: torch.distributed.ProcessGroup | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The LeJEPA loss of one batch of views.

    Args:
        z_views: V projector outputs, each ``(B, K)``, global views first.
        num_global: Vg, how many of ``z_views`` are global views (1 <= Vg <= V).
        directions_KM: M unit directions for SIGReg, the same on every rank.
        lam: the SIGReg weight in ``[0, 1]``.
        centre_BK: the centre every view predicts, used as is (e.g. from an EMA teacher); ``None``
            for the mean of the global views' ``z``.
        num_points: T, the Epps-Pulley quadrature nodes.
        t_max: the upper end of the Epps-Pulley integration interval.
        group: the data-parallel process group for SIGReg (see :func:`~jepa.objectives.sigreg.epps_pulley`);
            ``None`` for this process only.

    Returns:
        ``(loss, prediction, sigreg)``, three scalars in float32 at least.
    """
    if not z_views:
        raise ValueError("lejepa_loss: z_views is empty")
    if not 1 <= num_global <= len(z_views):
        raise ValueError(f"lejepa_loss: num_global must be in [1, {len(z_views)}] (the number of views), "
                         f"got {num_global}")
    shapes = {tuple(z.shape) for z in z_views}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"lejepa_loss: every view must have the same shape (B, K), got {sorted(shapes)}")
    batch, dim = z_views[0].shape
    if directions_KM.ndim != 2 or directions_KM.shape[0] != dim:
        raise ValueError(f"lejepa_loss: directions_KM must have shape ({dim}, M), got {tuple(directions_KM.shape)}")
    if centre_BK is not None and tuple(centre_BK.shape) != (batch, dim):
        raise ValueError(f"lejepa_loss: centre_BK must have shape ({batch}, {dim}), got {tuple(centre_BK.shape)}")

    dtype = torch.promote_types(torch.promote_types(z_views[0].dtype, directions_KM.dtype), torch.float32)
    z_VBK = torch.stack(z_views).to(dtype)
    mu_BK = z_VBK[:num_global].mean(0) if centre_BK is None else centre_BK.to(dtype)
    prediction = (mu_BK - z_VBK).square().mean()

    # every view's M projections side by side: one Epps-Pulley call (one collective) for all views
    num_views, num_dirs = z_VBK.shape[0], directions_KM.shape[1]
    x_BVM = torch.einsum("vbk,km->bvm", z_VBK, directions_KM.to(dtype))
    stat_VM = epps_pulley(x_BVM.reshape(batch, num_views * num_dirs), num_points=num_points, t_max=t_max,
                          group=group).view(num_views, num_dirs)
    sigreg_term = stat_VM.mean()
    loss = (1 - lam) * prediction + lam * sigreg_term
    return loss, prediction, sigreg_term
