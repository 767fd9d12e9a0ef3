"""Model-FLOP utilisation (MFU): achieved training FLOP/s over the device's peak.

The FLOPs of a step come from the modality (``Modality.train_flops_per_sample``, counting rules
in ``docs/flops.md``); this module supplies the other half, the peak:

* on a GPU, the vendor's dense (no sparsity) peak for the precision the matmuls run in, from
  :data:`GPU_PEAK_TFLOPS`, keyed by a substring of ``torch.cuda.get_device_name()``;
* on the CPU, a square GEMM (``torch.mm``) timed in the same process, because a CPU's peak
  depends on its cores, clocks and on who else is using them (the median of a few repeats).

``mfu = samples/s x FLOPs per sample / (world size x peak per device)``.
"""

from __future__ import annotations

import inspect
import statistics
import time

import torch

from jepa.interfaces import MaskSampler, Modality, as_mask_pairs

#: Dense peak TFLOP/s per GPU: (bf16/fp16 tensor cores, fp32 without tensor cores). First match of
#: the lower-cased substring in the device name wins, so the more specific names come first.
#: Sources: NVIDIA data sheets (SXM parts unless named; numbers without sparsity).
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("gb200", 2500.0, 80.0),
    ("b200", 2250.0, 80.0),
    ("h200", 989.4, 66.9),          # H200 SXM (also matches GH200: same H100-class die and clocks)
    ("h100 pcie", 756.0, 51.2),
    ("h100 nvl", 835.0, 60.0),
    ("h100", 989.4, 66.9),          # H100 SXM / HBM3
    ("h800", 989.4, 66.9),
    ("a100", 312.0, 19.5),          # A100 SXM and PCIe (same dense peak)
    ("a800", 312.0, 19.5),
    ("l40s", 362.1, 91.6),
    ("l40", 181.0, 90.5),
    ("l4", 121.0, 30.3),
    ("a10g", 70.0, 31.2),           # AWS A10G
    ("a10", 125.0, 31.2),
    ("a40", 149.7, 37.4),
    ("a6000", 154.8, 38.7),         # RTX A6000
    ("v100", 125.0, 15.7),          # no bf16: the fp16 tensor-core peak (V100 SXM2)
    ("t4", 65.0, 8.1),              # no bf16: fp16 tensor-core peak
)

