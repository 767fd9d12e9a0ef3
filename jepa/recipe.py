"""Typed, strict recipes: YAML -> validated pydantic models, with ``--set`` overrides.

A recipe states what differs from the defaults in code. Validation happens in three passes,
all before anything heavy is built:

1. the modality section, by the plugin's own ``config_model`` (``modality.name`` picks it);
2. the objective section, by the objective's own ``config_model`` (``objective.name`` picks it,
   default ``ijepa``; the older top-level ``ema:`` / ``loss:`` sections are read as the ijepa
   objective's, their keys overriding those under ``objective:``);
3. the core sections (data, optim, engine, checkpoint, log, eval) by the models below;
4. semantic checks (``check_recipe``): the core's, the objective's and the modality's ``check``.

Every problem is reported as ``FILE: field.path: problem (got VALUE)`` in one
:class:`RecipeError`, never as a traceback; its text shows control characters of file names and
keys as escapes (:func:`jepa.text.printable`), one line per problem.

Counts that size memory, processes or work per step have upper bounds far above any real use
(``le=``, the reason in each field's description): a typo such as ``prefetch_factor: 200000``
is refused by ``jepa recipe check`` instead of filling the machine's memory before step 1.
"""

from __future__ import annotations

import copy
import math
import reprlib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator

from jepa import objectives, registry
from jepa.config import ModalityConfig, ObjectiveConfig, StrictModel
from jepa.init_from import InitFromConfig
from jepa.objectives.ijepa import IJEPAConfig
from jepa.recipe_yaml import MAX_BYTES, YAMLProblem, load_yaml
from jepa.text import printable

__all__ = ["Recipe", "RecipeError", "StrictModel", "ModalityConfig", "load_recipe", "parse_recipe", "apply_overrides"]


MAX_STEPS = 2**53
"""Most optimiser steps a recipe may span (steps are counted exactly in float64 below this)."""
MAX_GLOBAL_BATCH = 2**20
"""Largest ``data.global_batch_size`` (published JEPA/SSL batches are at most 64 Ki)."""
MAX_MICRO_BATCH = 2**16
"""Largest batch of one forward pass (``data.micro_batch_size``, ``eval.batch_size``)."""


class RecipeError(ValueError):
    """A recipe problem a user can fix; ``str()`` is the full, readable report."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        shown = printable(source)  # names from the command line and the file: no control character reaches a terminal
        lines = [printable(f"{source}: {path}: {msg}" if path else f"{source}: {msg}") for path, msg in problems]
        header = f"{shown}: invalid recipe ({len(problems)} problem{'s' if len(problems) != 1 else ''})"
        super().__init__("\n".join([header, *("  " + line for line in lines)]))


# --------------------------------------------------------------------------- core sections


class DataConfig(StrictModel):
    """Where training samples come from and how they are batched."""

    source: Literal["shards", "synthetic"] = Field(
        "shards", description="'shards': WebDataset tar shards; 'synthetic': random inputs from the "
        "modality's example_input (throughput benchmarks, engine checks)")
    train_shards: str | None = Field(
        None, description="Shard list: brace pattern, local path, http(s):// URL or pipe: command; "
        "several patterns may be joined with '::'")
    samples_per_epoch: int = Field(1_281_167, gt=0, description="Samples that make one epoch (IN-1K: 1281167, IN-22K: ~14.2M)")
    global_batch_size: int = Field(
        2048, gt=0, le=MAX_GLOBAL_BATCH, description="Samples per optimiser step over all ranks (at most 2^20, 16x the "
        "largest published batches: without data.micro_batch_size one rank's micro batch is global / (world_size x "
        "accumulation), held in memory whole)")
    micro_batch_size: int | None = Field(
        None, gt=0, le=MAX_MICRO_BATCH, description="Samples per rank in one forward/backward: the batch the mask "
        "sampler collates (faithful image masks are cut to the shortest context of it, so it sets what the encoder sees). Set: "
        "engine.grad_accum_steps is derived as global_batch_size / (world_size x micro_batch_size), so the masks are the "
        "same on any number of GPUs. Unset: global_batch_size / (world_size x engine.grad_accum_steps). At most 65536: "
        "its inputs and activations are in memory at once")
    num_workers: int = Field(8, ge=0, le=256, description="Data-loader worker processes per rank (at most 256: each is "
                             "a process holding its own shuffle buffer and prefetched batches)")
    shuffle_buffer: int = Field(2000, ge=1, le=100_000, description="Raw samples in each worker's shuffle buffer (at most "
                                "100,000: every worker fills its buffer in memory before its first batch; 100,000 "
                                "ImageNet JPEGs are about 11 GB)")
    prefetch_factor: int = Field(2, ge=1, le=64, description="Batches prefetched per worker (at most 64: each prefetched "
                                 "batch is held in memory by every worker)")
    max_skip_rate: float = Field(0.01, ge=0.0, le=1.0, description="Stop when more than this share of samples is corrupt")
    min_samples_for_skip_check: int = Field(1000, ge=1, description="Samples seen before the skip rate is enforced")


class OptimConfig(StrictModel):
    """AdamW with linear-warmup + cosine learning rate and cosine weight decay."""

    epochs: float = Field(300, gt=0, description="Length of the run in epochs")
    warmup_epochs: float = Field(40, ge=0, description="Linear LR warmup from start_lr to lr")
    start_lr: float = Field(2e-4, ge=0)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (after warmup)")
    final_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.04, ge=0, description="Weight decay at step 0 (cosine to final_weight_decay)")
    final_weight_decay: float = Field(0.4, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm (None: no clipping)")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must be in [0, 1), got {betas}")
        return betas


class EngineConfig(StrictModel):
    """DeepSpeed settings."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="bf16 autocast as in the paper; fp16 uses loss scaling")
    grad_accum_steps: int | None = Field(
        None, ge=1, description="Micro batches per optimiser step on each rank. Unset: derived from "
        "data.micro_batch_size (global_batch_size / (world_size x micro_batch_size)), or 1 when that is unset too")
    compile: bool = Field(False, description="torch.compile the context encoder and predictor")
    activation_checkpointing: bool = Field(False, description="Recompute transformer blocks in backward (ViT-H/g memory)")


