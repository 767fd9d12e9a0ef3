"""Time the multi-block mask sampler and its feasibility check on CPU.

Usage: python tools/bench_masks.py [--batch 128] [--iters 300] [--threads 1]

Data-loader workers run with one intra-op thread (PyTorch sets it in each worker), so the default
``--threads 1`` is the number that matters for training throughput. Prints, per mode and grid,
the median and 90th-percentile milliseconds per batch, the mean collated context length K and the
mean un-collated context length (what a single image would see), and the check's time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jepa.modalities.image.config import MaskConfig
from jepa.modalities.image.masks import MultiBlockMaskSampler, check_mask_feasibility


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave the default)")
    parser.add_argument("--grids", type=int, nargs="+", default=[14, 16])
    parser.add_argument("--min-keep", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, {args.iters} iterations")
    print(f"{'mode':<9} {'grid':>5} {'ms/batch p50':>13} {'p90':>7} {'mean K':>7} {'single':>7} {'check ms':>9}")
    for mode in ("faithful", "fixed"):
        for grid in args.grids:
            cfg = MaskConfig(mode=mode, min_keep=args.min_keep)
            sampler = MultiBlockMaskSampler(grid, cfg)
            gen = torch.Generator().manual_seed(0)
            for _ in range(10):  # warm-up
                sampler(args.batch, gen)
            times, k, single = [], 0.0, 0.0
            for _ in range(args.iters):
                start = time.perf_counter()
                full, targets = sampler.sample_blocks(args.batch, gen)
                context = sampler.collate_context(full, gen)
                times.append(time.perf_counter() - start)
                k += context.shape[1]
                single += float(full.sum(1).double().mean())
            check_times = []
            for _ in range(5):
                start = time.perf_counter()
                check_mask_feasibility(grid, cfg)
                check_times.append(time.perf_counter() - start)
            times.sort()
            print(f"{mode:<9} {f'{grid}x{grid}':>5} {1e3 * statistics.median(times):>13.2f} "
                  f"{1e3 * times[int(0.9 * len(times))]:>7.2f} {k / args.iters:>7.1f} {single / args.iters:>7.1f} "
                  f"{1e3 * statistics.median(check_times):>9.1f}")


if __name__ == "__main__":
    main()
