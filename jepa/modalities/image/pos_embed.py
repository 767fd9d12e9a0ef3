"""The image's fixed 2-D sin-cos positions: :func:`jepa.nn.pos_embed.sincos_2d` (the MAE convention
I-JEPA's released checkpoints store: column code, then row code).

Kept as an import location for the image modality's export and released-checkpoint code; new code
imports :mod:`jepa.nn.pos_embed`.
"""

from jepa.nn.pos_embed import sincos_2d

__all__ = ["sincos_2d"]
