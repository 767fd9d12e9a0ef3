"""Export a frozen encoder for use outside ``jepa``: TorchScript and ``torch.export`` programs for
every modality, plus the formats a modality adds (:meth:`~jepa.interfaces.Modality.export_formats`;
image: ``timm``, ``hf``, ``official``, ``safetensors-timm``).

Folder formats (``timm``, ``hf``) and files alike are written into a hidden scratch location
next to ``out``, loaded back from there the way a user would load them, compared with the eager
encoder, and only then moved into place (:func:`atomic_write`). TorchScript and programs are
serialised in memory and written from Python, so a full disk is an ``OSError`` naming ``out``
(torch's C++ writer aborts the whole process when a write fails); the file is held in memory
once, which encoders afford.

``torchscript``
    ``torch.jit.load(path)`` gives a module mapping the modality's normalised inputs (batch
    first; the metadata's ``input`` says which shapes) to final-normed tokens (B, N, D), or
    with ``pooled`` to their mean (B, D). Non-pooled exports of encoders that implement
    ``forward_layers`` also carry ``forward_layers(x, num_last) -> List[Tensor]`` for
    multi-layer probes. Loading needs only torch: ``jepa`` does not have to be importable. The
    metadata is the ``_extra_files`` entry ``jepa_export.json``: generic keys (format, model,
    modality, embedding width, number of layers, source, recipe, versions, verification) plus
    the modality's :meth:`~jepa.interfaces.Modality.export_metadata`. Deprecated by PyTorch.
``torch-export``
    ``torch.export.load(path).module()(x)`` does the same from a ``torch.export`` program
    (``.pt2``; no code runs on loading). The batch is dynamic, and so is every input dimension
    the modality declares in :meth:`~jepa.interfaces.Modality.export_dynamic_shapes` (image:
    height and width, multiples of the patch); the others keep the size of the first
    :meth:`~jepa.interfaces.Modality.export_inputs` batch. The metadata (the ``extra_files``
    entry ``jepa_export.json``) adds ``dynamic`` (the sizes each dynamic dimension takes) and
    ``input_shape`` (the batch-first input shape, dynamic dimensions by name).

Nothing is written unless the exported model reproduces the eager encoder on every input of
:meth:`~jepa.interfaces.Modality.export_inputs` (e.g. images at the training size and at a
second, non-square size; a program: those its sizes admit, and the first at another batch size).
The largest absolute difference is reported and must stay below ``EXPORT_TOLERANCE`` (fp32). An
encoder that cannot be scripted or traced is reported in one line naming its class, its module
and the usual cause. Export depends only downward, on :mod:`jepa.sources`.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, List, Mapping

import torch
from torch import Tensor, nn
from torch.export import Dim

import jepa
from jepa.errors import CheckpointError, ConfigError, PluginError
from jepa.interfaces import DynamicShapes, Encoder, ExportDim
from jepa.outputs import check_output_file, remove_tree, write_errors
from jepa.sources import EXPORT_METADATA_NAME, EncoderSource, quiet_jit_deprecation

EXPORT_FORMAT_VERSION = 1
EXPORT_TOLERANCE = 1e-4
"""Largest absolute difference (fp32) allowed between the exported and the eager encoder."""

PROGRAM_MAX_BATCH = 1 << 16
"""Largest batch a ``torch-export`` program accepts (``torch.export`` needs a bound)."""

CORE_FORMATS: tuple[str, ...] = ("torchscript", "torch-export")


class ExportVerificationError(CheckpointError):
    """The exported model does not reproduce the eager encoder; nothing was written."""


class EncoderExport(nn.Module):
    """What a TorchScript export contains: the encoder, optionally followed by mean pooling.

    Args:
        encoder: an encoder with ``forward(x)`` -> (B, N, D).
        pooled: return the mean over tokens (B, D) instead of the tokens.
    """

    __constants__ = ["pooled"]

    def __init__(self, encoder: nn.Module, pooled: bool):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) normalised inputs -> (B, N, D) tokens, or (B, D) when pooled."""
        tokens = self.encoder(x)
        if self.pooled:
            return tokens.mean(dim=1)
        return tokens


