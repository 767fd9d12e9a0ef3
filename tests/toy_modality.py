"""A toy 1-D sequence modality, registered like a third-party plugin (see ``conftest.py``).

It exists to prove the core (model wiring, loss, EMA, engine, loop, checkpoints) has no image
assumptions. Inputs are ``(B, C, L)`` sequences: L tokens of C channels. The encoder is a tiny
pre-norm transformer over the L tokens, the predictor a narrower one, and the mask sampler cuts
M contiguous target spans of T tokens; the context is every token outside the spans.

It also provides the optional hooks the contract suite (``test_modality_contract.py``) exercises:
``file_suffixes`` (``.npy``), ``write_demo_data`` (sinusoids labelled by frequency band) and
``export_metadata``; its encoder is TorchScript-scriptable.
"""

# No ``from __future__ import annotations``: TorchScript needs ToyEncoder's class-level annotations
# as real types (inherited string annotations of jepa.interfaces.Encoder do not script).
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.interfaces import DemoDataSpec, Encoder, MaskSampler, MaskSet, Modality, Predictor
from jepa.model import gather_tokens
from jepa.config import ModalityConfig


class ToyConfig(ModalityConfig):
    """Toy sequence JEPA: transformer over L tokens, contiguous-span targets."""

    name: Literal["toy"] = "toy"
    seq_len: int = Field(32, gt=1, description="L, tokens per sequence")
    in_chans: int = Field(4, gt=0, description="C, channels per token")
    embed_dim: int = Field(32, gt=0)
    depth: int = Field(2, gt=0)
    num_heads: int = Field(2, gt=0)
    predictor_dim: int = Field(16, gt=0)
    predictor_depth: int = Field(1, gt=0)
    num_targets: int = Field(2, gt=0, description="M target spans per sequence")
    target_len: int = Field(4, gt=0, description="T tokens per target span")
    min_context: int = Field(4, gt=0, description="Fewest context tokens a row may keep")


class ToyBlock(nn.Module):
    """Pre-norm transformer block (fused qkv, SDPA, GELU MLP)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x_BND: Tensor) -> Tensor:
        b, n, d = x_BND.shape
        q, k, v = self.qkv(self.norm1(x_BND)).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x_BND = x_BND + self.proj(attn)
        return x_BND + self.fc2(F.gelu(self.fc1(self.norm2(x_BND))))


def _run_blocks(blocks: nn.ModuleList, x: Tensor, grad_checkpointing: bool) -> Tensor:
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class ToyEncoder(Encoder):
    """Tiny transformer over the L tokens; TorchScript-scriptable (``jepa export``)."""

    embed_dim: int
    depth: int
    grad_checkpointing: bool

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.depth = cfg.depth
        self.grad_checkpointing = False
        self.embed = nn.Linear(cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.embed_dim))  # learned; ndim 3 -> decay group
        self.blocks = nn.ModuleList(ToyBlock(cfg.embed_dim, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        _init_weights(self)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor) -> Tensor:
        return _run_blocks(self.blocks, x, True)

    def _run_blocks(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return self._blocks_checkpointed(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None) -> Tensor:
        tokens_BND = self.embed(x.transpose(1, 2)) + self.pos_embed
        if keep_idx_BK is not None:
            tokens_BND = gather_tokens(tokens_BND, keep_idx_BK)
        return self.norm(self._run_blocks(tokens_BND))

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int = 1) -> List[Tensor]:
        """The last ``num_last`` blocks' outputs (B, L, D), each normed with the final norm."""
        if num_last < 1 or num_last > self.depth:
            raise ValueError("num_last=" + str(num_last) + " must be in 1.." + str(self.depth))
        tokens_BND = self.embed(x.transpose(1, 2)) + self.pos_embed
        outputs: List[Tensor] = []
        for i, block in enumerate(self.blocks):
            tokens_BND = block(tokens_BND)
            if i >= self.depth - num_last:
                outputs.append(self.norm(tokens_BND))
        return outputs


