"""Up-front memory checks: what each protocol will hold, against what the machine has.

``jepa eval`` adds up, per place (host memory, the GPU, the disk of the feature cache), what
every requested protocol needs at its peak (parameters and optimiser state of the heads,
activations of one step, the encoder's forward pass, features kept; each protocol states its own
in :meth:`jepa.eval.protocols.Protocol.needs`) and refuses before any
heavy work when a place would be over :data:`USABLE_FRACTION` of what is free, naming the
bytes on each side and the flags that lower them. The estimates are deliberately simple upper
bounds of the big terms (float32, 4 bytes an element); they are not a profiler.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jepa.errors import ConfigError
from jepa.eval.knn import QUERY_CHUNK_ELEMENTS

USABLE_FRACTION = 0.8
"""Share of the free memory (or disk) a run may plan to use."""
POOLED_IN_MEMORY_FRACTION = 0.25
"""``feature_cache="auto"`` keeps stored features (pooled, or the attentive probe's tokens) in host memory up to
this share of the free memory; pooled features above it go to disk, tokens above it are not stored."""
F32 = 4


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def host_available_bytes() -> int:
    """Memory the kernel can give this process now (``MemAvailable``), or the free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def host_total_bytes() -> int:
    """Physical memory of the machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (what the caching allocator holds counts as free), or host memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return host_available_bytes()


def place_of(device: torch.device) -> str:
    return "host memory" if device.type == "cpu" else str(device)


@dataclass
class Need:
    """What one part of the evaluation holds at its peak in one place.

    Attributes:
        what: the protocol or stage (``attentive probe``).
        place: ``host memory``, a CUDA device name, or ``disk (DIR)``.
        parts: (label, bytes) terms that add up to the need.
        fix: the flags that lower it.
    """

    what: str
    place: str
    parts: list[tuple[str, int]] = field(default_factory=list)
    fix: str = ""

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        terms = ", ".join(f"{label} {gib(b)}" for label, b in self.parts if b)
        return f"{self.what} needs about {gib(self.total)} ({terms})"


def check_fits(needs: list[Need], available: dict[str, int]) -> None:
    """Refuse, with numbers, when the needs of a place add up to more than it can give.

    Needs of different protocols in one place are added: protocols run one after another but
    the largest share (the encoder, the stored features) is held throughout.

    Raises:
        ValueError: naming each place that does not fit: bytes needed per protocol, bytes free,
            and the flags to change.
    """
    problems = []
    for place in dict.fromkeys(n.place for n in needs):
        mine = [n for n in needs if n.place == place]
        total = sum(n.total for n in mine)
        free = available[place]
        if total > USABLE_FRACTION * free:
            lines = "; ".join(n.describe() for n in mine)
            fixes = "; ".join(dict.fromkeys(n.fix for n in mine if n.fix))
            problems.append(f"{place}: needs about {gib(total)} but {gib(free)} are free (at most "
                            f"{USABLE_FRACTION:.0%} of it is planned for): {lines}. To fit: {fixes}")
    if problems:
        raise ConfigError("evaluation would not fit in memory, nothing was run. " + " | ".join(problems))


def disk_free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(path).free


# --------------------------------------------------------------------------- estimates of the big terms


def encoder_forward_bytes(param_bytes: int, batch: int, tokens: int, dim: int, input_numel: int, cuda: bool) -> int:
    """One frozen forward: weights, the input batch, the widest activations (MLP, 4x) of one block
    and, off CUDA (no memory-efficient attention), one block's attention matrix (heads of width 64)."""
    heads = max(1, dim // 64)
    attention = 0 if cuda else 2 * batch * heads * tokens * tokens * F32
    return param_bytes + batch * input_numel * F32 + batch * tokens * dim * 8 * F32 + attention


def attentive_param_count(dim: int, num_classes: int, depth: int, mlp_ratio: float = 4.0) -> int:
    m = int(dim * mlp_ratio)
    cross = 4 * dim * dim + 8 * dim + 2 * dim * m + m + dim * num_classes + num_classes
    block = 4 * dim * dim + 9 * dim + 2 * dim * m + m
    return cross + (depth - 1) * block


def attentive_step_bytes(heads: int, batch: int, tokens: int, dim: int, num_classes: int, depth: int,
                         attn_heads: int, cuda: bool, mlp_ratio: float = 4.0) -> tuple[int, int]:
    """(parameters + gradients + AdamW moments of all heads, activations of one training step)."""
    m = int(dim * mlp_ratio)
    state = 4 * heads * attentive_param_count(dim, num_classes, depth, mlp_ratio) * F32
    acts = 2 * batch * tokens * dim  # the tokens and their normalised copy, shared by all heads
    acts += 3 * batch * heads * attn_heads * (tokens + dim)  # scores, weights, pooled tokens (+ grads)
    acts += 3 * batch * heads * (12 * dim + 2 * m + num_classes)  # the query's path, per head
    per_block = heads * batch * tokens * (12 * dim + 2 * m)
    if not cuda:
        per_block += 2 * heads * batch * attn_heads * tokens * tokens
    acts += (depth - 1) * per_block
    return state, acts * F32


def linear_step_bytes(heads: int, batch: int, width: int, num_classes: int) -> tuple[int, int]:
    """(state of the heads, activations of one step) of a linear grid."""
    return 4 * heads * (width + 1) * num_classes * F32, (3 * batch * heads * num_classes + 3 * batch * width) * F32


def knn_bytes(num_queries: int, width: int, k: int, batch: int) -> int:
    """Queries, their running top-k (similarity and label) and one similarity block."""
    return num_queries * width * F32 + num_queries * k * (F32 + 8) * 2 + 3 * QUERY_CHUNK_ELEMENTS * F32 + batch * width * F32
