"""The protocol registry of ``jepa eval``: every protocol declared once with a fixed seed salt, a
protocol added in a test runs through the evaluator untouched, and the probes' augmentation comes
from the modality (``Modality.eval_augment``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from jepa.eval.context import EvalRun, PlanInput
from jepa.eval.evaluate import EvalSettings, evaluate
from jepa.eval.features import FeatureSpec
from jepa.eval.memory import Need
from jepa.eval.probes import topk_accuracy
from jepa.eval.protocols import PROTOCOLS, GridProbe, Outcome, Protocol, register
from jepa.eval.synthetic import SyntheticData, TokenEncoder
from jepa.sources import EncoderSource

SALTS = {"linear": 0, "linear4": 1, "attentive": 2, "knn": 3, "logreg": 4, "logreg4": 5}
"""Fixed forever: the protocols' positions in the protocol tuple of report version 2, so the numbers of
every built-in protocol are those it gave before the registry existed."""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _source(tokens: int = 4, dim: int = 16) -> EncoderSource:
    return EncoderSource(TokenEncoder(16, tokens, dim).eval(), None, "random", "token encoder", "target",  # type: ignore[arg-type]
                         "synthetic")


def _splits(n_train: int = 200, n_val: int = 60, classes: int = 4):
    return (SyntheticData(n_train, classes, noise=0.5, seed=1), SyntheticData(n_val, classes, noise=0.5, seed=2))


def test_every_builtin_is_declared_once_with_its_fixed_seed_salt():
    assert {name: p.seed_salt for name, p in PROTOCOLS.items()} == SALTS
    assert all(name == p.name for name, p in PROTOCOLS.items())
    reads = {name: (p.features.kind, p.features.num_layers) for name, p in PROTOCOLS.items()}
    assert reads == {"linear": ("pooled", 1), "linear4": ("pooled", 4), "attentive": ("tokens", 1),
                     "knn": ("pooled", 1), "logreg": ("pooled", 1), "logreg4": ("pooled", 4)}
    settings = EvalSettings(protocols=tuple(PROTOCOLS), device="cpu")
    for p in PROTOCOLS.values():  # a protocol chooses among heads exactly when it trains epochs
        assert (p.grid(settings) is None) == (p.default_epochs is None), p.name
        assert p.help, p.name
    assert {p.name: p.default_epochs for p in PROTOCOLS.values() if p.default_epochs} == \
        {"linear": 100, "linear4": 100, "attentive": 20}
    from jepa.data import derive_seed

    assert [PROTOCOLS[n].seed(EvalSettings(seed=7, device="cpu")) for n in SALTS] == \
        [derive_seed(7, s) for s in SALTS.values()]


def test_a_name_or_salt_registered_twice_is_refused():
    with pytest.raises(ValueError, match="'knn' is registered twice"):
        register(PROTOCOLS["knn"])
    with pytest.raises(ValueError, match="seed salt 2 is taken by 'attentive'"):
        register(_Centroid("centroid2", seed_salt=2, features=FeatureSpec("pooled", 1)))
    assert "centroid2" not in PROTOCOLS


def test_seeds_do_not_depend_on_the_requested_order():
    """A protocol's numbers are its own: run alone or after others, in any order, they are equal."""
    grids = dict(linear_lrs=(1e-2, 1e-1), linear_wds=(0.0,), attentive_lrs=(1e-3,), attentive_wds=(0.0, 1e-2))
    results = {}
    for order in (("linear", "attentive"), ("attentive", "knn", "linear")):
        report = evaluate(_source(), *_splits(), EvalSettings(protocols=order, epochs=2, batch_size=32, device="cpu",
                                                              **grids))
        results[order] = {r.protocol: (r.top1, r.grid) for r in report.results}
    first, second = results.values()
    assert first["linear"] == second["linear"] and first["attentive"] == second["attentive"]