HEALTH_METRICS: dict[str, Literal["max", "min"]] = {
    "loss": "min", "pred_loss": "min", "sigreg": "min", "target_spread": "max", "rankme": "max", "knn_top1": "max", "knn_top5": "max"}
"""Metrics a run can keep its best checkpoint by, and which direction is better."""


class KeepBestConfig(StrictModel):
    metric: str = Field(description=f"Metric of metrics.jsonl to rank checkpoints by: one of {', '.join(HEALTH_METRICS)}")
    mode: Literal["max", "min", "auto"] = Field("auto", description="Better is larger (max) or smaller (min); auto knows each metric")

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in HEALTH_METRICS:
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(HEALTH_METRICS)}")
        return value

    @property
    def better(self) -> Literal["max", "min"]:
        return HEALTH_METRICS[self.metric] if self.mode == "auto" else self.mode


class CheckpointConfig(StrictModel):
    every_steps: int = Field(1000, ge=1, description="Save a checkpoint every N optimiser steps (and at the end)")
    keep_last: int = Field(3, ge=1, description="Complete checkpoints kept on disk")
    keep_best: KeepBestConfig | None = Field(
        None, description="Also keep the checkpoint with the best value of a metric in RUN_DIR/best (see jepa.best_checkpoint)")


class LogConfig(StrictModel):
    every_steps: int = Field(10, ge=1, description="Log (and sync the loss to the host) every N steps")
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs the 'tensorboard' extra)")
    collapse_threshold: float | None = Field(
        None, gt=0, description="Stop when the spread of target representations across the batch falls below this")
    collapse_rankme: float | None = Field(
        None, gt=0, description="Stop when the RankMe (effective rank) of the target tokens falls below this")


class EvalConfig(StrictModel):
    """Online k-NN evaluation during pretraining (off unless ``every_steps`` is set)."""

    every_steps: int | None = Field(None, ge=1, description="Run the k-NN probe every N optimiser steps (and at the end)")
    train_shards: str | None = Field(None, description="Labelled shards for the k-NN bank (a small set: a few thousand samples)")
    val_shards: str | None = Field(None, description="Labelled shards classified by the k-NN probe")
    k: int = Field(20, ge=1, le=10_000, description="Neighbours per query (at most 10,000: every query keeps its k "
                   "nearest bank samples)")
    temperature: float = Field(0.07, gt=0, description="Softness of the neighbours' vote weights")
    batch_size: int = Field(64, ge=1, le=MAX_MICRO_BATCH, description="Samples per encoder forward (at most 65536: "
                            "the batch and its activations are in memory at once)")
    max_samples: int = Field(10_000, ge=1, le=2_000_000, description="At most this many samples are read from each "
                             "shard set (at most 2,000,000, above ImageNet-1K's 1.28 M: the features of every one are "
                             "kept in host memory and gathered to every rank)")