class LayeredEncoderExport(EncoderExport):
    """:class:`EncoderExport` of an encoder with ``forward_layers`` (multi-layer probes)."""

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int) -> List[Tensor]:
        """The last ``num_last`` layers' tokens (B, N, D), each normed with the final norm."""
        return self.encoder.forward_layers(x, num_last)


class ProgramExport(nn.Module):
    """What a ``torch-export`` program captures: the encoder's tokens, optionally mean-pooled.

    Args:
        encoder: an encoder with ``forward(x)`` -> (B, N, D).
        pooled: return the mean over tokens (B, D) instead of the tokens.
        tokens: the modality's ``(encoder, x) -> (B, N, D)`` without branches on dynamic sizes
            (:attr:`~jepa.interfaces.DynamicShapes.forward`), or None for ``encoder(x)``.
    """

    def __init__(self, encoder: nn.Module, pooled: bool, tokens: Callable[[Any, Tensor], Tensor] | None = None):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled
        self.tokens = tokens

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) normalised inputs -> (B, N, D) tokens, or (B, D) when pooled."""
        tokens = self.encoder(x) if self.tokens is None else self.tokens(self.encoder, x)
        return tokens.mean(dim=1) if self.pooled else tokens


def has_layers(encoder: nn.Module) -> bool:
    """Whether the encoder overrides :meth:`Encoder.forward_layers` (eager or exported)."""
    if isinstance(encoder, torch.jit.ScriptModule):
        return hasattr(encoder, "forward_layers")
    return type(encoder).forward_layers is not Encoder.forward_layers


@dataclass
class ExportResult:
    """What was written and how closely it matches the eager encoder.

    Attributes:
        path: the file or folder written.
        format: ``torchscript`` or a modality's format name.
        metadata: the JSON metadata stored with it.
        max_abs_diff: ``{"input shape": max |exported - eager|}`` per checked input.
        tolerance: the bound the differences were checked against.
    """

    path: Path
    format: str
    metadata: dict[str, Any]
    max_abs_diff: dict[str, float]
    tolerance: float


def _source_encoder(source: EncoderSource) -> nn.Module:
    if source.kind == "torchscript":
        raise CheckpointError(f"{source.source}: already an exported file; export from the run or checkpoint it came from")
    return source.encoder


def build_metadata(source: EncoderSource, fmt: str, pooled: bool) -> dict[str, Any]:
    """The versioned JSON metadata stored in every export (public API: keys only get added)."""
    encoder = _source_encoder(source)
    modality = source.modality
    return {
        "format": fmt,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": source.description,
        "modality_name": modality.name,
        "modality": modality.cfg.model_dump(mode="json"),
        "embed_dim": int(encoder.embed_dim),
        "num_layers": int(getattr(encoder, "depth", 1)),
        "output": "(B, D) mean of the final-normed tokens" if pooled else "(B, N, D) final-normed tokens",
        "pooled": pooled,
        "encoder": source.which,
        "source": source.source,
        "source_kind": source.kind,
        "source_step": source.step,
        "recipe": None if source.recipe is None else source.recipe.model_dump(mode="json"),
        "jepa_version": jepa.__version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **modality.export_metadata(encoder),
    }


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (its own function so tests can substitute a faulty exporter)."""
    with quiet_jit_deprecation():
        return torch.jit.script(module)


def _string_annotation(module: nn.Module) -> tuple[type, str] | None:
    """The class and attribute of the first string annotation TorchScript would read in ``module``'s tree.

    TorchScript types a module's attributes from the annotations of its class, or of the first
    base class that has any (``torch.jit._recursive.get_annotations``); under ``from __future__
    import annotations`` they are strings it cannot resolve ("Unknown type annotation: 'int'").
    """
    for m in module.modules():
        found = [cls for cls in type(m).__mro__ if cls is not nn.Module and vars(cls).get("__annotations__")]
        if not found:
            continue
        cls = found[0]
        for name, annotation in vars(cls)["__annotations__"].items():
            if isinstance(annotation, str) and name in vars(m):
                return cls, name
    return None


