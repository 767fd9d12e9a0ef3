"""What ``jepa eval`` runs: :class:`EvalSettings`, checked at the boundary, with the command line's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jepa.errors import ConfigError
from jepa.eval.grid import Grid
from jepa.eval.protocols import PROTOCOLS, Protocol
from jepa.eval.reader import AUGMENTS

LINEAR_LRS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
LINEAR_WDS: tuple[float, ...] = (0.0, 1e-4, 1e-3)
ATTENTIVE_LRS: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
ATTENTIVE_WDS: tuple[float, ...] = (1e-2, 1e-1, 4e-1)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class EvalSettings:
    """What ``jepa eval`` runs, with the defaults of the command line (``jepa eval --help``).

    Attributes:
        protocols: names of registered protocols (:data:`jepa.eval.protocols.PROTOCOLS`), run in the given order.
        k, temperature: the k-NN probe.
        low_shot: fraction of each class's training labels to use, or None for all.
        epochs: epochs of the grid probes (None: each protocol's ``default_epochs``).
        lbfgs_iters: L-BFGS iterations of ``logreg`` / ``logreg4``.
        batch_size: samples per encoder forward and per optimiser step.
        linear_lrs, linear_wds: the grid of ``linear`` / ``linear4`` (every pair is one head).
        attentive_lrs, attentive_wds: the grid of ``attentive``.
        attentive_depth: blocks of the attentive probe (``depth - 1`` self-attention, then cross-attention).
        attentive_heads: attention heads of the attentive probe (None: width / 64, at least 1).
        warmup_epochs: linear learning-rate warmup of the grid probes.
        holdout: fraction of the (low-shot) training split held out to choose the best head.
        augment: training view of the streamed probes (see :data:`~jepa.eval.reader.AUGMENTS`);
            with ``none``, ``linear`` / ``linear4`` train on stored features.
        feature_cache: where pooled features are stored: ``auto``, ``memory`` or a folder.
        shuffle_buffer: raw samples per loader worker buffered for shuffling shards.
        seed: seeds subsets, splits, initialisation, shuffling and augmentation (each protocol
            mixes in its own fixed ``seed_salt``).
        num_workers: data-loader processes.
        device: where the encoder and the probes run (None: ``cuda`` if available, else ``cpu``).
        precision: ``bf16`` autocast (CUDA only), ``fp32``, or ``auto`` (bf16 on CUDA, fp32 on CPU).
    """

    protocols: tuple[str, ...] = ("linear", "knn")
    k: int = 20
    temperature: float = 0.07
    low_shot: float | None = None
    epochs: int | None = None
    lbfgs_iters: int = 100
    batch_size: int = 64
    linear_lrs: tuple[float, ...] = LINEAR_LRS
    linear_wds: tuple[float, ...] = LINEAR_WDS
    attentive_lrs: tuple[float, ...] = ATTENTIVE_LRS
    attentive_wds: tuple[float, ...] = ATTENTIVE_WDS
    attentive_depth: int = 1
    attentive_heads: int | None = None
    warmup_epochs: float = 0.0
    holdout: float = 0.1
    augment: str = "none"
    feature_cache: str = "auto"
    shuffle_buffer: int = 1000
    seed: int = 0
    num_workers: int = 0
    device: str | None = None
    precision: str = "auto"
    linear_grid: Grid = field(init=False)
    attentive_grid: Grid = field(init=False)

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ConfigError(f"--protocol: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                             f"choose from {', '.join(PROTOCOLS)} (comma-separated)")
        checks = [
            (self.k >= 1, f"--k must be >= 1, got {self.k}"),
            (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            (self.low_shot is None or 0 < self.low_shot <= 1,
             f"--low-shot must be a fraction in (0, 1], got {self.low_shot}; e.g. 0.01 for 1 % of labels"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.lbfgs_iters >= 1, f"--lbfgs-iters must be >= 1, got {self.lbfgs_iters}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.attentive_depth >= 1, f"--attentive-depth must be >= 1, got {self.attentive_depth}"),
            (self.attentive_heads is None or self.attentive_heads >= 1,
             f"--attentive-heads must be >= 1, got {self.attentive_heads}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.holdout < 1, f"--holdout must be a fraction in [0, 1), got {self.holdout}"),
            (self.augment in AUGMENTS, f"--augment {self.augment!r}: choose from {', '.join(AUGMENTS)}"),
            (self.shuffle_buffer >= 1, f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
            (self.precision in ("auto", "bf16", "fp32"), f"--precision {self.precision!r}: choose auto, bf16 or fp32"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.linear_grid = Grid(tuple(self.linear_lrs), tuple(self.linear_wds))
        self.attentive_grid = Grid(tuple(self.attentive_lrs), tuple(self.attentive_wds))
        for protocol in self.selected():
            grid = protocol.grid(self)
            if grid is not None and len(grid) > 1 and self.holdout == 0:
                flag = protocol.grid_flag
                raise ConfigError(f"--holdout 0 leaves no held-out split to choose among the {len(grid)} heads of "
                                 f"{protocol.name}; keep --holdout > 0 (default 0.1) or give one value to {flag}-lrs "
                                 f"and {flag}-wds")
        if self.device is None:
            self.device = default_device()
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {self.device!r} is not a device name; use cpu, cuda or cuda:N") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device!r}, but torch sees no CUDA device here; use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: evaluation runs on cpu or cuda")

    def selected(self) -> list[Protocol]:
        """The registered protocol of each name in :attr:`protocols`, in order."""
        return [PROTOCOLS[name] for name in self.protocols]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)  # type: ignore[arg-type]

    @property
    def autocast(self) -> str:
        """The precision actually used: ``bf16`` only on CUDA."""
        if self.precision == "auto":
            return "bf16" if self.torch_device.type == "cuda" else "fp32"
        return self.precision if self.torch_device.type == "cuda" else "fp32"

    def epochs_for(self, protocol: str) -> int:
        """``--epochs``, else the protocol's declared ``default_epochs``."""
        default = PROTOCOLS[protocol].default_epochs
        assert default is not None, f"{protocol} trains no epochs"
        return self.epochs if self.epochs is not None else default


def parse_protocols(text: str) -> tuple[str, ...]:
    """``"linear,knn"`` -> ``("linear", "knn")`` (validated by :class:`EvalSettings`)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())