class Recipe(StrictModel):
    """A complete training recipe."""

    name: str = Field(min_length=1, description="Run name; the run directory defaults to runs/<name>")
    seed: int = 0
    run_dir: str | None = Field(None, description="Where checkpoints, metrics and the resolved recipe go (default runs/<name>)")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps (schedules still span the full run)")
    modality: SerializeAsAny[ModalityConfig] = Field(description="The modality section; 'name' selects the plugin")
    objective: SerializeAsAny[ObjectiveConfig] = Field(
        default_factory=IJEPAConfig, description="How the encoder learns; 'name' selects the objective plugin "
        "(ijepa: latent prediction against an EMA target; lejepa: views + SIGReg)")
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    engine: EngineConfig = EngineConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    init_from: InitFromConfig | None = Field(
        None, description="Start a new run from these weights instead of random init (see jepa.init_from)")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.data.samples_per_epoch // self.data.global_batch_size)

    @property
    def total_steps(self) -> int:
        """Optimiser steps that the schedules span."""
        return max(1, math.ceil(self.optim.epochs * self.steps_per_epoch))

    @property
    def warmup_steps(self) -> int:
        return round(self.optim.warmup_epochs * self.steps_per_epoch)

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- parsing


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _format_value(value: Any) -> str:
    """A short repr of a user's value (bounded work, whatever its size)."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_BOUND_ERRORS = ("less_than_equal", "less_than", "too_long")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (``Section``, ``Section | None``, ``list[Section]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for kind in get_args(annotation):
        found = _model_of(kind)
        if found is not None:
            return found
    return None


def _description(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str | None:
    """The description of the field at ``loc`` (list indices skipped) in ``model``, or None."""
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        model = _model_of(field.annotation)
    return field.description if field is not None else None


def _problems_from(err: ValidationError, prefix: tuple[Any, ...] = (),
                   model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """One ``(field path, message)`` per error; a value above a bound also gets the field's
    description, which says why the bound is there."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `jepa recipe schema` lists every key)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "value_error":
            msg = f"{e['msg'].removeprefix('Value error, ')} (got {_format_value(e.get('input'))})"
        else:
            msg = f"{e['msg']} (got {_format_value(e.get('input'))})"
            why = _description(model, e["loc"]) if e["type"] in _BOUND_ERRORS else None
            if why:
                msg += f"; {e['loc'][-1]}: {why}"
        problems.append((loc, msg))
    return problems


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a raw recipe dict.

    Raises:
        RecipeError: the recipe is not a mapping, an override is not of the form ``a.b=value``,
            its value is not valid YAML, or it walks through a non-mapping.
    """
    if raw is not None and not isinstance(raw, dict):
        raise RecipeError("--set", [("", f"the recipe is a YAML {type(raw).__name__}, not a mapping of sections, "
                                         "so --set has nothing to override; a recipe is `key: value` lines")])
    out = copy.deepcopy(raw) if raw else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise RecipeError("--set", [(key or item, f"expected dotted.key=value, got {_format_value(item)}")])
        try:
            value = load_yaml(text, f"--set {key}") if text.strip() != "" else None
        except YAMLProblem as exc:
            raise RecipeError("--set", [(key, str(exc))]) from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError("--set", [(key, f"{where} is {_format_value(child)}, not a section; cannot set {key}")])
            node = child
        node[parts[-1]] = value
    return out


def parse_recipe(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a raw recipe mapping (types and semantics).

    Raises:
        RecipeError: naming ``source``, every bad field path, the bad value and what is allowed.
    """
    if raw is None:
        raise RecipeError(source, [("", "the recipe is empty; it needs at least `name:` and a `modality:` section "
                                        "(e.g. `modality: {name: image}`)")])
    if not isinstance(raw, dict):
        raise RecipeError(source, [("", f"a recipe must be a YAML mapping, got {type(raw).__name__}")])
    raw = dict(raw)
    problems: list[tuple[str, str]] = []

    modality_raw = raw.pop("modality", None)
    modality_cfg: ModalityConfig | None = None
    if modality_raw is None:
        problems.append(("modality", "required section is missing (e.g. `modality: {name: image}`)"))
    elif not isinstance(modality_raw, dict):
        problems.append(("modality", f"must be a mapping with at least `name:` (e.g. `modality: {{name: image}}`), "
                                     f"got {_format_value(modality_raw)}"))
    elif "name" not in modality_raw:
        problems.append(("modality.name", "required key is missing; it selects the modality plugin (`jepa modalities` lists them)"))
    else:
        try:
            plugin = registry.get(str(modality_raw["name"]))
        except ValueError as exc:
            problems.append(("modality.name", str(exc)))
        else:
            try:
                modality_cfg = plugin.config_model.model_validate(modality_raw)
            except ValidationError as exc:
                problems += _problems_from(exc, ("modality",), plugin.config_model)

    objective_cfg, objective_problems = _objective_section(raw)
    problems += objective_problems

    try:
        fields = {**raw, "modality": modality_cfg or _Placeholder()}
        if objective_cfg is not None:
            fields["objective"] = objective_cfg
        recipe = Recipe.model_validate(fields)
    except ValidationError as exc:
        problems += _problems_from(exc, model=Recipe)
        recipe = None
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    semantic = check_recipe(recipe)
    if semantic:
        raise RecipeError(source, semantic)
    return recipe