class ToyPredictor(Predictor):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        p = cfg.predictor_dim
        self.grad_checkpointing = False
        self.predictor_embed = nn.Linear(cfg.embed_dim, p)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, p))
        self.predictor_pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, p))
        self.predictor_blocks = nn.ModuleList(ToyBlock(p, cfg.num_heads) for _ in range(cfg.predictor_depth))
        self.predictor_norm = nn.LayerNorm(p, eps=1e-6)
        self.predictor_proj = nn.Linear(p, cfg.embed_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.predictor_pos_embed, std=0.02)
        _init_weights(self)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0) -> Tensor:  # one mask pair: mask_index unused
        b, t = target_idx_BT.shape
        pos = self.predictor_pos_embed.expand(b, -1, -1)
        context = self.predictor_embed(context_BKD) + gather_tokens(pos, context_idx_BK)
        queries = self.mask_token.expand(b, t, -1) + gather_tokens(pos, target_idx_BT)
        x = _run_blocks(self.predictor_blocks, torch.cat([context, queries], dim=1), self.grad_checkpointing)
        return self.predictor_proj(self.predictor_norm(x[:, -t:]))


class SpanMaskSampler(MaskSampler):
    """M contiguous target spans of T tokens; the context is every token outside them, collated
    to the batch's shortest context by keeping the first K free positions."""

    def __init__(self, cfg: ToyConfig):
        self.num_tokens = cfg.seq_len
        self.num_targets, self.target_len = cfg.num_targets, cfg.target_len

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskSet:
        n, m, t = self.num_tokens, self.num_targets, self.target_len
        starts_BM = torch.randint(0, n - t + 1, (batch_size, m), generator=generator)
        target_idx_BMT = starts_BM[..., None] + torch.arange(t)
        covered_BN = torch.zeros(batch_size, n, dtype=torch.bool)
        covered_BN.scatter_(1, target_idx_BMT.flatten(1), True)
        k = int((~covered_BN).sum(1).min())
        positions = torch.arange(n).expand(batch_size, n)
        order_key = torch.where(covered_BN, positions + n, positions)  # free positions first, in order
        context_idx_BK = order_key.argsort(dim=1)[:, :k]
        return MaskSet(context_idx_BK, target_idx_BMT)


@dataclass(frozen=True)
class ToyDemoChunk:
    """Chunk job for ``write_shard_set``: ``count`` sinusoids (C, L) from index ``start``; label = frequency band."""

    seed: int
    split: int
    start: int
    count: int
    num_classes: int
    in_chans: int
    seq_len: int

    def __call__(self) -> Iterator[Any]:
        from jepa.data import ShardSample

        rng = np.random.default_rng([self.seed, self.split, self.start])
        labels = np.arange(self.start, self.start + self.count) % self.num_classes
        cycles = (labels[:, None, None] + rng.uniform(0.2, 0.8, (self.count, 1, 1))) * self.seq_len / (4 * self.num_classes)
        phase = rng.uniform(0, 2 * np.pi, (self.count, self.in_chans, 1))
        t = np.arange(self.seq_len) / self.seq_len
        x = np.sin(2 * np.pi * cycles * t + phase) + 0.1 * rng.standard_normal((self.count, self.in_chans, self.seq_len))
        for i, (label, array) in enumerate(zip(labels.tolist(), x.astype(np.float32))):
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            yield ShardSample(f"{self.split}_{self.start + i:06d}", "npy", buffer.getvalue(), label)