def _torch_message(exc: BaseException) -> str:
    """The first line of a torch error, without a dangling ``at`` and with the source line torch names."""
    text = str(exc).strip()
    first = (text.splitlines() or [type(exc).__name__])[0].strip()
    first = re.sub(r"\s*(\bat|:)\s*$", "", first) or type(exc).__name__
    where = re.search(r'File "([^"]+)", line (\d+)', text)
    return first + (f" (at {where.group(1)}:{where.group(2)})" if where else "")


def compile_error(source: EncoderSource, encoder: nn.Module, tool: str, exc: BaseException) -> str:
    """One line for an encoder that ``torch.jit.script`` (``tool="script"``) or ``torch.export``
    (``tool="export"``) cannot compile: its class, its module, torch's message and the usual cause."""
    cls = type(encoder)
    head = (f"{source.description}: cannot {tool} {cls.__qualname__} (module {cls.__module__}, the "
            f"{source.modality.name} encoder) with torch.{'jit.script' if tool == 'script' else 'export'}: "
            f"{_torch_message(exc)}; ")
    if tool == "script":
        culprit = _string_annotation(encoder)
        if culprit is not None:
            owner, name = culprit
            return head + (f"the cause: `from __future__ import annotations` in {owner.__module__}, which turns the "
                           f"annotation `{name}` of {owner.__qualname__} into a string (TorchScript needs real "
                           f"annotations); remove that import from {owner.__module__}")
        return head + (f"the usual cause: `from __future__ import annotations` in {cls.__module__} (TorchScript needs "
                       "real annotations), or Python in forward that TorchScript does not compile (the constraints: "
                       "jepa/nn/transformer.py); --format torch-export traces the encoder instead")
    return head + ("the usual cause: a Python branch on tensor values, or on an input size the modality declares "
                   "dynamic (Modality.export_dynamic_shapes can give a forward without it), or an operation "
                   "torch.export does not support; --format torchscript scripts the encoder instead")


def _shape_key(x: Tensor) -> str:
    """An input's shape without the batch, e.g. ``3x32x32``... reported as ``32x32`` for (B, C, H, W)."""
    return "x".join(str(d) for d in (x.shape[2:] if x.ndim >= 4 else x.shape[1:]))


@torch.inference_mode()
def max_abs_differences(eager: Callable[[Tensor], Tensor], exported: Callable[[Tensor], Tensor],
                        inputs: list[Tensor]) -> dict[str, float]:
    """Largest |exported(x) - eager(x)| for each input ``x`` (keyed by its shape without batch/channels).

    Raises:
        ExportVerificationError: the outputs differ in shape.
    """
    out = {}
    for x in inputs:
        ref, got = eager(x), exported(x)
        key = _shape_key(x)
        if ref.shape != got.shape:
            raise ExportVerificationError(f"exported output {tuple(got.shape)} differs in shape from eager "
                                          f"{tuple(ref.shape)} for input {key}")
        out[key] = (got.float() - ref.float()).abs().max().item()
    return out


def check_differences(diffs: dict[str, float], tolerance: float, what: str) -> None:
    """Raise :class:`ExportVerificationError` when any difference exceeds ``tolerance`` (NaN fails too)."""
    failing = [v for v in diffs.values() if not v <= tolerance]
    if failing:
        worst = max(failing, key=lambda v: math.inf if math.isnan(v) else v)
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items())
        raise ExportVerificationError(
            f"{what} does not reproduce the eager encoder: max abs difference {worst:.3g} > tolerance "
            f"{tolerance:g} ({detail}); nothing was written. This is a bug in the exporter or the model, "
            "please report it with the model name and torch version")


def report_differences(diffs: dict[str, float], tolerance: float, compared: str, what: str,
                       log: Callable[[str], None]) -> None:
    """Log ``"{compared} vs eager max abs difference: ..."``, then :func:`check_differences` against ``what``."""
    log(f"{compared} vs eager max abs difference: " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items())
        + f" (tolerance {tolerance:g})")
    check_differences(diffs, tolerance, what)


