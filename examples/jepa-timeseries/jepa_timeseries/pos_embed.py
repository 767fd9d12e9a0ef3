"""Fixed 1-D sin-cos positional embeddings over time tokens.

Token ``t`` gets ``[sin(t * omega) | cos(t * omega)]`` with ``omega_i = 1 / 10000 ** (i / (D/2))``,
``i = 0 .. D/2 - 1``. TorchScript-scriptable: an exported encoder calls it at run time for
sequence lengths other than the training one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def sincos_1d(embed_dim: int, num_tokens: int, device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table for ``num_tokens`` positions.

    Computed in float64 and returned as float32, so the table does not depend on the precision
    the model runs in.

    Args:
        embed_dim: D, the token width; must be even.
        num_tokens: N, number of positions.
        device: where to build the table (default: the current default device).

    Returns:
        (N, D) float32 table.

    Raises:
        ValueError: ``embed_dim`` is odd or ``num_tokens`` is not positive.
    """
    if embed_dim % 2 != 0:
        raise ValueError("sincos_1d: embed_dim=" + str(embed_dim) + " must be even (a sin and a cos half)")
    if num_tokens <= 0:
        raise ValueError("sincos_1d: num_tokens must be positive, got " + str(num_tokens))
    half = embed_dim // 2
    omega = 1.0 / torch.pow(10000.0, torch.arange(half, dtype=torch.float64, device=device) / half)  # (D/2,)
    angle = torch.arange(num_tokens, dtype=torch.float64, device=device).unsqueeze(1) * omega.unsqueeze(0)  # (N, D/2)
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()
