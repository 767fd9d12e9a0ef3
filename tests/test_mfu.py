"""MFU: the GPU peak table, the measured CPU GEMM peak, and MFU in the training log."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from jepa import mfu


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H200", "bf16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100-SXM4-40GB", "fp32", 19.5), ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40S", "bf16", 362.1), ("NVIDIA A10G", "bf16", 70.0), ("NVIDIA A10", "bf16", 125.0),
    ("Tesla V100-SXM2-32GB", "fp16", 125.0),
])
def test_gpu_peak_table(name, precision, tflops):
    assert mfu.gpu_peak_flops(name, precision) == pytest.approx(tflops * 1e12)


def test_unknown_gpu_has_no_peak_and_no_mfu():
    assert mfu.gpu_peak_flops("Some Future GPU", "bf16") is None
    assert mfu.mfu(1e12, None) is None
    assert mfu.mfu(1e12, 1e12, world_size=4) == pytest.approx(0.25)


def test_cpu_gemm_peak_is_measured():
    peak = mfu.TrainingPeak(torch.device("cpu"), "fp32")
    assert peak.flops_per_s is not None and 1e8 < peak.flops_per_s < 1e14
    assert peak.source == f"measured: cpu fp32 GEMM {peak._gemm.n}^3, fastest so far"
    assert mfu.measure_gemm(size=256, repeats=2)[0] > 0


def test_gemm_side_grows_only_while_a_product_is_quick():
    # a slow dtype (bf16 on most CPUs: < 1 GFLOP/s) must not cost minutes of 2048^3 products at startup
    assert mfu.measure_gemm(size=2048, repeats=1, min_seconds=0.0)[1] == 256
    assert mfu.measure_gemm(size=512, repeats=1, min_seconds=float("inf"))[1] == 512
    assert mfu.measure_gemm(size=100, repeats=1)[1] == 100


def test_training_log_and_bench_report_mfu(toy_recipe, toy_recipe_file, tmp_path):
    import json

    from typer.testing import CliRunner

    from jepa.cli import app
    from jepa.monitor import read_metrics
    from jepa.train import train

    result = train(toy_recipe("run", "max_steps=2", "log.every_steps=1"))
    records = read_metrics(result.run_dir)
    assert len(records) == 2 and all(0 < r["mfu"] and 1e8 < r["flops_per_s"] / r["mfu"] < 1e14 for r in records)

    out_json = tmp_path / "bench.json"
    out = CliRunner().invoke(app, ["bench", "train", str(toy_recipe_file("b")), "--steps", "2", "--warmup", "1",
                                   "--json", str(out_json)])
    assert out.exit_code == 0, out.output
    assert "MFU" in out.output and "measured: cpu fp32 GEMM" in out.output and "between the timed steps" in out.output
    assert "page faults per step" in out.output
    data = json.loads(out_json.read_text())
    # CPU: each timed step over the mean of the GEMMs measured just before and after it; MFU the median ratio
    steps, gemms = data["step_times_s"], data["gemm_flops_per_s"]
    assert len(steps) == 2 and len(gemms) == 3 and data["peak_flops_per_s"] == statistics.median(gemms)
    ratios = [data["flops_per_sample"] * data["global_batch"] / t / ((g0 + g1) / 2)
              for t, g0, g1 in zip(steps, gemms, gemms[1:])]
    assert data["mfu"] == pytest.approx(statistics.median(ratios))
    assert data["step_time_s"] == statistics.median(steps)


def test_training_peak_is_the_fastest_gemm_so_far_on_cpu(monkeypatch):
    # the log's CPU peak is re-timed every interval_s and keeps the fastest product: a start in a busy
    # moment (slow GEMMs) does not hold for the run, and a busy moment later does not raise the MFU
    timings = iter([4.0] * 4 + [1.0, 3.0])  # seconds per product (a warm-up and 3): busy at start, then quiet, busy
    monkeypatch.setattr(mfu._Gemm, "time", lambda self: next(timings))
    peak = mfu.TrainingPeak(torch.device("cpu"), "fp32", interval_s=0.0)
    flops = 2.0 * peak._gemm.n ** 3
    assert peak.flops_per_s == pytest.approx(flops / 4.0)
    assert peak.refresh() >= 0.0 and peak.flops_per_s == pytest.approx(flops / 1.0)
    peak.refresh()
    assert peak.flops_per_s == pytest.approx(flops / 1.0)

    timings = iter([2.0] * 4)
    slow = mfu.TrainingPeak(torch.device("cpu"), "fp32", interval_s=3600.0)
    before = slow.flops_per_s
    assert slow.refresh() == 0.0 and slow.flops_per_s == before  # not due yet: nothing runs


def test_monitor_leaves_the_peak_timing_out_of_the_next_window(toy_recipe, monkeypatch):
    from jepa.train import train

    spent = []

    def refresh(self):  # stands in for a 1 s GEMM that the next window must not be charged for
        t0 = time.perf_counter()
        time.sleep(1.0)  # well above a toy step on a loaded machine (0.3 s was not: CI under load, 2026-12-06)
        spent.append(time.perf_counter() - t0)
        return spent[-1]

    monkeypatch.setattr(mfu.TrainingPeak, "refresh", refresh)
    monkeypatch.setattr(mfu.TrainingPeak, "flops_per_s", property(lambda self: 1e9))
    from jepa.monitor import read_metrics

    result = train(toy_recipe("run", "max_steps=3", "log.every_steps=1"))
    records = read_metrics(result.run_dir)
    assert len(spent) == 3 and all(r["mfu"] == pytest.approx(r["flops_per_s"] / 1e9) for r in records)
    # 1 s left out of each window: a step of the toy model takes far less, so a charged GEMM would show
    assert all(r["step_time_s"] < 1.0 for r in records[1:])
