"""SIGReg and the LeJEPA loss: the statistic against independent float64 computations, its Gaussian
and collapsed values, finite gradients at collapse, the slice directions, the loss terms, and a
2-process gloo run that must equal one process on the concatenated batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from jepa.objectives.lejepa_loss import lejepa_loss
from jepa.objectives.sigreg import epps_pulley, sigreg, slice_directions

T_MAX, NUM_POINTS = 3.0, 17


def reference_weights(num_points: int = NUM_POINTS, t_max: float = T_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Nodes on [0, t_max] and the even-integrand trapezoid weights (dt ends, 2 dt inside), windowed."""
    t = np.linspace(0.0, t_max, num_points)
    dt = t_max / (num_points - 1)
    w = np.full(num_points, 2 * dt)
    w[[0, -1]] = dt
    return t, w * np.exp(-t**2 / 2)


def reference_epps_pulley(x_NM: np.ndarray) -> np.ndarray:
    """The 17-point statistic in float64 with complex exponentials."""
    t, w = reference_weights()
    phi_hat = np.exp(1j * t[None, :, None] * x_NM[:, None, :]).mean(0)  # (T, M)
    return x_NM.shape[0] * (w[:, None] * np.abs(phi_hat - np.exp(-t**2 / 2)[:, None]) ** 2).sum(0)


