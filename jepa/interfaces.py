"""The small contracts every JEPA component implements.

Nothing here knows about images: a modality (``jepa.modalities.*``) provides concrete
encoders, predictors, mask samplers and data transforms, and the core (model wiring, loss,
EMA, engine, training loop) only talks to these interfaces.

Shape vocabulary used in names and docstrings:
    B batch, N tokens of a full input, K context tokens kept, M target blocks,
    T tokens per target block, D encoder width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from jepa.config import ModalityConfig
from jepa.errors import UserError


@dataclass(frozen=True)
class MaskSet:
    """Context and target token indices for one batch.

    Attributes:
        context_idx_BK: (B, K) int64, tokens the context encoder sees; every row has the
            same length K (samplers collate to a common length, by truncating or by padding).
        target_idx_BMT: (B, M, T) int64, M target blocks of T tokens each; disjoint from
            the context of the same row.
        context_valid_BK: (B, K) bool, False where a row of ``context_idx_BK`` is padding
            (samplers that pad each row to the batch's longest context instead of cutting it
            to the shortest), or None when no row is padded. A padding entry holds a real
            index of its row (so gathers stay in range) but is no context token: encoders and
            predictors take it as ``keep_valid_BK`` / ``context_valid_BK`` and never attend
            to it, so it changes no output of a real token.
    """

    context_idx_BK: Tensor
    target_idx_BMT: Tensor
    context_valid_BK: Tensor | None = None

    def __post_init__(self) -> None:
        assert self.context_idx_BK.ndim == 2, self.context_idx_BK.shape
        assert self.target_idx_BMT.ndim == 3, self.target_idx_BMT.shape
        assert self.context_idx_BK.shape[0] == self.target_idx_BMT.shape[0]
        if self.context_valid_BK is not None:
            assert self.context_valid_BK.dtype == torch.bool, self.context_valid_BK.dtype
            assert self.context_valid_BK.shape == self.context_idx_BK.shape, self.context_valid_BK.shape

    @property
    def batch_size(self) -> int:
        return self.context_idx_BK.shape[0]

    @property
    def num_targets(self) -> int:
        return self.target_idx_BMT.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskSet":
        valid = self.context_valid_BK
        return MaskSet(
            self.context_idx_BK.to(device, non_blocking=non_blocking),
            self.target_idx_BMT.to(device, non_blocking=non_blocking),
            None if valid is None else valid.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "MaskSet":
        valid = self.context_valid_BK
        return MaskSet(self.context_idx_BK.pin_memory(), self.target_idx_BMT.pin_memory(),
                       None if valid is None else valid.pin_memory())

    def __getitem__(self, rows: slice) -> "MaskSet":
        """Rows ``rows`` of the batch (used to split a global batch across ranks)."""
        valid = self.context_valid_BK
        return MaskSet(self.context_idx_BK[rows], self.target_idx_BMT[rows], None if valid is None else valid[rows])


def as_mask_pairs(masks: "MaskSet | Sequence[MaskSet]") -> tuple[MaskSet, ...]:
    """A sampler's output as a tuple of (context, target) pairs: one :class:`MaskSet` becomes ``(masks,)``.

    Raises:
        TypeError: ``masks`` is neither a MaskSet nor a non-empty sequence of MaskSets of one batch size.
    """
    pairs = (masks,) if isinstance(masks, MaskSet) else tuple(masks)
    if not pairs or not all(isinstance(m, MaskSet) for m in pairs):
        raise TypeError(f"a mask sampler must return a MaskSet or a non-empty tuple of MaskSets, got {type(masks).__name__}")
    if len({m.batch_size for m in pairs}) != 1:
        raise TypeError(f"the mask pairs disagree on the batch size: {[m.batch_size for m in pairs]}")
    return pairs


class Encoder(nn.Module, ABC):
    """Maps an input to a sequence of token representations.

    Attributes:
        embed_dim: D, the width of the output tokens.
    """

    embed_dim: int

    @abstractmethod
    def forward(self, x: Tensor, keep_idx_BK: Tensor | None = None) -> Tensor:
        """Encode ``x``.

        Args:
            x: a batch of inputs, modality-specific shape with batch first.
            keep_idx_BK: (B, K) int64 token indices to keep (the context); ``None`` keeps all.

        Returns:
            (B, K, D) tokens, or (B, N, D) when ``keep_idx_BK`` is None.
        """

    def forward_layers(self, x: Tensor, num_last: int = 1) -> list[Tensor]:
        """Outputs of the last ``num_last`` blocks, each (B, N, D), for frozen-feature evaluation.

        The last entry is the normed final output (equal to ``forward(x)``); earlier entries are
        normed with the same final norm. The default gives the final output alone (every protocol
        of ``jepa eval`` but the multi-layer ``linear4`` / ``logreg4``); encoders with blocks override it.

        Raises:
            NotImplementedError: ``num_last > 1`` on an encoder that does not override it.
        """
        if num_last == 1:
            return [self(x)]
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate layers (forward_layers gives "
                                  f"the final output only, {num_last} asked); use a single-layer protocol")


class Predictor(nn.Module, ABC):
    """Predicts target-token representations from context tokens and target positions."""

    @abstractmethod
    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor, mask_index: int = 0) -> Tensor:
        """Predict one target block per row.

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) token positions of the context.
            target_idx_BT: (B, T) token positions to predict.
            mask_index: which of the sampler's (context, target) pairs these masks come from
                (V-JEPA: one mask token per mask generator); predictors with one pair ignore it.

        Returns:
            (B, T, D) predicted target representations.
        """


class MaskSampler(ABC):
    """Samples context/target token indices for a batch. Runs in data-loader workers, so it
    must be cheap, free of per-token Python loops and deterministic given the generator.

    A sampler returns one (context, target) pair as a :class:`MaskSet` (I-JEPA), or several as a
    tuple of MaskSets (V-JEPA: one per mask generator); the core runs the context encoder and the
    predictor once per pair (``mask_index`` = its position), the target encoder once, and averages
    the pairs' losses. :func:`as_mask_pairs` normalises both forms.

    Optional: a sampler whose ``__call__`` also takes a keyword ``step_generator`` gets, in training,
    a generator seeded by the run seed and the optimiser step alone
    (:func:`jepa.data.loader.step_generator`), the same on every rank, loader worker and
    accumulation micro batch. Draw from it what the whole global batch must share (image and video:
    the block sizes, as the authors share them across GPUs) and everything else from ``generator``;
    called without it (evaluation, tests, other tools), the sampler uses ``generator`` alone."""

    num_tokens: int

    @abstractmethod
    def __call__(self, batch_size: int, generator: torch.Generator) -> "MaskSet | tuple[MaskSet, ...]":
        """Sample masks for ``batch_size`` inputs using only ``generator`` for randomness."""


class TargetUpdater(ABC):
    """Updates the target encoder from the online (context) encoder after each step."""

    @abstractmethod
    def momentum(self, step: int) -> float:
        """Momentum used at optimiser step ``step`` (a pure function of the step)."""

    @abstractmethod
    def update(self, target_params: Sequence[Tensor], online_params: Sequence[Tensor], step: int) -> None:
        """In-place update of ``target_params`` towards ``online_params`` (same order and shapes)."""


class MissingHookError(UserError, NotImplementedError):
    """A modality was asked for an optional capability it does not provide (see :class:`Modality`)."""

    def __init__(self, modality: str, hook: str, what: str):
        super().__init__(f"modality {modality!r} does not support {what}: it does not implement "
                         f"Modality.{hook}; use a modality that does, or add the hook to the plugin")


@dataclass(frozen=True)
class ViewSpec:
    """How many augmented views of each sample an objective asks for (see :meth:`Modality.train_views`).

    Attributes:
        num_global: Vg large views ("global": what the encoder sees at its training size).
        num_local: Vl small views ("local": smaller crops, where the modality has a notion of size).
    """

    num_global: int = 2
    num_local: int = 0

    def __post_init__(self) -> None:
        assert self.num_global >= 1 and self.num_local >= 0, self

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local


@dataclass(frozen=True)
class DemoDataSpec:
    """What ``jepa demo-data`` asks a modality to generate (see :meth:`Modality.write_demo_data`).

    Attributes:
        num_train, num_val: labelled samples in the ``train/`` and ``val/`` shard sets.
        num_classes: number of labels.
        size: the modality's notion of sample size (image side, clip side, sequence length);
            None takes the modality's default.
        seed: everything generated is a function of it.
        max_count: samples per shard.
        workers: parallel writer processes.
    """

    num_train: int = 5000
    num_val: int = 1000
    num_classes: int = 10
    size: int | None = None
    seed: int = 0
    max_count: int = 500
    workers: int = 1


@dataclass(frozen=True)
class ExportDim:
    """The sizes one input dimension may have in a ``torch-export`` program (see
    :meth:`Modality.export_dynamic_shapes`): every multiple of ``multiple_of`` from
    ``multiple_of * min_multiple`` to ``multiple_of * max_multiple``.

    Attributes:
        name: what the dimension is (``"height"``, ``"frames"``): its key in the export metadata's
            ``dynamic`` and in ``torch.export``'s messages.
        multiple_of: the step between sizes (a patch or tubelet size; 1: any size).
        max_multiple: the largest size over ``multiple_of`` (``torch.export`` needs a bound).
        min_multiple: the smallest size over ``multiple_of``.
    """

    name: str
    multiple_of: int = 1
    max_multiple: int = 1 << 16
    min_multiple: int = 1


@dataclass(frozen=True)
class DynamicShapes:
    """What a ``torch-export`` program of a modality's encoder accepts besides any batch size.

    Attributes:
        dims: ``{dimension of the batch-first input (>= 1): its sizes}``; every dimension not named
            keeps its size in the first :meth:`Modality.export_inputs` batch.
        forward: ``(encoder, x) -> (B, N, D)`` tokens equal to ``encoder(x)`` but with no Python branch
            on the sizes in ``dims`` (``torch.export`` fixes such a branch, e.g. "the stored position
            table at the training size", to the traced input's side); None: ``encoder(x)`` itself.
    """

    dims: Mapping[int, ExportDim]
    forward: Callable[[Encoder, Tensor], Tensor] | None = None


@dataclass
class ForeignEncoder:
    """An encoder built from a checkpoint that ``jepa train`` did not write (e.g. the authors' release).

    Attributes:
        modality: the bound modality whose ``eval_batch`` feeds the encoder.
        encoder: the encoder with the file's weights loaded.
        description: one line naming the model.
        step: training progress stored in the file (epoch or step), if any.
    """

    modality: "Modality"
    encoder: Encoder
    description: str
    step: int | None = None


class Modality(ABC):
    """The plugin contract: everything the core needs from one kind of data.

    A modality class is registered under the ``jepa.modalities`` entry-point group and bound to
    its validated recipe section: ``Modality(cfg)`` (``cfg`` an instance of ``config_model``,
    whose ``name`` is the registered name; ``Modality()`` binds the defaults). Every method works
    from ``self.cfg``; builders hand out only the slice a component needs.

    Required: the builders, ``decode``, ``train_batch``, ``eval_batch``, ``example_input``.
    Optional (defaults below): ``tiny_config`` (the contract suite's small settings), ``check``,
    ``describe``, ``train_flops_per_sample``, ``train_views``
    (several augmented views per sample, for view-based objectives such as LeJEPA); the data
    hooks ``file_suffixes`` (``jepa shards FOLDER``) and ``write_demo_data`` (``jepa demo-data``);
    the export hooks ``export_inputs``, ``export_metadata``, ``export_dynamic_shapes`` and
    ``export_formats``; and
    ``load_foreign`` (checkpoints in another project's layout). The data hooks have no default:
    without them the command that needs one raises :class:`MissingHookError` naming the modality
    and the hook; the others default to the defaults as tiny config, no checks, the plugin's
    name, FLOPs unknown, one ``example_input`` batch, no extra metadata or formats, a dynamic batch
    only (``torch-export``) and no foreign layout.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[ModalityConfig]]
    #: What ``jepa demo-data`` generates when an option is not given (modalities override it).
    demo_defaults: ClassVar[DemoDataSpec] = DemoDataSpec()

    def __init__(self, cfg: ModalityConfig | None = None) -> None:
        if cfg is None:
            cfg = self.config_model()
        if not isinstance(cfg, self.config_model):
            raise TypeError(f"modality {self.name!r} is bound to a {self.config_model.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    # ------------------------------------------------------------------ required

    @abstractmethod
    def build_encoder(self) -> Encoder:
        """The context encoder; the target encoder is a deep copy of it."""

    @abstractmethod
    def build_predictor(self) -> Predictor:
        """The predictor for encoders built by ``build_encoder()``."""

    @abstractmethod
    def build_mask_sampler(self) -> MaskSampler:
        """The mask sampler for the token layout of the encoder."""

    @abstractmethod
    def decode(self, sample: dict[str, Any]) -> Any:
        """Decode one raw sample into an item (what :meth:`train_batch` and :meth:`eval_batch` stack).

        Every reader calls it on the same kind of dict (the training loader, ``jepa eval`` on
        shards or on a folder, ``jepa shards``'s check of each file):

        * one entry per stored file of the sample, keyed by its extension, lower case, without the
          dot (``"npy"``, ``"jpg"``; a member ``key.seg.png`` gives ``"seg.png"``), value ``bytes``:
          the file's bytes as written (:func:`jepa.data.write_shard_set` never re-encodes);
        * ``"cls"`` when the set is labelled: the label as ASCII digits (``b"3"``);
        * ``"__key__"`` (str): the sample's key, the member name up to its first dot;
        * ``"__url__"`` (str): the shard URL (or the file's path, for a folder), for messages.

        A payload key may be missing (a file of another type, an empty or foreign sample): that is
        a ``ValueError`` too. ``jepa.data.reading.sample_payload(sample, keys, what)`` returns the
        first of ``keys`` present with non-empty bytes and raises the ``ValueError`` otherwise.

        Labels never pass through here: the evaluation reader takes ``cls`` from the raw sample
        itself (checked against the manifest's classes), and training ignores it; so ``decode``
        returns the item alone and must not need ``cls`` (unlabelled shards have none).

        It runs in loader worker processes on untrusted bytes: never unpickle (``numpy.load(...,
        allow_pickle=False)``), and bound what a header can make you allocate.

        Raises:
            ValueError: the sample is corrupt or has no payload this modality can read; the
                loader counts and skips it (``data.max_skip_rate``), evaluation skips it.
        """

    @abstractmethod
    def train_batch(self, items: list[Any], generator: torch.Generator) -> Tensor:
        """Randomly augment decoded items (training view) and stack them into a batch."""

    def finish_batch(self, inputs: Tensor) -> Tensor:
        """A :meth:`train_batch` result, moved to the training device -> the encoder's input.

        Every consumer of :meth:`train_batch` calls it (the training loop after the copy to the
        device), so a modality can hand compact data between processes (e.g. uint8 pixels) and
        finish it where the model runs. The default returns ``inputs`` unchanged.
        """
        return inputs

    def train_views(self, items: list[Any], generator: torch.Generator, spec: ViewSpec) -> list[Tensor]:
        """Several independently augmented views of every item, for view-based objectives (LeJEPA).

        Returns ``spec.num_views`` batches, each one view of every item in order (row b of every
        batch comes from ``items[b]``): first the ``spec.num_global`` global views (one shape), then
        the ``spec.num_local`` local views (one shape, which may be smaller than the global one).
        Every batch goes through :meth:`finish_batch` like a :meth:`train_batch` result.

        The default draws every view with :meth:`train_batch` (each call a fresh random
        augmentation), so local views have the global shape; modalities with a notion of size
        (image, video) override it with smaller local crops and stronger augmentation.
        """
        return [self.train_batch(items, generator) for _ in range(spec.num_views)]

    def view_shapes(self, spec: ViewSpec) -> list[tuple[int, ...]]:
        """The encoder's input shape of one sample of each view :meth:`train_views` returns (after
        :meth:`finish_batch`, no batch dimension), for memory plans (``jepa plan``). The default: every view of :meth:`example_input`'s shape,
        which is what the default :meth:`train_views` gives."""
        return [tuple(self.example_input(1).shape[1:])] * spec.num_views

    @abstractmethod
    def eval_batch(self, items: list[Any]) -> Tensor:
        """Deterministic evaluation view of decoded items, stacked into a batch."""

    def eval_augment(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """A random, label-preserving augmentation of an :meth:`eval_batch` result, for the training
        passes of ``jepa eval``'s probes (``--augment flip``; images: mirror the width of a random half
        of the samples). Draw only from ``generator``. The default returns ``batch`` unchanged, and
        ``jepa eval`` refuses ``--augment flip`` for a modality that keeps it."""
        return batch

    @abstractmethod
    def example_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """A random input batch of the training shape (tests, export checks, benchmarks)."""

    # ------------------------------------------------------------------ optional: description

    def check(self) -> list[tuple[str, str]]:
        """Semantic checks beyond types: returns ``(field_path, problem_and_fix)`` pairs (paths
        relative to the modality section), empty when usable. Runs before anything heavy is built."""
        return []

    def describe(self) -> str:
        """One line naming the model, e.g. ``ViT-H/14 @224``."""
        return self.name

    def train_flops_per_sample(self) -> float | None:
        """Approximate training FLOPs per sample (forward + backward), or None if unknown."""
        return None

    def masks_depend_on_batch(self) -> bool:
        """Whether a sample's masks depend on the micro batch they are collated in (e.g. every context
        cut to the batch's shortest), so a run whose micro batch differs from ``data.micro_batch_size``
        trains on other masks and is warned (:func:`jepa.recipe.micro_batch_warning`). Default: False."""
        return False

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """A ``modality:`` recipe section (without ``name``) small enough for CPU tests.

        The contract suite (:func:`jepa.testing.modality_contract_tests`) binds the modality to
        ``config_model.model_validate({"name": name, **tiny_config()})`` and trains, exports and
        evaluates it for a couple of steps on CPU; keep it to a couple of narrow blocks and a few
        dozen tokens (the image modality: a 2-block ViT of width 64 on 32-pixel crops, 16 tokens). Nested
        sections are given as dicts, with only the fields that differ from the defaults. The
        default, ``{}``, says the defaults are already that small.
        """
        return {}

    # ------------------------------------------------------------------ optional: pictures

    def display_frames(self, inputs: Tensor) -> Tensor:
        """What ``jepa viz`` shows of one input: (F, H, W, 3) float32 RGB in [0, 1].

        Args:
            inputs: one row of an encoder batch as the encoder gets it (after :meth:`finish_batch`;
                images (C, H, W) and clips (C, T, H, W), normalised): F is 1 for an image, T for a clip.
        """
        raise MissingHookError(self.name, "display_frames", "`jepa viz` pictures of its inputs")

    def token_boxes(self, input_shape: Sequence[int]) -> Tensor:
        """Where each token of an input lies in its :meth:`display_frames` picture, for drawing masks and
        per-token features.

        Args:
            input_shape: the shape of one input row (no batch dimension), e.g. (C, H, W).

        Returns:
            (N, 6) int64, one row per token in token-index order (the indices of a :class:`MaskSet` and of
            ``Encoder.forward``'s output): ``(frame_start, frame_stop, top, bottom, left, right)``, half-open
            ranges of frames and pixels (image: the patch grid, frames 0..1; video: the tubelet grid).
        """
        raise MissingHookError(self.name, "token_boxes", "`jepa viz` pictures of masks and token features")

    # ------------------------------------------------------------------ optional: data

    def file_suffixes(self) -> dict[str, str]:
        """File suffixes (lower case, with the dot) of this modality's samples in a source folder,
        each mapped to the key its bytes are stored under in a shard (``{".jpg": "jpg"}``).
        ``jepa shards FOLDER`` writes those files as-is and checks each with :meth:`decode`."""
        raise MissingHookError(self.name, "file_suffixes", "`jepa shards` from a folder")

    def write_demo_data(self, out: Path, spec: DemoDataSpec) -> dict[str, Any]:
        """Generate labelled ``out/train`` and ``out/val`` shard sets (no download); returns
        ``{"train": Manifest, "val": Manifest}``.

        :func:`jepa.data.write_labelled_splits` writes both from iterables of ``(sample, label)``
        pairs, ``sample`` a dict of extension -> bytes that :meth:`decode` reads back."""
        raise MissingHookError(self.name, "write_demo_data", "`jepa demo-data`")

    # ------------------------------------------------------------------ optional: export

    def export_inputs(self, encoder: Encoder, generator: torch.Generator) -> list[Tensor]:
        """Inputs an export is verified on (eager vs exported): by default one training-shape
        batch; modalities with variable input sizes add other shapes the export must accept."""
        return [self.example_input(2, generator)]

    def export_metadata(self, encoder: Encoder) -> dict[str, Any]:
        """Modality-specific entries of an export's JSON metadata: how to feed the encoder
        (normalisation, patch or tubelet sizes, resolution, ...) and its architecture."""
        return {}

    def export_dynamic_shapes(self, encoder: Encoder) -> DynamicShapes:
        """Input sizes a ``jepa export --format torch-export`` program accepts besides the training shape.

        The batch is always dynamic; the default keeps every other dimension at its size in the
        first :meth:`export_inputs` batch. A modality with variable input sizes names those
        dimensions (image: height and width, multiples of the patch) and, when its encoder branches
        on them, a ``forward`` without the branch. The export is verified on every
        :meth:`export_inputs` batch the declared sizes admit, at a second batch size too.
        """
        return DynamicShapes({})

    def export_formats(self) -> dict[str, Callable[..., Any]]:
        """Extra ``jepa export --format`` writers beyond the core's (``torchscript``, ``torch-export``;
        name -> function with the signature of :func:`jepa.export.export_torchscript`)."""
        return {}

    # ------------------------------------------------------------------ optional: foreign weights

    @classmethod
    def load_foreign(cls, checkpoint: Mapping[str, Any], path: Path, which: str,
                     options: Mapping[str, Any]) -> ForeignEncoder | None:
        """Build an encoder from a checkpoint in another project's layout (already read with
        ``weights_only=True``), or return None when the layout is not this modality's.

        Args:
            checkpoint: the file's top-level mapping.
            path: where it was read from (for messages).
            which: ``"target"`` or ``"context"`` encoder.
            options: user options for such files (e.g. ``crop_size``, ``arch``); a modality
                raises ``ValueError`` on options it does not understand.
        """
        return None

    def foreign_state_dicts(self, checkpoint: Mapping[str, Any], path: Path) -> dict[str, dict[str, Tensor]] | None:
        """``encoder`` / ``predictor`` / ``target_encoder`` state dicts (in this modality's naming) of a
        checkpoint in another project's layout, for a recipe's ``init_from``; None when the
        layout is not one this modality reads."""
        return None
