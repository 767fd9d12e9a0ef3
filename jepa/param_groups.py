"""Optimiser parameter groups: which parameters get weight decay (no DeepSpeed here).

The authors' rule: biases and 1-D parameters (norm weights) get none; everything else,
including the position tables and the mask token, does. Groups are ordered encoder decay,
predictor decay, encoder no-decay, predictor no-decay, as in the released optimiser state
(public: the released checkpoints' ``opt`` has these four groups, in this order; see
docs/method/ijepa.md, "Optimiser").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

PARAM_GROUP_NAMES = ("encoder_decay", "predictor_decay", "encoder_no_decay", "predictor_no_decay")


def is_no_decay(name: str, param: Tensor) -> bool:
    """True for parameters excluded from weight decay: biases and 1-D tensors (pos_embed, mask_token decay)."""
    return "bias" in name or param.ndim == 1


def build_param_groups(parts: dict[str, nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: every part's decayed parameters, then every part's others, parts in order
    (for I-JEPA's ``{"encoder", "predictor"}`` the authors' 4 groups, :data:`PARAM_GROUP_NAMES`).
    Each group carries its ``name`` (``PART_decay`` / ``PART_no_decay``) and ``apply_weight_decay``;
    empty groups are left out (ZeRO cannot flatten an empty group)."""
    groups = []
    for decay in (True, False):
        for part, module in parts.items():
            params = [p for n, p in module.named_parameters() if p.requires_grad and is_no_decay(n, p) != decay]
            if params:
                groups.append({"params": params, "name": f"{part}_{'decay' if decay else 'no_decay'}",
                               "apply_weight_decay": decay, "weight_decay": weight_decay if decay else 0.0})
    return groups