def dense_epps_pulley(x_NM: np.ndarray, num_points: int = 20001) -> np.ndarray:
    """The same integrand integrated densely over [-3, 3] (trapezoid on ``num_points`` nodes, float64).

    |phi_hat(-t) - g(t)| = |conj(phi_hat(t)) - g(t)|, so the integrand is even and the half grid
    [0, 3] of the symmetric ``num_points`` grid, doubled, is the same trapezoid sum at half the cost.
    """
    t = np.linspace(0.0, T_MAX, (num_points + 1) // 2)
    gauss = np.exp(-t**2 / 2)
    out = []
    for x_N in x_NM.T:  # one direction at a time keeps the (N, nodes) table small
        phi_hat = np.exp(1j * np.outer(x_N, t)).mean(0)
        out.append(2 * np.trapezoid(np.abs(phi_hat - gauss) ** 2 * gauss, t))
    return x_NM.shape[0] * np.array(out)


def non_gaussian_sample(n: int, m: int, seed: int) -> torch.Tensor:
    """Columns with various scales and shifts, so the statistic is far from zero for some."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, m, dtype=torch.float64)
    shift = torch.linspace(-0.5, 0.5, m, dtype=torch.float64)
    return torch.randn(n, m, generator=g, dtype=torch.float64) * scale + shift


# 1. the statistic against independent float64 computations

def test_epps_pulley_matches_complex_float64_reference():
    x = non_gaussian_sample(300, 24, seed=1)
    expected = reference_epps_pulley(x.numpy())
    assert expected.min() < 10 and expected.max() > 100  # both near-Gaussian and clearly off columns
    got64 = epps_pulley(x)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-6)
    # float32 input is computed in float32: measured max relative error 3.6e-7 here (float64: 3e-15)
    got32 = epps_pulley(x.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), expected, rtol=1e-5)


def test_epps_pulley_upcasts_half_precision():
    x = non_gaussian_sample(128, 8, seed=2).to(torch.bfloat16)
    got = epps_pulley(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, epps_pulley(x.float()), rtol=0, atol=0)


def test_17_point_rule_is_close_to_dense_integration():
    # Measured: Gaussian samples (values 0.15-2.6) max |17-point - dense| 5.8e-4, 3.0e-4, 2.9e-4
    # for N = 64, 256, 512; the off-Gaussian columns below (values 4-111) max relative 1.5e-4.
    # The window exp(-t^2/2) makes the integrand smooth and small near t = 3.
    for seed, n in ((3, 64), (4, 256), (5, 512)):
        x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        difference = np.abs(epps_pulley(x).numpy() - dense_epps_pulley(x.numpy())).max()
        assert difference < 2e-3, (n, difference)
    x = non_gaussian_sample(300, 24, seed=1)[:, ::3]
    np.testing.assert_allclose(epps_pulley(x).numpy(), dense_epps_pulley(x.numpy()), rtol=1e-3)


# 2. Gaussian: O(1); collapsed: the closed form, large

def test_gaussian_statistic_is_order_one():
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(6))
    stat = epps_pulley(x)
    # E[N |phi_hat(t) - phi(t)|^2] = 1 - exp(-t^2) for Gaussian samples, whatever N
    t, w = reference_weights()
    expected_mean = float((w * (1 - np.exp(-t**2))).sum())  # ~1.06
    assert abs(stat.mean().item() - expected_mean) < 0.35, (stat.mean().item(), expected_mean)  # measured ~1.04
    assert stat.max().item() < 10
    # through random unit directions of isotropic Gaussian embeddings: same order
    z = torch.randn(512, 32, generator=torch.Generator().manual_seed(7))
    value = sigreg(z, slice_directions(32, 64, seed=0, step=0)).item()
    assert 0.3 < value < 2.5, value


def test_collapsed_batch_equals_closed_form():
    n = 512
    stat = epps_pulley(torch.zeros(n, 64))
    t, w = reference_weights()
    closed_form = n * float((w * (1 - np.exp(-t**2 / 2)) ** 2).sum())  # ~205.85
    np.testing.assert_allclose(stat.double().numpy(), closed_form, rtol=1e-6)
    # for information: the continuous integral over [-3, 3] is ~205.94, over the whole line
    # N sqrt(2 pi) (1 - 2/sqrt(2) + 1/sqrt(3)) ~ 209.37
    line = np.linspace(-T_MAX, T_MAX, 20001)
    continuous = n * np.trapezoid((1 - np.exp(-line**2 / 2)) ** 2 * np.exp(-line**2 / 2), line)
    assert abs(closed_form - continuous) / continuous < 1e-3
    gaussian = epps_pulley(torch.randn(n, 64, generator=torch.Generator().manual_seed(8))).mean()
    assert stat.min() > 100 * gaussian
    # a collapse to any one point (not only 0) along the projection is as bad or worse
    assert (epps_pulley(torch.full((n, 4), 0.8)) >= stat[0] - 1e-3).all()


# 3. finite gradients at collapse

@pytest.mark.parametrize("value", [0.0, 0.7])
def test_gradients_finite_for_identical_rows(value):
    z = torch.full((64, 16), value, requires_grad=True)
    directions = slice_directions(16, 32, seed=1, step=2)
    sigreg(z, directions).backward()
    assert torch.isfinite(z.grad).all()

    views = [torch.full((64, 16), value, requires_grad=True) for _ in range(4)]
    loss, _, _ = lejepa_loss(views, 2, directions, 0.05)
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in views)
    if value != 0.0:  # SIGReg pushes a collapsed batch away from its point
        assert views[0].grad.abs().sum() > 0


# 4. slice directions

def test_slice_directions():
    a = slice_directions(48, 100, seed=3, step=7)
    assert a.shape == (48, 100) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=0), torch.ones(100))
    torch.testing.assert_close(a, slice_directions(48, 100, seed=3, step=7), rtol=0, atol=0)
    assert not torch.allclose(a, slice_directions(48, 100, seed=3, step=8))
    assert not torch.allclose(a, slice_directions(48, 100, seed=4, step=7))
    # the seed must count even when it differs only above 32 bits of a packed (seed, step)
    assert not torch.allclose(a, slice_directions(48, 100, seed=3 + 2**32, step=7))
    b = slice_directions(48, 100, seed=3, step=7, dtype=torch.float64)
    assert b.dtype == torch.float64
    torch.testing.assert_close(b.float(), a)


# 5. the LeJEPA loss

def _views(num_views: int = 5, batch: int = 40, dim: int = 12, seed: int = 9) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, dim, generator=g) * (1 + v) + v).requires_grad_(True) for v in range(num_views)]


def test_lejepa_loss_terms():
    views, lam = _views(), 0.3
    directions = slice_directions(12, 16, seed=0, step=1)
    loss, pred, sig = lejepa_loss(views, 2, directions, lam)
    grads = torch.autograd.grad(loss, views)

    mu = (views[0] + views[1]) / 2  # no stop-gradient
    direct_pred = sum(((mu - z) ** 2).mean() for z in views) / len(views)
    direct_sig = sum(sigreg(z, directions) for z in views) / len(views)
    direct_loss = (1 - lam) * direct_pred + lam * direct_sig
    torch.testing.assert_close(pred, direct_pred)
    torch.testing.assert_close(sig, direct_sig)
    torch.testing.assert_close(loss, (1 - lam) * pred + lam * sig)
    for got, expected in zip(grads, torch.autograd.grad(direct_loss, views)):
        torch.testing.assert_close(got, expected)


def test_lejepa_loss_uses_given_centre():
    views = _views()
    directions = slice_directions(12, 16, seed=0, step=1)
    centre = torch.randn(40, 12, generator=torch.Generator().manual_seed(10))
    _, pred, sig = lejepa_loss(views, 2, directions, 0.5, centre_BK=centre)
    torch.testing.assert_close(pred, sum(((centre - z) ** 2).mean() for z in views) / len(views))
    _, pred_own, sig_own = lejepa_loss(views, 2, directions, 0.5)
    assert not torch.isclose(pred, pred_own)
    torch.testing.assert_close(sig, sig_own)


def test_lejepa_loss_rejects_bad_inputs():
    views = _views(num_views=3)
    directions = slice_directions(12, 4, seed=0, step=0)
    with pytest.raises(ValueError, match="num_global"):
        lejepa_loss(views, 4, directions, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        lejepa_loss([views[0], views[1][:-1]], 1, directions, 0.1)
    with pytest.raises(ValueError, match="directions_KM"):
        lejepa_loss(views, 2, slice_directions(11, 4, seed=0, step=0), 0.1)
    with pytest.raises(ValueError, match="num_points"):
        epps_pulley(torch.zeros(4, 2), num_points=1)


# 6. two gloo processes equal one process on the concatenated batch

WORLD, NUM_VIEWS, NUM_GLOBAL, BATCH, IN_DIM, DIM, NUM_SLICES, LAM = 2, 4, 2, 24, 10, 8, 32, 0.2


def _fixed_batch() -> torch.Tensor:
    """(V, B, D) inputs: the views of a fixed batch."""
    return torch.randn(NUM_VIEWS, BATCH, IN_DIM, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def _projector() -> nn.Linear:
    torch.manual_seed(12)  # the same initialisation on every rank
    return nn.Linear(IN_DIM, DIM).double()


def _run(x_VBD: torch.Tensor, group) -> dict[str, torch.Tensor]:
    projector = _projector()
    directions = slice_directions(DIM, NUM_SLICES, seed=5, step=3, dtype=torch.float64)
    loss, pred, sig = lejepa_loss([projector(x) for x in x_VBD], NUM_GLOBAL, directions, LAM, group=group)
    loss.backward()
    out = {"loss": loss.detach(), "pred": pred.detach(), "sig": sig.detach()}
    out.update({f"grad.{name}": p.grad.clone() for name, p in projector.named_parameters()})
    return out


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        half = BATCH // WORLD
        x_VBD = _fixed_batch()[:, rank * half:(rank + 1) * half]
        out = _run(x_VBD, dist.group.WORLD)
        for key in [k for k in out if k.startswith("grad.")]:  # average as data-parallel engines do
            dist.all_reduce(out[key], op=dist.ReduceOp.SUM)
            out[key] /= WORLD
        with torch.no_grad():  # the local-only SIGReg, to show the all-reduce matters
            projector = _projector()
            directions = slice_directions(DIM, NUM_SLICES, seed=5, step=3, dtype=torch.float64)
            out["sig_local"] = lejepa_loss([projector(x) for x in x_VBD], NUM_GLOBAL, directions, LAM)[2]
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = _run(_fixed_batch(), None)

    # SIGReg is the global batch's on every rank; the prediction term is each rank's own mean
    for r in ranks:
        torch.testing.assert_close(r["sig"], single["sig"], rtol=1e-6, atol=1e-9)
        assert abs(r["sig_local"] - single["sig"]) > 1e-3
    torch.testing.assert_close(sum(r["pred"] for r in ranks) / WORLD, single["pred"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, single["loss"], rtol=1e-6, atol=1e-9)
    grad_keys = [k for k in single if k.startswith("grad.")]
    for r in ranks:
        for key in grad_keys:
            torch.testing.assert_close(r[key], single[key], rtol=1e-6, atol=1e-9)
