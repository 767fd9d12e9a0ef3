"""SIGReg (Sketched Isotropic Gaussian Regularisation, LeJEPA, arXiv 2511.08544).

The method notes: docs/method/lejepa.md, "SIGReg", "Epps-Pulley statistic", "Integration points" and
"Data parallelism".

SIGReg pushes a batch of embeddings ``z_NK`` towards an isotropic Gaussian by testing random 1-D
projections of it: M unit directions ``a_KM`` (:func:`slice_directions`, redrawn every step), the
projections ``x_NM = z_NK @ a_KM``, and for every column the Epps-Pulley statistic against N(0, 1)
(:func:`epps_pulley`); SIGReg is its mean over the M directions (:func:`sigreg`).

**The statistic.** With the empirical characteristic function ``phi_hat(t) = mean_n exp(i t x_n)``
and the Gaussian one ``exp(-t^2/2)``, per direction::

    EP = N * integral of |phi_hat(t) - exp(-t^2/2)|^2 * exp(-t^2/2) dt over [-t_max, t_max]
    |phi_hat(t) - exp(-t^2/2)|^2 = (mean_n cos(t x_n) - exp(-t^2/2))^2 + (mean_n sin(t x_n))^2

It is O(1) for Gaussian samples and grows like N for a collapsed batch.

**The quadrature.** The integrand is even in t, so it is evaluated only at ``num_points`` equally
spaced nodes ``t_j`` on ``[0, t_max]`` (spacing ``dt``), with the trapezoid weights of the whole
interval ``[-t_max, t_max]`` folded onto the half: ``dt`` at the two ends, ``2 dt`` inside. Each
weight also carries the window ``exp(-t_j^2/2)``. The defaults (17 points, ``t_max = 3``) are the
released code's.

**Data parallelism.** Each rank holds its own rows. The statistic needs only the per-(t, direction)
sums of ``cos(t x_n)`` and ``sin(t x_n)`` and the row count N, so these are all-reduced (SUM) over
``group`` in one differentiable collective (:func:`torch.distributed.nn.functional.all_reduce`) and
divided by the global N: the value equals the single-process statistic on the concatenated batch,
on every rank. The backward of a SUM all-reduce sums the ranks' (identical) output gradients, so
each rank's local gradient is ``world_size`` times its share of the global one; averaging the
gradients over ranks, as data-parallel engines do, gives exactly the single-process gradient.
``group=None`` computes locally, even when ``torch.distributed`` is initialised.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

from jepa.errors import ConfigError

_SEED_DOMAIN = b"jepa.sigreg"  # blake2b personalisation, <= 16 bytes


def _direction_seed(seed: int, step: int) -> int:
    """A 32-bit generator seed that depends on both ``seed`` and ``step``.

    The CPU generator (MT19937) keeps only the low 32 bits of ``manual_seed``, so packing
    ``(seed, step)`` into one 64-bit integer would silently drop one of them; hash them instead.
    """
    digest = hashlib.blake2b(f"{seed}/{step}".encode(), digest_size=4, person=_SEED_DOMAIN).digest()
    return int.from_bytes(digest, "little")


def slice_directions(dim: int, num_slices: int, *, seed: int, step: int, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """M random unit directions in R^K, the same on every rank for the same ``(seed, step)``.

    Directions are standard Gaussian vectors normalised to unit length (uniform on the sphere),
    drawn in float32 from a CPU generator seeded by a hash of ``(seed, step)``, so every rank draws
    the same ones without communication and they change every step.

    Args:
        dim: K, the embedding dimension.
        num_slices: M, the number of directions.
        seed: the run seed.
        step: the global optimiser step.
        device: where the directions go.
        dtype: their dtype.

    Returns:
        ``directions_KM``, shape ``(dim, num_slices)``; every column has unit norm.
    """
    if dim < 1 or num_slices < 1:
        raise ConfigError(f"slice_directions: dim and num_slices must be >= 1, got dim={dim}, num_slices={num_slices}")
    generator = torch.Generator(device="cpu").manual_seed(_direction_seed(seed, step))
    directions_KM = torch.randn(dim, num_slices, generator=generator, dtype=torch.float32)
    directions_KM = directions_KM / directions_KM.norm(dim=0, keepdim=True)
    return directions_KM.to(device=device, dtype=dtype)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """At least float32: bf16/fp16 inputs are upcast, float64 stays float64."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def quadrature(num_points: int, t_max: float, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Nodes and windowed weights of the even-integrand trapezoid rule on ``[0, t_max]``.

    Args:
        num_points: T, the number of nodes (>= 2).
        t_max: the upper end of the interval (> 0).
        device: where the tensors go.
        dtype: their dtype.

    Returns:
        ``(t_T, weights_T)``: nodes ``linspace(0, t_max, T)`` and weights ``w_j * exp(-t_j^2/2)``
        with ``w = dt`` at the ends and ``2 dt`` inside, so ``sum_j weights_j f(t_j)`` approximates
        ``integral over [-t_max, t_max] of f(t) exp(-t^2/2) dt`` for an even ``f``.
    """
    if num_points < 2:
        raise ConfigError(f"epps_pulley: num_points must be >= 2, got {num_points}")
    if not t_max > 0:
        raise ConfigError(f"epps_pulley: t_max must be > 0, got {t_max}")
    t_T = torch.linspace(0.0, t_max, num_points, device=device, dtype=dtype)
    dt = t_max / (num_points - 1)
    weights_T = torch.full((num_points,), 2 * dt, device=device, dtype=dtype)
    weights_T[0] = weights_T[-1] = dt
    return t_T, weights_T * torch.exp(-0.5 * t_T.square())


def epps_pulley(x_NM: Tensor, *, num_points: int = 17, t_max: float = 3.0,
                group: torch.distributed.ProcessGroup | None = None) -> Tensor:
    """The Epps-Pulley statistic of every column of ``x_NM`` against N(0, 1).

    Args:
        x_NM: N samples (rows) of M one-dimensional variables (columns). Computed in float32 at
            least.
        num_points: T, the quadrature nodes on ``[0, t_max]``.
        t_max: the upper end of the integration interval.
        group: the process group whose ranks' rows form the batch (their sums are all-reduced with
            gradients); ``None`` for this process's rows only.

    Returns:
        ``stat_M``, shape ``(M,)``: ``N * sum_j weights_j * |phi_hat(t_j) - exp(-t_j^2/2)|^2``
        with N the global number of rows.
    """
    if x_NM.ndim != 2:
        raise ValueError(f"epps_pulley: x_NM must have shape (N, M), got {tuple(x_NM.shape)}")
    dtype = _compute_dtype(x_NM.dtype)
    x_NM = x_NM.to(dtype)
    t_T, weights_T = quadrature(num_points, t_max, device=x_NM.device, dtype=dtype)
    tx_NTM = x_NM.unsqueeze(1) * t_T.view(1, -1, 1)
    num_dirs = x_NM.shape[1]
    if group is None:
        num_rows = x_NM.shape[0]
        cos_sum_TM, sin_sum_TM = tx_NTM.cos().sum(0), tx_NTM.sin().sum(0)
    else:
        # one collective: [cos sums, sin sums, row count]; the count is a constant (no gradient)
        count = x_NM.new_full((1,), float(x_NM.shape[0]))
        packed = torch.cat([tx_NTM.cos().sum(0).flatten(), tx_NTM.sin().sum(0).flatten(), count])
        packed = dist_fn.all_reduce(packed, op=torch.distributed.ReduceOp.SUM, group=group)
        cos_sum_TM, sin_sum_TM = packed[:-1].view(2, num_points, num_dirs).unbind(0)
        num_rows = packed[-1].detach()
    gauss_T1 = torch.exp(-0.5 * t_T.square()).unsqueeze(1)
    err_TM = (cos_sum_TM / num_rows - gauss_T1).square() + (sin_sum_TM / num_rows).square()
    return num_rows * (weights_T.unsqueeze(1) * err_TM).sum(0)


def sigreg(z_NK: Tensor, directions_KM: Tensor, *, num_points: int = 17, t_max: float = 3.0,
           group: torch.distributed.ProcessGroup | None = None) -> Tensor:
    """SIGReg of one batch of embeddings: the mean Epps-Pulley statistic over M directions.

    Args:
        z_NK: N embeddings of dimension K (this rank's rows).
        directions_KM: M unit directions (:func:`slice_directions`).
        num_points: T, the quadrature nodes.
        t_max: the upper end of the integration interval.
        group: see :func:`epps_pulley`.

    Returns:
        A scalar in float32 at least.
    """
    if z_NK.ndim != 2 or directions_KM.ndim != 2 or z_NK.shape[1] != directions_KM.shape[0]:
        raise ValueError(f"sigreg: need z_NK (N, K) and directions_KM (K, M), got {tuple(z_NK.shape)} "
                         f"and {tuple(directions_KM.shape)}")
    dtype = _compute_dtype(z_NK.dtype, directions_KM.dtype)
    x_NM = z_NK.to(dtype) @ directions_KM.to(dtype)
    return epps_pulley(x_NM, num_points=num_points, t_max=t_max, group=group).mean()
