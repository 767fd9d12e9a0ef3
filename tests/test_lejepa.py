"""LeJEPA wherever I-JEPA runs: every ZeRO stage, bf16, activation checkpointing, exact resume (with
and without an EMA teacher), resuming a 2-process checkpoint on 1 process, the encoder evaluation
and export read, ``jepa plan`` / ``jepa bench train``, and the recipe errors of the objective.

All runs are the tiny image ViT of ``tests/tiny_recipes.py`` (depth 2, 32 px, patch 8; width 192) on
the synthetic source, 2 global + 2 local views, 32 SIGReg slices, projector 64 -> 16, fp32 unless
said, on one torch thread (a busy 2-core machine ran these steps ~30x faster than on two). The
2-process run is two srun-style tasks (``tests/test_resume_resize.py``). Exactness: fp32, CPU; losses
read from metrics.jsonl (logged every step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa import objectives, registry
from jepa.checkpoint import load_model_weights
from jepa.cli import app
from jepa.data.loader import Batch
from jepa.data.synthetic import SyntheticTrainLoader
from jepa.monitor import read_metrics
from jepa.objectives.lejepa_loss import lejepa_loss
from jepa.objectives.sigreg import slice_directions
from jepa.recipe import RecipeError, apply_overrides, parse_recipe
from jepa.train import train

from test_resume_resize import srun
from tiny_recipes import tiny_image_recipe

SEED = 5
N_STEPS = 4  # the schedules span 8 steps (64 samples in batches of 8, one epoch)
K_STEPS = 2  # where the interrupted runs stop
OBJECTIVE = {"name": "lejepa", "num_local_views": 2, "num_slices": 32, "projector": {"hidden_dim": 64, "out_dim": 16}}
TEACHER = ("objective.teacher.momentum=0.9",)
# Width 192 makes qkv / fc1 / fc2 larger than ZeRO-3's persistence threshold (1e5 elements), so they
# really are partitioned (and the teacher's EMA must gather them); smaller tensors stay whole.
WIDTH = 192
# Tolerance where float32 rounding may differ (another process count, ZeRO-3's linear): measured
# 1.5e-8 on these ~0.24 losses; 1e-6 leaves room and still catches a wrong statistic (measured: a
# per-rank SIGReg is 7e-2 off at step 1, a global instead of per-rank BatchNorm 2.6e-3).
ATOL = 1e-6


def _raw(run_dir: Path, *overrides: str) -> dict:
    raw = tiny_image_recipe(SEED)
    raw.update(objective=dict(OBJECTIVE), engine={"precision": "fp32"}, log={"every_steps": 1}, run_dir=str(run_dir))
    return apply_overrides(raw, [f"modality.encoder.embed_dim={WIDTH}", f"max_steps={N_STEPS}", *overrides])


def _recipe(run_dir: Path, *overrides: str):
    return parse_recipe(_raw(run_dir, *overrides), "lejepa test recipe")


def _recipe_file(run_dir: Path, *overrides: str) -> Path:
    path = run_dir.with_name(run_dir.name + ".yaml")
    path.write_text(yaml.safe_dump(_raw(run_dir, *overrides)))
    return path


def _train(recipe, resume: str = "auto", *, zero3_linear: bool = False) -> Path:
    """``train`` (the run directory), leaving ``torch.nn.functional.linear`` as it found it.

    A ZeRO-3 engine makes DeepSpeed replace ``torch.nn.functional.linear`` for the rest of the process
    (``zero.Init``'s memory-efficient linear: matmul, then the bias added in place; float32 rounding
    apart from ``addmm``), so every later run in the process would compute its Linear layers
    differently. Restoring it keeps each run's numbers independent of the runs before it;
    ``zero3_linear`` runs this one with DeepSpeed's linear (what a ZeRO-3 run computes with).
    """
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    linear = torch.nn.functional.linear
    try:
        if zero3_linear:
            torch.nn.functional.linear = zero3_linear_wrap
        return train(recipe, resume=resume).run_dir
    finally:
        torch.nn.functional.linear = linear


def _losses(run_dir: Path) -> list[float]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics.jsonl has gaps or repeats"
    return [r["loss"] for r in records]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory) -> dict[int | str, Path]:
    """N_STEPS steps at every ZeRO stage, one process, fp32: run directories by stage; "0-zero3-linear":
    stage 0 computing its Linear layers as ZeRO-3 does."""
    root = tmp_path_factory.mktemp("zero")
    runs: dict[int | str, Path] = {stage: _train(_recipe(root / f"stage{stage}", f"engine.zero_stage={stage}"))
                                   for stage in range(4)}
    runs["0-zero3-linear"] = _train(_recipe(root / "stage0-zero3-linear", "engine.zero_stage=0"), zero3_linear=True)
    return runs


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """N_STEPS steps with an EMA teacher (momentum 0.9) under ZeRO-3 (the EMA gathers the shards)."""
    return _train(_recipe(tmp_path_factory.mktemp("teacher") / "straight", *TEACHER, "engine.zero_stage=3"))


def _bind(recipe):
    modality = registry.bind(recipe.modality)
    return modality, objectives.bind(recipe.objective, modality, total_steps=recipe.total_steps, seed=recipe.seed)


def _embed(model, modality, batch: Batch) -> list[torch.Tensor]:
    """Projector outputs of every view of one micro batch (BatchNorm over this micro batch's rows)."""
    z, _ = model([modality.finish_batch(v) for v in batch.views])
    return [v.float() for v in z]


def _loss(recipe, z_views: list[torch.Tensor], step: int) -> float:
    c = recipe.objective
    directions = slice_directions(c.projector.out_dim, c.num_slices, seed=recipe.seed, step=step)
    return lejepa_loss(z_views, c.num_global_views, directions, c.lam, num_points=c.num_points, t_max=c.t_max)[0].item()


# --------------------------------------------------------------------------- engine: ZeRO, precision, checkpointing


def _assert_same_weights(a_dir: Path, b_dir: Path, parts: set[str]) -> None:
    a, b = load_model_weights(a_dir).parts, load_model_weights(b_dir).parts
    assert a.keys() == b.keys() == parts
    for part in parts:
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_every_zero_stage_gives_the_same_losses_and_weights(zero_runs):
    """One process: stages 1 and 2 give bitwise stage 0's loss curve and final weights; stage 3 bitwise
    those of stage 0 computing its Linear layers as ZeRO-3 does (DeepSpeed's memory-efficient linear,
    see ``_train``), and stage 0's own losses within ATOL (measured: 1.5e-8).

    Stage 3's weights are not compared with plain stage 0's: Adam turns rounding-level differences of
    gradients that are zero by construction (the encoder's final LayerNorm bias before the mean-pool,
    the projector's Linear biases before BatchNorm, the attention's key bias) into steps of ~lr
    (measured: 1.7e-3 on those, 3e-6 elsewhere)."""
    reference = _losses(zero_runs[0])
    assert len(reference) == N_STEPS and all(torch.isfinite(torch.tensor(reference)))
    for stage in (1, 2):
        assert _losses(zero_runs[stage]) == reference, f"stage {stage}"
        _assert_same_weights(zero_runs[stage], zero_runs[0], {"encoder", "projector"})
    assert _losses(zero_runs[3]) == _losses(zero_runs["0-zero3-linear"])
    _assert_same_weights(zero_runs[3], zero_runs["0-zero3-linear"], {"encoder", "projector"})
    assert _losses(zero_runs[3]) == pytest.approx(reference, rel=0, abs=ATOL)
    assert _losses(zero_runs[3]) != reference, "stage 3 ran torch's own linear: the check above is not the one meant"

    weights = load_model_weights(zero_runs[0]).parts
    torch.manual_seed(SEED)  # the initial weights train() built
    initial = _bind(_recipe(zero_runs[0]))[1].build_model()
    for part in ("encoder", "projector"):
        moved = _max_diff(weights[part], getattr(initial, part).state_dict())
        assert moved > 1000 * ATOL, f"the {part} did not move; the comparison is vacuous"


def test_teacher_under_zero3_equals_zero0(teacher_run, tmp_path):
    """The EMA teacher lerps from the online weights, which ZeRO-3 holds as shards (gathered for it):
    bitwise stage 0's run with ZeRO-3's linear."""
    run = _train(_recipe(tmp_path / "teacher0", *TEACHER, "engine.zero_stage=0"), zero3_linear=True)
    assert _losses(run) == _losses(teacher_run)
    _assert_same_weights(run, teacher_run, {"encoder", "projector", "target_encoder", "target_projector"})
    parts = load_model_weights(run).parts
    assert _max_diff(parts["target_encoder"], parts["encoder"]) > 1000 * ATOL, "the teacher is the online encoder"


def test_bf16_runs_with_finite_losses_close_to_fp32(zero_runs, tmp_path):
    losses = _losses(_train(_recipe(tmp_path / "bf16", "engine.precision=bf16")))
    fp32 = _losses(zero_runs[0])
    assert len(losses) == N_STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert losses != fp32, "bf16 gave the fp32 numbers: autocast did not run"
    assert losses == pytest.approx(fp32, rel=0.05)


def test_activation_checkpointing_gives_the_same_losses(zero_runs, tmp_path, monkeypatch):
    from jepa.nn.transformer import TransformerEncoder

    switched = []
    original = TransformerEncoder.set_grad_checkpointing

    def spy(self, enable=True):
        switched.append(enable)
        original(self, enable)

    monkeypatch.setattr(TransformerEncoder, "set_grad_checkpointing", spy)
    run = _train(_recipe(tmp_path / "ckpt", "engine.activation_checkpointing=true"))
    assert switched == [True], "the encoder's activation checkpointing was not switched on"
    assert _losses(run) == _losses(zero_runs[0])  # bitwise (the blocks recomputed in the backward)
    a, b = load_model_weights(run).parts, load_model_weights(zero_runs[0]).parts
    for part in ("encoder", "projector"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


# --------------------------------------------------------------------------- exact resume


def _spy_slice_steps(monkeypatch) -> list[int]:
    import jepa.objectives.lejepa as lejepa

    steps: list[int] = []
    original = lejepa.slice_directions

    def spy(*args, step, **kwargs):
        steps.append(step)
        return original(*args, step=step, **kwargs)

    monkeypatch.setattr(lejepa, "slice_directions", spy)
    return steps


@pytest.mark.parametrize("teacher", [False, True], ids=["no-teacher-zero0", "teacher-zero3"])
def test_interrupted_run_resumes_bitwise(teacher, zero_runs, teacher_run, tmp_path, monkeypatch):
    """Stopped after K_STEPS and resumed: bitwise the losses and the final weights (encoder, projector
    with its BatchNorm buffers, the teacher) of the uninterrupted run; the resumed steps redraw SIGReg's
    slices from the global step, and the loader continues where it stopped."""
    extra = (*TEACHER, "engine.zero_stage=3") if teacher else ("engine.zero_stage=0",)
    straight = teacher_run if teacher else zero_runs[0]
    run_dir = tmp_path / "stopped"
    _train(_recipe(run_dir, *extra, f"max_steps={K_STEPS}"))
    assert len(_losses(run_dir)) == K_STEPS
    steps = _spy_slice_steps(monkeypatch)
    _train(_recipe(run_dir, *extra), resume="auto")
    assert steps == list(range(K_STEPS, N_STEPS)), "slices must come from the global step of each resumed step"
    assert _losses(run_dir) == _losses(straight)  # bitwise, before and after the interruption

    parts = {"encoder", "projector"} | ({"target_encoder", "target_projector"} if teacher else set())
    models = torch.load(run_dir / "checkpoints" / f"step_{N_STEPS:06d}" / "models.pt", weights_only=True)
    assert set(models) == {"format_version", "step", "recipe", *parts}
    want = load_model_weights(straight).parts
    assert set(want) == parts
    for part in parts:
        assert models[part].keys() == want[part].keys()
        assert all(torch.equal(models[part][k], want[part][k]) for k in want[part]), part
    bn = "net.1.running_mean"  # the projector's first BatchNorm: trained by the forward passes, restored on resume
    assert bn in models["projector"] and models["projector"][bn].abs().max() > 0
    if teacher:
        assert bn in models["target_projector"] and models["target_projector"][bn].abs().max() > 0
        assert _max_diff(models["target_encoder"], models["encoder"]) > 1e-4, "the teacher is the online encoder"
        momentum = [r["ema_momentum"] for r in read_metrics(run_dir)]
        assert momentum == pytest.approx([0.9 + 0.1 * s / 8 for s in range(N_STEPS)])  # linear to 1 over 8 steps


# --------------------------------------------------------------------------- another number of processes


def test_two_process_checkpoint_resumes_on_one_process(tmp_path):
    """2 srun-style tasks (micro batch 4 each, ZeRO-2) train K_STEPS steps; 1 process resumes (micro batch
    4 kept, 2 accumulation steps) and continues.

    Step 1 of the 2 processes equals the single-process loss of the same 8 rows, with SIGReg's
    statistic over all 8 (its cos/sin sums are all-reduced) and the prediction term averaged over the
    ranks; only the projector's BatchNorm is per rank (no SyncBatchNorm), so the reference embeds each
    rank's 4 rows on their own. Step K_STEPS + 1 on 1 process equals the loss of the step-K_STEPS
    weights on that step's two micro batches (SIGReg per micro batch of 4 there)."""
    run_dir = tmp_path / "run"
    srun(2, ["-m", "jepa.cli", "train", str(_recipe_file(run_dir, "engine.zero_stage=2", f"max_steps={K_STEPS}"))],
         OMP_NUM_THREADS="1")
    meta = json.loads((run_dir / "checkpoints" / f"step_{K_STEPS:06d}" / "meta.json").read_text())
    assert (meta["world_size"], meta["micro_batch_size"], meta["grad_accum_steps"]) == (2, 4, 1)
    two_process = _losses(run_dir)
    saved = load_model_weights(run_dir / "checkpoints" / f"step_{K_STEPS:06d}").parts

    recipe = _recipe(run_dir, "engine.zero_stage=2")
    modality, objective = _bind(recipe)
    maker = objective.batch_maker()

    def micro_batches(world: int, first: int, count: int) -> list[Batch]:
        loaders = [SyntheticTrainLoader(modality, maker, seed=SEED, rank=r, world_size=world, micro_batch_size=4,
                                        global_batch_size=8) for r in range(world)]
        return [loader.batch(i) for i in range(first, first + count) for loader in loaders]

    torch.manual_seed(SEED)  # train()'s initial weights
    model = objective.build_model()
    ranks = micro_batches(2, 0, 1)
    with torch.no_grad():
        per_rank_bn = _loss(recipe, [torch.cat(z) for z in zip(*(_embed(model, modality, b) for b in ranks))], step=0)
        rows = Batch(torch.cat([b.inputs for b in ranks]), (),
                     tuple(torch.cat(v) for v in zip(*(b.views[1:] for b in ranks))))  # both ranks' rows, one batch
        global_bn = _loss(recipe, _embed(model, modality, rows), step=0)
    assert abs(two_process[0] - per_rank_bn) <= ATOL, (two_process[0], per_rank_bn)
    # Measured: 2.6e-3 apart. If this fails, BatchNorm became global (SyncBatchNorm): compare with global_bn above.
    assert abs(per_rank_bn - global_bn) > 100 * ATOL, (per_rank_bn, global_bn)

    _train(_recipe(run_dir, "engine.zero_stage=2", f"max_steps={K_STEPS + 1}"))
    meta = json.loads((run_dir / "checkpoints" / f"step_{K_STEPS + 1:06d}" / "meta.json").read_text())
    assert (meta["world_size"], meta["micro_batch_size"], meta["grad_accum_steps"]) == (1, 4, 2)
    losses = _losses(run_dir)
    assert len(losses) == K_STEPS + 1 and losses[:K_STEPS] == two_process and all(torch.isfinite(torch.tensor(losses)))

    resumed = objective.build_model()
    resumed.encoder.load_state_dict(saved["encoder"])
    resumed.projector.load_state_dict(saved["projector"])
    with torch.no_grad():
        expected = sum(_loss(recipe, _embed(resumed, modality, b), step=K_STEPS)
                       for b in micro_batches(1, 2 * K_STEPS, 2)) / 2
    assert abs(losses[K_STEPS] - expected) <= ATOL, (losses[K_STEPS], expected)


# --------------------------------------------------------------------------- evaluation and export


def test_eval_and_export_read_the_online_encoder_or_the_teacher(zero_runs, teacher_run):
    from jepa.sources import load_source

    online = load_model_weights(zero_runs[0]).parts
    src = load_source(str(zero_runs[0]))
    assert src.step == N_STEPS
    assert all(torch.equal(v, online["encoder"][k]) for k, v in src.encoder.state_dict().items())
    assert src.encoder.state_dict().keys() == online["encoder"].keys()

    parts = load_model_weights(teacher_run).parts
    assert _max_diff(parts["target_encoder"], parts["encoder"]) > 1e-4, "teacher == online encoder: a vacuous check"
    target = load_source(str(teacher_run)).encoder.state_dict()
    assert target.keys() == parts["target_encoder"].keys()
    assert all(torch.equal(v, parts["target_encoder"][k]) for k, v in target.items())
    context = load_source(str(teacher_run), which="context").encoder.state_dict()
    assert all(torch.equal(v, parts["encoder"][k]) for k, v in context.items())


# --------------------------------------------------------------------------- plan, bench, FLOPs


def _hand_flops(sides: list[int], *, width=WIDTH, depth=2, patch=8, mlp=4 * WIDTH, hidden=64, out=16) -> float:
    """Training FLOPs per sample (3 x forward, multiply-adds as 2) of ViT + projector over views of these sides."""
    total = 0.0
    for side in sides:
        n = (side // patch) ** 2
        patch_embed = 2 * n * 3 * patch * patch * width
        block = 2 * n * width * 3 * width + 2 * n * width * width + 2 * 2 * n * width * mlp + 2 * 2 * n * n * width
        projector = 2 * (width * hidden + hidden * hidden + hidden * out)
        total += patch_embed + depth * block + projector
    return 3 * total


def test_flops_are_counted_on_the_views_shapes(tmp_path):
    _, objective = _bind(_recipe(tmp_path / "run"))
    assert objective.train_flops_per_sample(8) is None  # unknown before a batch is at hand
    views = [torch.zeros(2, 3, s, s) for s in (32, 32, 16, 16)]  # 2 global views at 32 px, 2 local at 16
    counted = objective.train_flops_per_sample(8, Batch(views[0], (), tuple(views[1:])))
    assert counted == pytest.approx(_hand_flops([32, 32, 16, 16]), rel=1e-6)


def test_plan_and_bench_train_on_a_lejepa_recipe(tmp_path):
    recipe_file = _recipe_file(tmp_path / "run")
    out = CliRunner().invoke(app, ["plan", str(recipe_file), "--gpus", "2", "--gpu-memory", "80GB"])
    assert out.exit_code == 0, out.output
    assert "trainable parameters" in out.output

    out = CliRunner().invoke(app, ["bench", "train", str(recipe_file), "--steps", "2", "--warmup", "1"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "2 timed steps after 1 warm-up" in text
    flops = re.search(r"training FLOPs per sample │ ([\d.]+) MFLOP", text)
    assert flops, text
    # the synthetic source: every view (2 global + 2 local) is a full 32 px input
    assert float(flops.group(1)) * 1e6 == pytest.approx(_hand_flops([32] * 4), rel=0.01)
    assert re.search(r"MFU │ [\d.]+ %", text), text


def test_plan_counts_the_lejepa_modules(tmp_path):
    recipe = _recipe(tmp_path / "run")
    _, objective = _bind(recipe)
    trainable = sum(p.numel() for p in objective.build_model().parameters())
    out = CliRunner().invoke(app, ["plan", str(_recipe_file(tmp_path / "run")), "--gpus", "2"])
    assert f"trainable parameters {trainable:,}" in " ".join(out.output.split())


# --------------------------------------------------------------------------- recipe errors


def _problems(tmp_path: Path, objective: dict, **top) -> str:
    raw = {**_raw(tmp_path / "run"), "objective": objective, **top}
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw, "r.yaml")
    return str(info.value)


def test_recipe_errors_of_the_objective(tmp_path):
    unknown = _problems(tmp_path, {"name": "nope"})
    assert "objective.name: unknown objective 'nope'; known objectives: ijepa, lejepa" in unknown
    legacy = _problems(tmp_path, dict(OBJECTIVE), ema={"momentum": 0.9})
    assert "ema: is a setting of the ijepa objective, and this recipe's objective is 'lejepa'; remove it (LeJEPA's optional EMA is objective.teacher)" in legacy
    views = _problems(tmp_path, {**OBJECTIVE, "num_global_views": 1, "num_local_views": 0})
    assert "objective.num_global_views: LeJEPA needs at least 2 views per sample" in views
    # one global view and local views is a valid (if weaker) setting
    parse_recipe({**_raw(tmp_path / "run"), "objective": {**OBJECTIVE, "num_global_views": 1}}, "r.yaml")


def test_init_from_with_predictor_parts_is_refused_in_one_line(zero_runs, tmp_path):
    ijepa = tiny_image_recipe(SEED)
    ijepa.update(run_dir=str(tmp_path / "ijepa"), max_steps=1, engine={"precision": "fp32"})
    ijepa_run = _train(parse_recipe(apply_overrides(ijepa, [f"modality.encoder.embed_dim={WIDTH}"]), "ijepa"))
    refusals = {zero_runs[0]: "holds no predictor, target weights; drop them from init_from.parts",  # a LeJEPA run
                ijepa_run: "this recipe's objective trains no predictor; drop it from init_from.parts"}
    for source, why in refusals.items():
        run = tmp_path / f"from_{source.name}"
        with pytest.raises(ValueError) as info:
            _train(_recipe(run, f"init_from.path={source}"))  # default parts: encoder, predictor, target
        message = str(info.value)
        assert message.startswith("init_from.parts: ") and why in message and "\n" not in message, message
        assert not run.exists(), "nothing may be written after the refusal"

    # the encoder alone is taken: the first loss is the source encoder's with a fresh projector
    recipe = _recipe(tmp_path / "encoder_only", f"init_from.path={zero_runs[0]}", "init_from.parts=[encoder]",
                     "max_steps=1")
    first = _losses(_train(recipe))[0]
    modality, objective = _bind(recipe)
    torch.manual_seed(SEED)  # train()'s initial weights, then the encoder replaced
    model = objective.build_model()
    model.encoder.load_state_dict(load_model_weights(zero_runs[0]).parts["encoder"])
    batch = SyntheticTrainLoader(modality, objective.batch_maker(), seed=SEED, rank=0, world_size=1, micro_batch_size=8,
                                 global_batch_size=8).batch(0)
    with torch.no_grad():
        assert first == pytest.approx(_loss(recipe, _embed(model, modality, batch), step=0), rel=0, abs=ATOL)
    assert abs(first - _losses(zero_runs[0])[0]) > 100 * ATOL, "the fresh run's first loss: init_from changed nothing"