CPU_GEMM_SIZE = 2048
"""Side of the square matrices of the CPU peak GEMM (2 x 2048^3 = 17.2 GFLOP per product)."""
GEMM_MIN_SECONDS = 0.05
"""A GEMM side stops doubling once one product takes this long (see :class:`_Gemm`)."""
CPU_PEAK_INTERVAL_S = 30.0
"""Seconds between two re-timings of the training log's CPU peak (:class:`TrainingPeak`)."""


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a GPU for the engine precision, or None for a GPU not in the table.

    Args:
        device_name: as ``torch.cuda.get_device_name()`` reports it, e.g. ``"NVIDIA H100 80GB HBM3"``.
        precision: ``bf16`` / ``fp16`` (tensor cores) or ``fp32`` (no TF32).
    """
    name = device_name.lower()
    for key, half, single in GPU_PEAK_TFLOPS:
        if key in name:
            return 1e12 * (single if precision == "fp32" else half)
    return None


class _Gemm:
    """Operands of an ``n``-square ``torch.mm`` on a device, and the timing of one product.

    ``n`` starts at 256 and doubles up to ``size`` while one product takes less than
    ``min_seconds``, so a slow dtype (bf16 on a CPU without bf16 instructions runs at well under
    1 GFLOP/s) costs about a second instead of minutes. The product that probes the size is the warm-up.
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype, size: int, min_seconds: float):
        self.device = torch.device(device)
        g = torch.Generator(device="cpu").manual_seed(0)
        self.n = min(256, size)
        while True:
            self._a = torch.randn(self.n, self.n, generator=g).to(self.device, dtype)
            self._b = torch.randn(self.n, self.n, generator=g).to(self.device, dtype)
            self._out = torch.empty(self.n, self.n, device=self.device, dtype=dtype)
            first = self.time()
            if self.n * 2 > size or first >= min_seconds:
                break
            self.n *= 2
        self.flops = 2.0 * self.n ** 3

    def time(self) -> float:
        """Seconds of one product (synchronised on a GPU)."""
        t0 = time.perf_counter()
        torch.mm(self._a, self._b, out=self._out)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def measure_gemm(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 size: int = CPU_GEMM_SIZE, repeats: int = 3, min_seconds: float = GEMM_MIN_SECONDS) -> tuple[float, int]:
    """``(FLOP/s, n)`` of ``n``-square ``torch.mm`` on ``device``: the median of ``repeats`` timed
    products after one warm-up product (``2 n^3`` FLOPs each; ``n`` as in :class:`_Gemm`)."""
    gemm = _Gemm(device, dtype, size, min_seconds)
    return gemm.flops / statistics.median(gemm.time() for _ in range(repeats)), gemm.n


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in for an engine precision (autocast for bf16 / fp16)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class TrainingPeak:
    """The peak FLOP/s of one device behind the training log's ``mfu``.

    GPU: the table's number (:func:`gpu_peak_flops`), fixed. CPU: the fastest timing so far of the
    GEMM of :func:`measure_gemm`: three products at start, then one more whenever :meth:`refresh` is
    called at least ``interval_s`` after the last. A GEMM timed while other processes load the
    cores runs slow, so the fastest one is the machine's capacity, and the log's MFU reads as the
    share of it the run got (a neighbour's load lowers it). A peak timed once at start, in a busy
    moment, had made the demo's log print MFU above 120 % for the whole run.

    Args:
        device: where the run trains.
        precision: the engine precision (the GEMM's dtype on CPU, the table column on GPU).
        interval_s: seconds between two CPU timings (each costs one product, about 0.1-0.5 s at 2048^3).

    Attributes:
        source: where the number comes from, e.g. ``"table: NVIDIA H100 80GB HBM3 bf16"`` or
            ``"measured: cpu fp32 GEMM 2048^3, fastest so far"``.
    """

    def __init__(self, device: torch.device, precision: str, *, interval_s: float = CPU_PEAK_INTERVAL_S):
        self.interval_s = interval_s
        self._gemm: _Gemm | None = None
        self._fixed: float | None = None
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            self._fixed, self.source = gpu_peak_flops(name, precision), f"table: {name} {precision}"
            return
        self._gemm = _Gemm(device, compute_dtype(precision), CPU_GEMM_SIZE, GEMM_MIN_SECONDS)
        self.source = f"measured: {device.type} {precision} GEMM {self._gemm.n}^3, fastest so far"
        self._fastest = min(self._gemm.time() for _ in range(3))
        self._last = time.perf_counter()

    @property
    def flops_per_s(self) -> float | None:
        """The current peak, or None for a GPU missing from the table."""
        if self._gemm is None:
            return self._fixed
        return self._gemm.flops / self._fastest

    def refresh(self) -> float:
        """On CPU, time one more product if ``interval_s`` has passed since the last; returns the
        seconds spent (0.0 when nothing ran), for the caller to leave out of its own timings."""
        if self._gemm is None or time.perf_counter() - self._last < self.interval_s:
            return 0.0
        t0 = time.perf_counter()
        self._fastest = min(self._fastest, self._gemm.time())
        self._last = time.perf_counter()
        return self._last - t0


def mfu(flops_per_s: float, peak_per_device: float | None, world_size: int = 1) -> float | None:
    """Achieved FLOP/s (all ranks) over the peak of ``world_size`` devices; None when the peak is unknown."""
    if not peak_per_device:
        return None
    return flops_per_s / (peak_per_device * world_size)


def collated_mask_tokens(sampler: "MaskSampler", batch_size: int, num_batches: int = 8,
                         seed: int = 0) -> list[tuple[float, float]]:
    """Mean context tokens K and tokens per target block T that actually run, per mask pair.

    Samplers collate the context to one length per batch (I-JEPA's faithful mode: the batch
    minimum), so the tokens that run depend on the batch size; this draws ``num_batches``
    batches from a fixed seed and averages.

    Returns:
        ``[(K, T), ...]``, one per (context, target) pair of the sampler.
    """
    g = torch.Generator().manual_seed(seed)
    sums: list[list[float]] | None = None
    for _ in range(num_batches):
        pairs = as_mask_pairs(sampler(batch_size, g))
        if sums is None:
            sums = [[0.0, 0.0] for _ in pairs]
        for acc, m in zip(sums, pairs):
            acc[0] += m.context_idx_BK.shape[1]
            acc[1] += m.target_idx_BMT.shape[2]
    assert sums is not None
    return [(k / num_batches, t / num_batches) for k, t in sums]


def flops_per_sample(modality: "Modality", micro_batch_size: int | None = None) -> float | None:
    """The modality's training FLOPs per sample, counted on the tokens that run at this micro batch
    when the modality can (its ``train_flops_per_sample`` takes ``batch_size``), else its expectation."""
    fn = modality.train_flops_per_sample
    if micro_batch_size is not None and "batch_size" in inspect.signature(fn).parameters:
        return fn(batch_size=micro_batch_size)  # type: ignore[call-arg]
    return fn()
