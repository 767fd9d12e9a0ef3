"""LeJEPA (Balestriero & LeCun, arXiv 2511.08544): views of a sample predict their global views'
centre, and SIGReg keeps the embeddings an isotropic Gaussian; no EMA teacher, stop-gradient or
predictor is needed against collapse (docs/method/lejepa.md, "Overview").

Per micro batch: the modality draws Vg global and Vl local views of every sample
(``Modality.train_views``); the encoder encodes each shape group of views in one call, its tokens
are mean-pooled and projected to K dimensions (:class:`~jepa.objectives.projector.Projector`), and
the loss is ``(1 - lam) * prediction + lam * SIGReg`` (:mod:`jepa.objectives.lejepa_loss`,
:mod:`jepa.objectives.sigreg`): SIGReg's M directions are drawn afresh every step from the run
seed and the step (every rank draws the same) and, under data parallelism, its empirical
characteristic function is averaged over every rank's rows (so the statistic is the one of the
global batch). Optionally an EMA copy of encoder and projector (``teacher:``) gives the global
views' centre instead of the online model (the paper's ViT ablation: 81.1 -> 84.1 %).

Checkpoint parts: ``encoder`` and ``projector`` (trained); with a teacher also ``target_encoder``
and ``target_projector``. Evaluation reads the teacher's encoder when there is one, else the
online encoder. Recipe section::

    objective: {name: lejepa, num_global_views: 2, num_local_views: 6, lam: 0.05, num_slices: 1024,
                projector: {hidden_dim: 2048, out_dim: 64}}
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from jepa.config import ObjectiveConfig, StrictModel
from jepa.data.loader import Batch
from jepa.interfaces import Encoder, Modality, ViewSpec
from jepa.nn.memory import FP32, ActivationBytes, encoder_activation_bytes
from jepa.objective import BatchMaker, LossOutput, Objective
from jepa.objectives.lejepa_loss import lejepa_loss
from jepa.objectives.projector import Projector
from jepa.objectives.sigreg import slice_directions
from jepa.target import EMATargetUpdater


class ProjectorConfig(StrictModel):
    """The MLP from pooled encoder features to the embedding SIGReg shapes."""

    hidden_dim: int = Field(2048, gt=0, le=65_536, description="Width of the hidden layers (paper: 2048; at most 65536: "
                            "the projector's weights grow with its square)")
    out_dim: int = Field(64, gt=0, le=65_536, description="Embedding width K (paper: smaller is better, 64 beat 1024; at "
                         "most 65536: SIGReg projects every view's K values on every slice each step)")
    num_layers: int = Field(3, ge=2, le=8, description="Linear layers in all (paper: one-layer projectors are much worse)")


class TeacherConfig(StrictModel):
    """An EMA copy of encoder and projector that gives the global views' centre."""

    momentum: float = Field(0.996, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)


class LeJEPAConfig(ObjectiveConfig):
    """LeJEPA: multi-view prediction of the global views' centre plus SIGReg."""

    name: Literal["lejepa"] = "lejepa"
    num_global_views: int = Field(2, ge=1, le=16, description="Vg global views per sample (paper: 2; Vg >= 2 matters)")
    num_local_views: int = Field(6, ge=0, le=64, description="Vl local (small) views per sample (paper: 6)")
    lam: float = Field(0.05, gt=0, lt=1, description="SIGReg's weight lambda: loss = (1 - lam) * prediction + lam * SIGReg "
                       "(paper: 0.05; the best value grows with the number of views)")
    num_slices: int = Field(1024, ge=1, le=65536, description="M random directions SIGReg tests, redrawn every step (paper: 1024)")
    num_points: int = Field(17, ge=3, le=1025, description="Points of the trapezoid rule of the Epps-Pulley integral")
    t_max: float = Field(3.0, gt=0, le=20, description="The integral runs over t in [-t_max, t_max]")
    projector: ProjectorConfig = ProjectorConfig()
    teacher: TeacherConfig | None = Field(None, description="An EMA teacher for the global views' centre (None: the online model)")