def context_target_split(num_patches: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random half of the token positions as context, the other half as targets: (K,), (T,), each sorted,
    for checking an exported predictor against the eager one."""
    perm = torch.randperm(num_patches, generator=generator)
    return perm[: num_patches // 2].sort().values, perm[num_patches // 2:].sort().values


def atomic_write(out: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, so ``out`` appears complete or not at all.

    The temporary file has ``out``'s name inside a hidden scratch folder, and is created by
    ``write`` itself, so it gets the usual permissions. ``out`` is checked again
    (:func:`check_out_path`) right before it is replaced. A failed write (a full disk) is an
    ``OSError`` naming ``out``: torch's ``RuntimeError`` through :func:`~jepa.outputs.write_errors`,
    Python's own with the scratch file's name replaced.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.{os.getpid()}.tmp"
    scratch.mkdir()
    try:
        tmp = scratch / out.name
        try:
            with write_errors(out, "the export", "--out"):
                write(str(tmp))
        except OSError as exc:
            if exc.filename is None or not str(exc.filename).startswith(str(scratch)):
                raise
            raise OSError(exc.errno, f"{exc.strerror} (writing the export)", str(out)) from exc
        check_out_path(out)  # nothing but a regular file (or nothing) is ever replaced
        os.replace(tmp, out)
    finally:
        remove_tree(scratch)


def write_in_memory(path: str, save: Callable[[BinaryIO], None]) -> None:
    """Serialise with ``save`` into memory, then write the bytes to ``path`` from Python.

    torch's C++ zip writer aborts the whole process (``terminate called after throwing
    c10::Error``) when writing a file fails, e.g. on a full disk, before Python can catch
    anything; writing its bytes from Python raises an ``OSError`` instead. Holds the file in memory.
    """
    buffer = io.BytesIO()
    save(buffer)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc  # a failed write() does not name its file


def export_torchscript(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Script the encoder, verify it against eager on the modality's export inputs, then write it.

    Raises:
        ExportVerificationError: the scripted model differs by more than ``tolerance``
            (nothing is written).
        ValueError: the source cannot be exported (already exported, not scriptable).
    """
    out = Path(out)
    encoder = _source_encoder(source)
    layered = has_layers(encoder) and not pooled
    eager = (LayeredEncoderExport if layered else EncoderExport)(encoder, pooled).eval()
    try:
        scripted = _script(eager)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, FrontendError, ValueError, ...
        raise CheckpointError(compile_error(source, encoder, "script", exc)) from exc
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))
    diffs = max_abs_differences(eager, scripted, inputs)
    if layered:  # the multi-layer entry point feeds linear4; check it on the first input
        depth = min(4, int(getattr(encoder, "depth", 1)))
        layers = max_abs_differences(lambda x: torch.stack(eager.forward_layers(x, depth)),
                                     lambda x: torch.stack(scripted.forward_layers(x, depth)), inputs[:1])
        diffs.update({f"{k} forward_layers({depth})": v for k, v in layers.items()})
    report_differences(diffs, tolerance, "scripted", "the TorchScript export", log)
    log(_deprecation_note(source, pooled, inputs[0]))
    meta = build_metadata(source, "torchscript", pooled)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
    extra = {EXPORT_METADATA_NAME: json.dumps(meta, indent=1)}

    def save(buffer: BinaryIO) -> None:
        with quiet_jit_deprecation():
            torch.jit.save(scripted, buffer, _extra_files=extra)

    atomic_write(out, lambda tmp: write_in_memory(tmp, save))
    return ExportResult(out, "torchscript", meta, diffs, tolerance)


def _deprecation_note(source: EncoderSource, pooled: bool, example: Tensor) -> str:
    """The note that TorchScript is deprecated, pointing to ``--format torch-export`` only where it works.

    Whether it works is tried: the encoder is captured with ``torch.export`` (a trace, nothing
    is written), unless the modality brings its own ``torch-export`` writer.
    """
    note = "note: TorchScript is deprecated in PyTorch (torch.jit.load warns when the file is loaded); "
    if export_formats(source).get("torch-export") is export_torch_program:
        try:
            capture_program(source, pooled, example)
        except ValueError as exc:
            detail = exc.__cause__ if exc.__cause__ is not None else exc
            return note + (f"its successor, --format torch-export, cannot capture this encoder "
                           f"({_torch_message(detail)}), so TorchScript is the format for it")
    return note + "--format torch-export writes its successor"