@dataclass(frozen=True)
class _Centroid(Protocol):
    """Nearest class mean (cosine) on the stored pooled last layer: a protocol from outside the package."""

    def stores_pooled(self, settings: EvalSettings) -> bool:
        return True

    def needs(self, plan: PlanInput) -> list[Need]:
        return [Need(self.name, "host memory", [("class means", plan.num_classes * plan.shapes.dim * 4)], "none")]

    def run(self, run: EvalRun) -> Outcome:
        assert run.store_train is not None and run.store_val is not None
        cols = run.pooled_columns(self.features)
        train_idx = (run.splits.eligible & run.store_train.filled_N).nonzero().flatten()
        val_idx = run.store_val.filled_N.nonzero().flatten()
        feats, labels = run.store_train.rows(train_idx, cols), run.train_labels[train_idx]
        means = torch.zeros(run.num_classes, feats.shape[1]).index_add_(0, labels, feats)
        scores = F.normalize(run.store_val.rows(val_idx, cols), dim=1) @ F.normalize(means, dim=1).T
        return Outcome(topk_accuracy(scores, run.val_labels[val_idx], run.ks), int(train_idx.numel()),
                       {"classes": run.num_classes})


@pytest.fixture
def centroid():
    protocol = register(_Centroid("centroid", seed_salt=100, features=FeatureSpec("pooled", 1), help="class means"))
    yield protocol
    del PROTOCOLS["centroid"]


def test_a_protocol_added_in_a_test_runs_through_the_evaluator(centroid):
    report = evaluate(_source(), *_splits(), EvalSettings(protocols=("centroid", "knn"), device="cpu"))
    assert [r.protocol for r in report.results] == ["centroid", "knn"]
    result = report.results[0]
    assert result.top1 > 0.9 and result.num_train == 200 and result.settings == {"classes": 4}
    assert any(n["what"] == "centroid" for n in report.memory_plan)
    assert any(n["what"] == "stored pooled features" for n in report.memory_plan)


def test_unknown_protocols_list_the_registered_ones(centroid):
    with pytest.raises(ValueError, match="unknown 'nope'; choose from linear, linear4, .*, centroid"):
        EvalSettings(protocols=("nope",), device="cpu")


def test_a_grid_protocol_needs_only_its_heads():
    """A grid protocol subclass supplies its heads; training, choice and report come from :class:`GridProbe`."""
    from jepa.eval.heads import LinearGrid

    @dataclass(frozen=True)
    class PooledLinearCopy(GridProbe):
        def grid(self, settings):
            return settings.linear_grid

        def heads(self, run, generator):
            return LinearGrid(len(run.settings.linear_grid), run.shapes.dim, run.num_classes), {}

    protocol = register(PooledLinearCopy("pooled-linear-copy", seed_salt=101, features=FeatureSpec("pooled", 1),
                                        default_epochs=3))
    try:
        grids = dict(linear_lrs=(1e-2, 1e-1), linear_wds=(0.0,), batch_size=32, device="cpu")
        ours = evaluate(_source(), *_splits(), EvalSettings(protocols=(protocol.name,), **grids)).results[0]
        linear = evaluate(_source(), *_splits(), EvalSettings(protocols=("linear",), epochs=3, **grids)).results[0]
    finally:
        del PROTOCOLS[protocol.name]
    assert ours.settings["epochs"] == 3 and len(ours.grid) == 2
    assert ours.top1 > 0.9 and linear.top1 > 0.9  # its own salt: other draws than linear's, both learn


# --------------------------------------------------------------------------- the modality's augmentation


def test_image_and_video_flip_the_width_of_a_random_half():
    from jepa.modalities.image import ImageModality
    from jepa.modalities.video import VideoModality

    for modality, shape in ((ImageModality(), (16, 3, 8, 6)), (VideoModality(), (16, 3, 4, 8, 6))):
        x = torch.randn(shape)
        out = modality.eval_augment(x.clone(), torch.Generator().manual_seed(3))
        flip = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5  # the draws of report version 2
        assert 0 < flip.sum() < 16
        assert torch.equal(out[flip], x[flip].flip(-1)) and torch.equal(out[~flip], x[~flip])


def test_a_modality_without_an_eval_augmentation_keeps_the_batch_and_flip_is_refused():
    from toy_modality import ToyModality

    toy = ToyModality()
    x = torch.randn(4, 4, 32)
    assert toy.eval_augment(x, torch.Generator()) is x
    train, val = _splits()
    train.modality = toy
    with pytest.raises(ValueError, match="--augment flip: modality 'toy' defines no evaluation augmentation"):
        evaluate(_source(), train, val, EvalSettings(protocols=("linear",), augment="flip", device="cpu"))