LEGACY_OBJECTIVE_SECTIONS = ("ema", "loss")
"""Top-level sections of recipes written before objectives were plugins: the ijepa objective's."""


def _objective_section(raw: dict[str, Any]) -> tuple[ObjectiveConfig | None, list[tuple[str, str]]]:
    """Pop and validate the objective section of ``raw`` (moving legacy ``ema`` / ``loss`` under it).

    Returns:
        ``(config, problems)``: config None when it does not validate (the problems say why).
    """
    section = raw.pop("objective", None)
    legacy = {key: raw.pop(key) for key in LEGACY_OBJECTIVE_SECTIONS if key in raw}
    if section is None:
        section = {"name": objectives.DEFAULT}
    if not isinstance(section, dict):
        return None, [("objective", f"must be a mapping with at least `name:` (e.g. `objective: {{name: lejepa}}`), "
                                    f"got {_format_value(section)}")]
    section = dict(section)
    name = str(section.setdefault("name", objectives.DEFAULT))
    problems: list[tuple[str, str]] = []
    for key, value in legacy.items():
        if name != "ijepa":
            problems.append((key, f"is a setting of the ijepa objective, and this recipe's objective is {name!r}; "
                                  "remove it (LeJEPA's optional EMA is objective.teacher)"))
        elif isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}  # e.g. `--set ema.momentum=...` on a recipe with objective.ema
        else:
            section[key] = value
    try:
        plugin = objectives.OBJECTIVES.get(name)
    except (ValueError, TypeError) as exc:
        return None, [*problems, ("objective.name", str(exc))]
    try:
        return plugin.config_model.model_validate(section), problems
    except ValidationError as exc:
        return None, [*problems, *_problems_from(exc, ("objective",), plugin.config_model)]