def _program_dims(shapes: DynamicShapes, example: Tensor, modality: str) -> dict[int, Any]:
    """``torch.export`` dynamic shapes of the input: the batch, and the modality's declared dimensions.

    Raises:
        ValueError: the declaration does not fit the first export input (a bug of the modality).
    """
    dims: dict[int, Any] = {0: Dim("batch", min=1, max=PROGRAM_MAX_BATCH)}
    names = {"batch"}
    for d, spec in sorted(shapes.dims.items()):
        where = f"modality {modality!r}: export_dynamic_shapes declares input dimension {d} ({spec.name!r})"
        if not 1 <= d < example.ndim:
            raise PluginError(f"{where}, but its inputs have dimensions 1..{example.ndim - 1} after the batch")
        m, lo, hi = spec.multiple_of, spec.min_multiple, spec.max_multiple
        if spec.name in names or not 1 <= lo <= hi or m < 1:
            raise PluginError(f"{where} with a repeated name or an empty range ({m} x {lo}..{hi})")
        size = int(example.shape[d])
        if size % m or not lo <= size // m <= hi:
            raise PluginError(f"{where} as {_sizes(spec)}, but its first export input has {size} there")
        names.add(spec.name)
        dims[d] = Dim(spec.name, min=lo, max=hi) if m == 1 else m * Dim(f"{spec.name}_div{m}", min=lo, max=hi)
    return dims


def _sizes(spec: ExportDim) -> str:
    """What the metadata says of a dynamic dimension, e.g. ``multiples of 16 up to 8192``."""
    m, lo, hi = spec.multiple_of, spec.min_multiple, spec.max_multiple
    if m == 1:
        return f"any from {lo} to {hi}"
    return f"multiples of {m} " + (f"up to {m * hi}" if lo == 1 else f"from {m * lo} to {m * hi}")


def _not_admitted(x: Tensor, example: Tensor, dims: Mapping[int, ExportDim]) -> str | None:
    """Why a program traced on ``example`` with dynamic ``dims`` does not take ``x`` (None: it does)."""
    if x.ndim != example.ndim:
        return f"{x.ndim} dimensions, not {example.ndim}"
    for d in range(1, x.ndim):
        size, spec = int(x.shape[d]), dims.get(d)
        if spec is None and size != example.shape[d]:
            return f"dimension {d} is {size}, fixed at {example.shape[d]}"
        if spec is not None and (size % spec.multiple_of or not spec.min_multiple <= size // spec.multiple_of
                                 <= spec.max_multiple):
            return f"{spec.name} {size}, the program takes {_sizes(spec)}"
    return None


def capture_program(source: EncoderSource, pooled: bool, example: Tensor) -> tuple[Any, DynamicShapes]:
    """``torch.export`` the encoder (traced on ``example``) with the modality's dynamic shapes.

    Returns:
        The ``ExportedProgram`` and the :class:`~jepa.interfaces.DynamicShapes` it was captured with.

    Raises:
        ValueError: ``torch.export`` cannot capture the encoder (see :func:`compile_error`).
    """
    encoder = _source_encoder(source)
    shapes = source.modality.export_dynamic_shapes(encoder)  # type: ignore[arg-type]
    dims = _program_dims(shapes, example, source.modality.name)
    module = ProgramExport(encoder, pooled, shapes.forward).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes={"x": dims}, strict=False)
    except Exception as exc:  # noqa: BLE001 - any capture failure is reported as a user-facing error
        raise CheckpointError(compile_error(source, encoder, "export", exc)) from exc
    return program, shapes