class ToyModality(Modality):
    """1-D sequences ``(B, C, L)``; samples are ``.npy`` arrays of shape (C, L)."""

    name = "toy"
    config_model = ToyConfig
    cfg: ToyConfig

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """The defaults (width 32, 2 blocks, 32 tokens) are already the contract suite's CPU size."""
        return {}

    def build_encoder(self) -> ToyEncoder:
        return ToyEncoder(self.cfg)

    def build_predictor(self) -> ToyPredictor:
        return ToyPredictor(self.cfg)

    def build_mask_sampler(self) -> SpanMaskSampler:
        return SpanMaskSampler(self.cfg)

    def decode(self, sample: dict[str, Any]) -> Tensor:
        if "npy" not in sample:
            raise ValueError(f"toy sample has no 'npy' payload (keys: {sorted(sample)})")
        array = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        if array.shape != (self.cfg.in_chans, self.cfg.seq_len):
            raise ValueError(f"toy sample has shape {array.shape}, expected {(self.cfg.in_chans, self.cfg.seq_len)}")
        return torch.from_numpy(array.astype(np.float32))

    def train_batch(self, items: list[Tensor], generator: torch.Generator) -> Tensor:
        shifts = torch.randint(0, self.cfg.seq_len, (len(items),), generator=generator).tolist()
        return torch.stack([item.roll(s, dims=-1) for item, s in zip(items, shifts)])

    def eval_batch(self, items: list[Tensor]) -> Tensor:
        return torch.stack(items)

    def example_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(batch_size, self.cfg.in_chans, self.cfg.seq_len, generator=generator)

    def file_suffixes(self) -> dict[str, str]:
        return {".npy": "npy"}

    def write_demo_data(self, out: Path, spec: DemoDataSpec) -> dict[str, Any]:
        from jepa.data import write_shard_set

        if spec.size not in (None, self.cfg.seq_len):
            raise ValueError(f"toy demo sequences have seq_len={self.cfg.seq_len} steps; got size={spec.size}")
        manifests = {}
        for split, n in enumerate((spec.num_train, spec.num_val)):
            jobs = [ToyDemoChunk(spec.seed, split, start, min(spec.max_count, n - start), spec.num_classes,
                                 self.cfg.in_chans, self.cfg.seq_len) for start in range(0, n, spec.max_count)]
            name = ("train", "val")[split]
            manifests[name] = write_shard_set(jobs, Path(out) / name, prefix=name, max_count=spec.max_count,
                                              max_bytes=1 << 40, workers=spec.workers, total_items=n, show_progress=False,
                                              classes=[f"band{c}" for c in range(spec.num_classes)])
        return manifests

    def export_metadata(self, encoder: Encoder) -> dict[str, Any]:
        return {"input": {"layout": "(B, C, L)", "in_chans": self.cfg.in_chans, "seq_len": self.cfg.seq_len},
                "arch": {"embed_dim": self.cfg.embed_dim, "depth": self.cfg.depth, "num_heads": self.cfg.num_heads}}

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.cfg.num_targets * self.cfg.target_len > self.cfg.seq_len - self.cfg.min_context:
            problems.append(("target_len", f"{self.cfg.num_targets} spans of {self.cfg.target_len} leave fewer than "
                             f"min_context={self.cfg.min_context} of {self.cfg.seq_len} tokens; shorten the spans"))
        for key in ("embed_dim", "predictor_dim"):
            if getattr(self.cfg, key) % self.cfg.num_heads:
                problems.append(("num_heads", f"{self.cfg.num_heads} heads do not divide {key}={getattr(self.cfg, key)}"))
        return problems

    def describe(self) -> str:
        return f"toy transformer D={self.cfg.embed_dim} x{self.cfg.depth} on {self.cfg.seq_len} tokens"

    def train_flops_per_sample(self) -> float:
        # Matmul FLOPs only: 2 per multiply-add, backward = 2x forward for the online networks.
        def block_flops(tokens: int, dim: int) -> float:
            return 2 * tokens * 12 * dim * dim + 4 * tokens * tokens * dim

        n, m, t, d, p = self.cfg.seq_len, self.cfg.num_targets, self.cfg.target_len, self.cfg.embed_dim, self.cfg.predictor_dim
        k = max(self.cfg.min_context, n - m * t)  # context length when spans do not overlap (lower bound)
        target = self.cfg.depth * block_flops(n, d)
        context = self.cfg.depth * block_flops(k, d)
        predictor = m * (self.cfg.predictor_depth * block_flops(k + t, p) + 2 * (k + t) * d * p * 2)
        return float(target + 3 * (context + predictor))
