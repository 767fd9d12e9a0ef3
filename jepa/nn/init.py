"""The I-JEPA weight initialisation, shared by every transformer built on :mod:`jepa.nn`
(docs/method/ijepa.md, "Initialisation").

Every Linear weight truncated normal std 0.02 (bounds +-2 in absolute value, i.e. effectively
untruncated), biases zero, LayerNorm weight 1 / bias 0, no depth-dependent rescale. A
convolutional patch (or tubelet) embedding with kernel = stride is a Linear over flattened
patches, so ``Conv1d`` / ``Conv2d`` / ``Conv3d`` get the Linear init too (how we read the authors'
code to treat their convolutions). Mask tokens are the model's own business (I-JEPA: truncated
normal std :data:`INIT_STD`; V-JEPA: zero).
"""

from __future__ import annotations

from torch import nn

INIT_STD = 0.02
"""Standard deviation of the truncated-normal weights (and of I-JEPA's mask token)."""


def init_weights(module: nn.Module) -> None:
    """The I-JEPA initialisation of one module (use with ``nn.Module.apply``, which visits the
    children first, in registration order: the draw order is the module layout's)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