def export_torch_program(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """``torch.export`` the encoder with a dynamic batch (and the modality's dynamic sizes), verify the
    program loaded back from the written file against eager, then move it into place.

    Verified on every :meth:`~jepa.interfaces.Modality.export_inputs` batch the program's sizes
    admit (the others are named in the log) and on the first input's shape at another batch size.

    Raises:
        ValueError: ``torch.export`` cannot capture the encoder, or the source is already exported.
        ExportVerificationError: the loaded program differs by more than ``tolerance`` (nothing is written).
    """
    out = Path(out)
    encoder = _source_encoder(source)
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))
    example = inputs[0]
    program, shapes = capture_program(source, pooled, example)
    gen = torch.Generator().manual_seed(1)
    inputs.append(torch.randn(example.shape[0] + 1, *example.shape[1:], generator=gen))
    if shapes.dims:  # the smallest sizes declared, at batch 1: a declaration the program does not keep fails here
        smallest = [shapes.dims[d].multiple_of * shapes.dims[d].min_multiple if d in shapes.dims else example.shape[d]
                    for d in range(1, example.ndim)]
        inputs.append(torch.randn(1, *smallest, generator=gen))
    reasons = [_not_admitted(x, example, shapes.dims) for x in inputs]
    skipped = {_shape_key(x): r for x, r in zip(inputs, reasons) if r is not None}
    inputs = [x for x, r in zip(inputs, reasons) if r is None]
    if skipped:
        log("note: the program takes only the sizes its modality declares dynamic "
            "(Modality.export_dynamic_shapes); not checked on " + ", ".join(f"{k} ({r})" for k, r in skipped.items()))
    meta = build_metadata(source, "torch-export", pooled)
    meta["dynamic"] = {"batch": "any >= 1", **{spec.name: _sizes(spec) for _, spec in sorted(shapes.dims.items())}}
    meta["input_shape"] = ["batch", *(shapes.dims[d].name if d in shapes.dims else int(example.shape[d])
                                      for d in range(1, example.ndim))]
    eager = EncoderExport(encoder, pooled).eval()
    result: dict[str, float] = {}

    def save(buffer: BinaryIO) -> None:
        torch.export.save(program, buffer, extra_files={EXPORT_METADATA_NAME: json.dumps(meta)})

    def write(tmp: str) -> None:
        write_in_memory(tmp, save)
        loaded = torch.export.load(tmp).module()
        diffs: dict[str, float] = {}
        for x in inputs:
            try:
                one = max_abs_differences(eager, loaded, [x])
            except (RuntimeError, AssertionError) as exc:  # a program's failed shape guard is an AssertionError
                raise ExportVerificationError(f"the torch.export program fails on an input the encoder accepts "
                                              f"({str(exc).splitlines()[0]}); nothing was written") from exc
            diffs.update({f"{k} batch {x.shape[0]}": v for k, v in one.items()})
        report_differences(diffs, tolerance, "torch.export program", "the torch.export program", log)
        meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
        write_in_memory(tmp, save)
        result.update(diffs)

    atomic_write(out, write)
    return ExportResult(out, "torch-export", meta, result, tolerance)


def export_formats(source: EncoderSource) -> dict[str, Callable[..., ExportResult]]:
    """Every format ``source`` can be exported in: the core's (:data:`CORE_FORMATS`), then its modality's
    (a modality's writer of a core format's name takes its place)."""
    return {"torchscript": export_torchscript, "torch-export": export_torch_program,
            **source.modality.export_formats()}


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any export work.

    Raises:
        ValueError: ``out`` exists and is no regular file (a folder: every format writes a new file
            or folder; a named pipe, device or socket, which replacing would destroy), or something
            other than a folder stands where one of its parent folders should be
            (:func:`jepa.outputs.check_output_file`).
    """
    check_output_file(out, "--out", example="encoder.pt", folders=True)


def export(
    source: EncoderSource, out: str | Path, *, fmt: str = "torchscript", pooled: bool = False,
    tolerance: float = EXPORT_TOLERANCE, log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source``'s encoder in format ``fmt`` (see module docstring).

    Raises:
        ValueError: ``fmt`` is not a format of the core or of the source's modality.
    """
    formats = export_formats(source)
    if fmt not in formats:
        raise ConfigError(f"--format must be one of {', '.join(formats)} for the {source.modality.name} modality, "
                         f"got {fmt!r}")
    check_out_path(Path(out))
    return formats[fmt](source, out, pooled=pooled, tolerance=tolerance, log=log)