class _Placeholder(ModalityConfig):
    """Stands in for an invalid modality section so the core sections still get checked."""

    name: str = "?"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise RecipeError(source, [("", "file not found")])
    if not path.is_file():
        raise RecipeError(source, [("", "not a file; pass a recipe YAML file")])
    try:
        if path.stat().st_size > MAX_BYTES:
            raise YAMLProblem(f"{path.stat().st_size:,} bytes, more than a recipe may have ({MAX_BYTES:,}); "
                              "is this the right file?")
        raw = load_yaml(path.read_bytes(), source)
    except YAMLProblem as exc:
        raise RecipeError(source, [("", str(exc).removeprefix(f"{source}: "))]) from None
    except OSError as exc:
        raise RecipeError(source, [("", f"cannot be read ({exc.strerror or exc})")]) from None
    if overrides:
        raw = apply_overrides(raw or {}, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    return parse_recipe(raw, source)


# --------------------------------------------------------------------------- batch split


def split_global_batch(global_batch_size: int, world_size: int, grad_accum_steps: int | None = None,
                       micro_batch_size: int | None = None) -> tuple[int, int]:
    """How ``world_size`` ranks run a global batch: ``(micro batch per rank, accumulation steps)``,
    with ``world_size x accumulation x micro = global``.

    * ``micro_batch_size`` unset: accumulation ``grad_accum_steps`` (default 1), micro batch
      ``global / (world x accumulation)``.
    * both set: they must multiply out to the global batch on this many ranks.
    * ``micro_batch_size`` set alone: accumulation ``global / (world x micro)``. When that does not
      divide (more ranks than ``global / micro``), the rank's share ``global / world`` is run in the
      largest micro batches of at most ``micro_batch_size`` that divide it; the caller warns when
      that changes the masks (:func:`micro_batch_warning`).

    Raises:
        ValueError: no split fits, naming the numbers and the fix.
    """
    g, w = global_batch_size, world_size
    if micro_batch_size is None:
        accum = grad_accum_steps or 1
        if g % (w * accum):
            per_step = w * accum
            raise ValueError(
                f"data.global_batch_size={g} is not divisible by world_size={w} x engine.grad_accum_steps={accum} = "
                f"{per_step}; pick a global batch that is a multiple of {per_step} (e.g. {max(per_step, g // per_step * per_step)}) "
                "or change the accumulation steps")
        return g // (w * accum), accum
    micro = micro_batch_size
    if grad_accum_steps is not None:
        if w * grad_accum_steps * micro != g:
            raise ValueError(
                f"world_size={w} x engine.grad_accum_steps={grad_accum_steps} x data.micro_batch_size={micro} = "
                f"{w * grad_accum_steps * micro}, not data.global_batch_size={g}; leave engine.grad_accum_steps unset "
                "(it is derived from data.micro_batch_size) or set the two to match")
        return micro, grad_accum_steps
    if g % (w * micro) == 0:
        return micro, g // (w * micro)
    if g % w:
        raise ValueError(f"data.global_batch_size={g} is not divisible by world_size={w}; run on a number of processes "
                         f"that divides {g} or change the global batch")
    share = g // w
    fitting = next(m for m in range(min(micro, share), 0, -1) if share % m == 0)
    return fitting, share // fitting


def _masks_collated_per_batch(recipe: Recipe) -> bool:
    """Whether the modality's masks depend on the batch they are sampled in (``mask.mode: faithful``,
    which cuts every context to the batch's shortest)."""
    return getattr(getattr(recipe.modality, "mask", None), "mode", None) == "faithful"


def micro_batch_warning(recipe: Recipe, world_size: int, micro_batch_size: int) -> str | None:
    """Why a run's masks differ from the recipe's, or None: the run on ``world_size`` ranks cannot use
    ``data.micro_batch_size`` (see :func:`split_global_batch`) and its masks are collated per batch."""
    pinned, g = recipe.data.micro_batch_size, recipe.data.global_batch_size
    if pinned is None or micro_batch_size == pinned or not _masks_collated_per_batch(recipe):
        return None
    return (f"data.micro_batch_size={pinned} does not fit {world_size} ranks (data.global_batch_size={g} is "
            f"{g // world_size} per rank), so the micro batch is {micro_batch_size}: faithful masks are cut to the shortest "
            f"context of {micro_batch_size} images instead of {pinned}, and the encoder sees a different share of each "
            f"image than the recipe means (python tools/bench_masks.py --recipes measures it); run on at most "
            f"{g // pinned} processes to keep the recipe's masks")


def _batch_problems(global_batch: int, micro: int | None, accum: int | None) -> list[tuple[str, str]]:
    """The batch fields' checks that need no world size."""
    if micro is None:
        if accum is not None and global_batch % accum:
            return [("engine.grad_accum_steps", f"must divide data.global_batch_size={global_batch} (got {accum})")]
        return []
    if global_batch % micro:
        below = max(m for m in range(1, micro + 1) if global_batch % m == 0)
        return [("data.micro_batch_size", f"must divide data.global_batch_size={global_batch} (got {micro}: "
                 f"{global_batch} / {micro} = {global_batch / micro:g}); use a divisor such as {below}, or change the global batch")]
    if accum is not None and global_batch % (micro * accum):
        return [("engine.grad_accum_steps", f"data.micro_batch_size={micro} x engine.grad_accum_steps={accum} = "
                 f"{micro * accum} does not divide data.global_batch_size={global_batch}, so no number of processes fits; "
                 "leave engine.grad_accum_steps unset (it is derived from data.micro_batch_size)")]
    return []


def check_recipe(recipe: Recipe) -> list[tuple[str, str]]:
    """Semantic checks of the core sections plus the modality's own ``check``."""
    problems: list[tuple[str, str]] = []
    o, d = recipe.optim, recipe.data
    steps = o.epochs * max(1, d.samples_per_epoch // d.global_batch_size)
    if not steps <= MAX_STEPS:
        problems.append(("optim.epochs", f"{o.epochs:g} epochs of {d.samples_per_epoch} samples in batches of "
                         f"{d.global_batch_size} make {steps:.3g} steps, more than {MAX_STEPS:.3g}; lower optim.epochs "
                         "or data.samples_per_epoch"))
        return problems  # the schedules below are undefined
    if o.warmup_epochs >= o.epochs:
        problems.append(("optim.warmup_epochs", f"must be shorter than optim.epochs={o.epochs} (got {o.warmup_epochs})"))
    if o.final_lr > o.lr or o.start_lr > o.lr:
        problems.append(("optim.lr", f"peak lr {o.lr} must be >= start_lr {o.start_lr} and final_lr {o.final_lr}"))
    if d.samples_per_epoch < d.global_batch_size:
        problems.append(("data.samples_per_epoch", f"an epoch must hold at least one global batch of {d.global_batch_size} (got {d.samples_per_epoch})"))
    if d.source == "shards" and not d.train_shards:
        problems.append(("data.train_shards", "required when data.source is 'shards' (set it in the recipe or with --set data.train_shards=...)"))
    problems += _batch_problems(d.global_batch_size, d.micro_batch_size, recipe.engine.grad_accum_steps)
    e = recipe.eval
    if e.every_steps is not None:
        problems += [(f"eval.{key}", "required when eval.every_steps is set (labelled shards, e.g. from `jepa shards`)")
                     for key in ("train_shards", "val_shards") if not getattr(e, key)]
    best = recipe.checkpoint.keep_best
    if best is not None and best.metric.startswith("knn") and e.every_steps is None:
        problems.append(("checkpoint.keep_best.metric", f"{best.metric} is measured by the online k-NN probe: set "
                         "eval.every_steps, eval.train_shards and eval.val_shards, or rank by loss/rankme/target_spread"))
    modality = registry.bind(recipe.modality)
    objective = objectives.bind(recipe.objective, modality)
    unused = objective.unused_modality_sections  # e.g. LeJEPA samples no masks: their checks do not apply
    problems += [(f"modality.{path}" if path else "modality", msg) for path, msg in modality.check()
                 if path.split(".")[0] not in unused]
    problems += [(f"objective.{path}" if path else "objective", msg) for path, msg in objective.check()]
    return problems


def _plugin_schemas(schema: dict[str, Any], field: str, group: "registry.PluginGroup[Any]", prefix: str) -> None:
    """Point ``schema``'s ``field`` at one of the group's plugins' config models, each plugin's models
    under its own prefix in ``$defs`` (plugins reuse class names). A plugin that cannot be loaded is
    left out (``group.problems()`` says why)."""
    defs = schema.setdefault("$defs", {})
    options = []
    for name in group.loadable():
        plugin_prefix = f"{prefix}{name}."
        sub = group.get(name).config_model.model_json_schema(ref_template=f"#/$defs/{plugin_prefix}{{model}}")
        defs.update({plugin_prefix + name: model for name, model in sub.pop("$defs", {}).items()})
        key = plugin_prefix + sub.get("title", "config")
        defs[key] = sub
        options.append({"$ref": f"#/$defs/{key}"})
    schema["properties"][field] = {"description": f"The {field} section; 'name' selects the plugin", "oneOf": options}


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of a recipe, the modality and objective sections each one of the registered plugins' models
    (of those that load: see :func:`plugin_problems`)."""
    schema = Recipe.model_json_schema()
    _plugin_schemas(schema, "modality", registry.MODALITIES, "")
    _plugin_schemas(schema, "objective", objectives.OBJECTIVES, "objective.")
    return schema


def plugin_problems() -> list[str]:
    """One line for every installed modality or objective plugin that cannot be used (imports them all)."""
    return [*registry.MODALITIES.problems().values(), *objectives.OBJECTIVES.problems().values()]
