"""Shared test recipe: a tiny image I-JEPA on the synthetic source (builds and runs in milliseconds)."""

from __future__ import annotations

import copy
from typing import Any


def tiny_image_recipe(seed: int, **input_overrides: Any) -> dict[str, Any]:
    """Raw recipe dict: ViT with width 64, depth 2, patch 8 at 32 px; ``input_overrides`` go to modality.input."""
    return copy.deepcopy({
        "name": "tiny",
        "seed": seed,
        "data": {"source": "synthetic", "samples_per_epoch": 64, "global_batch_size": 8},
        "optim": {"epochs": 1, "warmup_epochs": 0},
        "modality": {
            "name": "image",
            "encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4},
            "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4},
            "mask": {"min_keep": 1},
            "input": {"crop_size": 32, **input_overrides},
        },
    })
