"""What the image modality declares for the core's ``torch-export`` format
(:func:`jepa.export.export_torch_program`): a program with a dynamic batch and a dynamic
resolution (any H, W that are multiples of the patch, from 2 to ``MAX_GRID`` patches a side).

``torch.export.load(path).module()(x)`` maps (B, C, H, W) normalised images to final-normed
tokens (B, N, D), or with ``pooled`` to their mean (B, D). Loading needs only torch. The
program computes the sin-cos position table of the input's grid on the fly
(:func:`any_resolution_tokens`; at the training resolution it equals the stored table, which the
verification checks), so no branch depends on the input size. Our metadata is the
``extra_files`` entry ``jepa_export.json``
(``torch.export.load(path, extra_files={"jepa_export.json": ""})`` fills it in).

Verified by loading the written program back from the scratch file and comparing it with the
eager encoder at the training size, a second non-square size, and a third batch size.
"""

from __future__ import annotations

from torch import Tensor, nn

from jepa.interfaces import DynamicShapes, ExportDim
from jepa.modalities.image.pos_embed import sincos_2d

MAX_GRID = 512
"""Largest patch grid side the program accepts (a ``torch.export`` bound; 512 patches = 8192 px at /16)."""


def any_resolution_tokens(encoder: nn.Module, x: Tensor) -> Tensor:
    """The ViT encoder's forward (B, C, H, W) -> (B, N, D) with the sin-cos table always computed for
    the input's grid (the encoder takes its stored table at the training grid: a branch on H, W).

    Args:
        encoder: a :class:`~jepa.modalities.image.vit.ViTEncoder`.
        x: (B, C, H, W) normalised images, H and W multiples of the patch.
    """
    p = encoder.patch_size
    tokens = encoder.patch_embed(x)
    pos = sincos_2d(encoder.embed_dim, x.shape[-2] // p, x.shape[-1] // p, device=tokens.device)
    tokens = tokens + pos.to(tokens.dtype).unsqueeze(0)
    for blk in encoder.blocks:
        tokens = blk(tokens)
    return encoder.norm(tokens)


def image_dynamic_shapes(encoder: nn.Module) -> DynamicShapes:
    """Height and width (dimensions 2 and 3 of (B, C, H, W)): multiples of the patch from 2 to ``MAX_GRID``
    patches (``torch.export`` specialises a size of one patch away: the program refuses it)."""
    p = encoder.patch_size
    return DynamicShapes({2: ExportDim("height", p, MAX_GRID, min_multiple=2),
                          3: ExportDim("width", p, MAX_GRID, min_multiple=2)}, forward=any_resolution_tokens)
