"""Construction-time checks of a transformer's geometry, with messages that name the fix.

Each check takes ``where`` (the class or recipe field the values come from, the first words of the
message) and raises ``ValueError``. They run when a model is built; the checks of an input at run
time live in the model's own (scriptable) ``embed_tokens``.
"""

from __future__ import annotations

from jepa.errors import ConfigError
from jepa.nn.pos_embed import axis_widths_3d


def check_heads(where: str, dim: int, num_heads: int) -> None:
    """Raise unless ``num_heads`` divides the token width ``dim``."""
    if num_heads <= 0 or dim % num_heads:
        raise ConfigError(f"{where}: num_heads={num_heads} must divide the width {dim}; pick a divisor of {dim}")


def check_sincos_width(where: str, dim: int, num_axes: int, uniform_power: bool = True) -> None:
    """Raise unless the width ``dim`` splits into the sin-cos table of a ``num_axes``-D grid
    (:mod:`jepa.nn.pos_embed`): even for 1-D, a multiple of 4 for 2-D, for 3-D any positive width
    with ``uniform_power`` and a multiple of 8 without."""
    if num_axes == 1:
        if dim % 2:
            raise ConfigError(f"{where}: width {dim} must be even for the 1-D sin-cos positions")
    elif num_axes == 2:
        if dim % 4:
            raise ConfigError(f"{where}: width {dim} must be a multiple of 4 for the 2-D sin-cos positions")
    elif num_axes == 3:
        axis_widths_3d(dim, uniform_power)  # raises with the split's own message
    else:
        raise ConfigError(f"{where}: sin-cos positions exist for 1-, 2- and 3-D grids, not {num_axes}-D")


def check_patch_tiles(where: str, size_name: str, size: int, patch_name: str, patch: int) -> None:
    """Raise unless a patch of ``patch`` steps tiles the training extent ``size`` (a positive multiple)."""
    if patch <= 0 or size % patch or size < patch:
        raise ConfigError(f"{where}: {size_name}={size} must be a positive multiple of {patch_name}={patch}")


def check_stack(where: str, depth: int, drop_path: float = 0.0) -> None:
    """Raise for an empty block stack or a drop-path rate outside [0, 1)."""
    if depth <= 0:
        raise ConfigError(f"{where}: depth must be positive, got {depth}")
    if not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"{where}: drop_path must be in [0, 1), got {drop_path}")