class ViewBatches(BatchMaker):
    """``spec.num_views`` augmented views of every item (``modality.train_views``)."""

    def __init__(self, modality: Modality, spec: ViewSpec):
        self.modality, self.spec = modality, spec

    def from_items(self, items: list[Any], generator: torch.Generator, step_generator: torch.Generator) -> Any:
        views = self.modality.train_views(items, generator, self.spec)
        if len(views) != self.spec.num_views:
            raise RuntimeError(f"modality {self.modality.name!r}: train_views returned {len(views)} views, "
                               f"{self.spec.num_views} asked")
        return Batch(views[0], (), tuple(views[1:]))

    def from_inputs(self, inputs: Tensor, generator: torch.Generator, step_generator: torch.Generator) -> Any:
        more = tuple(self.modality.example_input(inputs.shape[0], generator) for _ in range(self.spec.num_views - 1))
        return Batch(inputs, (), more)


def embed_views(encoder: nn.Module, projector: nn.Module, views: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Embed every view: consecutive views of one shape go through the encoder in one call.

    Args:
        views: V tensors (B, ...) (global views first, then local ones).

    Returns:
        ``(z, tokens)``: V embeddings (B, K), and the encoder tokens (B, N, D) of the first view.
    """
    z_views: list[Tensor] = []
    first_tokens: Tensor | None = None
    i = 0
    while i < len(views):
        j = i + 1
        while j < len(views) and views[j].shape == views[i].shape:
            j += 1
        tokens = encoder(torch.cat(views[i:j]))
        if first_tokens is None:
            first_tokens = tokens[: views[0].shape[0]]
        z_views += list(projector(tokens.mean(dim=1)).chunk(j - i))
        i = j
    assert first_tokens is not None
    return z_views, first_tokens


class LeJEPAModel(nn.Module):
    """The trained module: encoder + projector. ``forward(views)`` -> :func:`embed_views`."""

    def __init__(self, encoder: Encoder, projector: Projector):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, views: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        return embed_views(self.encoder, self.projector, views)


class LeJEPAObjective(Objective):
    name = "lejepa"
    config_model = LeJEPAConfig
    eval_part = "encoder"
    unused_modality_sections = ("mask", "predictor")
    cfg: LeJEPAConfig

    def __init__(self, cfg: LeJEPAConfig, modality: Modality, *, total_steps: int = 1, seed: int = 0):
        super().__init__(cfg, modality, total_steps=total_steps, seed=seed)
        t = cfg.teacher
        self.updater = EMATargetUpdater(t.momentum, t.final_momentum, total_steps) if t is not None else None
        if t is not None:
            self.eval_part = "target_encoder"

    @property
    def view_spec(self) -> ViewSpec:
        return ViewSpec(self.cfg.num_global_views, self.cfg.num_local_views)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.view_spec.num_views < 2:
            problems.append(("num_global_views", "LeJEPA needs at least 2 views per sample (the prediction term pulls "
                             "views together); set num_global_views: 2 (the paper's) or add local views"))
        t = self.cfg.teacher
        if t is not None and t.final_momentum < t.momentum:
            problems.append(("teacher.final_momentum", f"must be >= teacher.momentum={t.momentum} (got {t.final_momentum})"))
        return problems

    def describe(self) -> str:
        c = self.cfg
        return (f"lejepa ({c.num_global_views}+{c.num_local_views} views, lambda {c.lam}, {c.num_slices} slices, "
                f"projector {c.projector.hidden_dim}->{c.projector.out_dim}{', EMA teacher' if c.teacher else ''})")

    def batch_maker(self) -> ViewBatches:
        return ViewBatches(self.modality, self.view_spec)

    def build_model(self) -> LeJEPAModel:
        encoder = self.modality.build_encoder()
        p = self.cfg.projector
        return LeJEPAModel(encoder, Projector(encoder.embed_dim, p.hidden_dim, p.out_dim, p.num_layers))

    def build_frozen(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.cfg.teacher is None:
            return {}
        # the teacher's BatchNorm keeps batch statistics (train mode); it never gets gradients
        return {"target_encoder": copy.deepcopy(model.encoder).requires_grad_(False),
                "target_projector": copy.deepcopy(model.projector).requires_grad_(False)}

    def loss(self, engine: Any, batch: Any, step: int) -> LossOutput:
        views = [self.modality.finish_batch(v) for v in batch.views]
        c = self.cfg
        group = dist.group.WORLD if engine.dist.world_size > 1 else None
        with engine.autocast():
            z_views, tokens = engine.forward(views)
            centre = None
            if c.teacher is not None:
                with torch.no_grad():
                    z_teacher, _ = embed_views(engine.frozen["target_encoder"], engine.frozen["target_projector"],
                                               views[:c.num_global_views])
                    centre = torch.stack([z.float() for z in z_teacher]).mean(0)
        directions = slice_directions(c.projector.out_dim, c.num_slices, seed=self.seed, step=step, device=tokens.device)
        loss, pred, sig = lejepa_loss([z.float() for z in z_views], c.num_global_views, directions, c.lam,
                                      centre_BK=centre, num_points=c.num_points, t_max=c.t_max, group=group)
        return LossOutput(loss=loss, representations=tokens.detach(), terms={"pred_loss": pred.detach(), "sigreg": sig.detach()})

    def activation_bytes_per_sample(self, micro_batch: int, *, act_bytes: int, checkpointing: bool) -> ActivationBytes:
        """Every view through the whole encoder (:func:`~jepa.nn.memory.encoder_activation_bytes` at
        :meth:`Modality.view_shapes <jepa.interfaces.Modality.view_shapes>`), the projector and
        SIGReg's projections (an (M x T) float32 table per view, kept for the cos/sin backward).
        The teacher, when there is one, runs without gradients and keeps nothing."""
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            encoder = self.modality.build_encoder()
        p, c = self.cfg.projector, self.cfg
        saved = peak = 0.0
        for shape in self.modality.view_shapes(self.view_spec):
            view = encoder_activation_bytes(encoder, shape, act_bytes=act_bytes, checkpointing=checkpointing)
            saved, peak = saved + view.saved, max(peak, view.recompute_peak)
        per_view = (act_bytes * encoder.embed_dim                                       # first Linear's input
                    + (p.num_layers - 1) * (FP32 * p.hidden_dim + 8 + 2 * act_bytes * p.hidden_dim)  # BN input, stats, ReLU
                    + FP32 * c.num_points * c.num_slices)                                # SIGReg's t * x table
        return ActivationBytes(saved + self.view_spec.num_views * per_view, peak)

    def after_step(self, engine: Any, step: int) -> dict[str, float]:
        if self.updater is None:
            return {}
        momentum = self.updater.momentum(step)
        if momentum < 1.0:
            online = [*engine.module.encoder.parameters(), *engine.module.projector.parameters()]
            with engine.gathered(online):
                target = [*engine.frozen["target_encoder"].parameters(), *engine.frozen["target_projector"].parameters()]
                self.updater.update(target, online, step)
        return {"ema_momentum": momentum}

    def train_flops_per_sample(self, micro_batch_size: int | None = None, batch: Any = None) -> float | None:
        """Forward + backward (3 x forward) FLOPs per sample of encoder and projector over every
        view, counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a ``meta`` model
        (the views' shapes from ``batch``; None without one)."""
        if batch is None:
            return None
        shapes = [tuple(v.shape[1:]) for v in batch.views]
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = self.build_model()
        views = [torch.empty((2, *s), device="meta") for s in shapes]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(views)
        return 3.0 * counter.get_total_flops() / 2
