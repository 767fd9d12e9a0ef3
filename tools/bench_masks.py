"""Measure the multi-block mask sampler on CPU: its speed, what the paper recipes' masks hold on any
number of GPUs, the `fixed` mode's context per image, and the step-time cost of its padding.

Usage:
    python tools/bench_masks.py [--batch 128] [--iters 300] [--threads 1]   # sampler speed per mode and grid
    python tools/bench_masks.py --recipes [--steps 100]                      # paper recipes at 1, 2, 16 GPUs vs the authors
    python tools/bench_masks.py --fixed [--batches 400]                      # fixed mode: context per image at batch 16 / 128
    python tools/bench_masks.py --padding-cost [--repeats 15]                # step time: padded vs cut contexts

Data-loader workers run with one intra-op thread (PyTorch sets it in each worker), so the default
``--threads 1`` is the number that matters for the sampler's throughput.

``--recipes``: for each paper recipe, training on W = 1, 2 and 16 GPUs is simulated as the loaders
run it: every step, each of the W ranks samples its ``global / (W x micro)`` micro batches of
``data.micro_batch_size`` images, each from the generator a shard loader with ``data.num_workers``
workers gives that batch, with the block sizes from the step's shared generator
(:func:`jepa.data.loader.step_generator`). Reported: mean context tokens per image (the collated K,
what the context encoder runs) and target tokens per image (M x T), each with its standard error over
steps. Reference: an independent model of the authors' collator written from the facts of
docs/method/ijepa.md, "The authors' sampler" (size seed = collator call counter, one uniform for scale and aspect, area
truncated, sides clipped below the grid, exclusive corner bound, a mask valid with strictly more than
min_keep patches, after every 20 failed context draws one more target block is let overlap it, contexts
cut to the batch minimum) at the authors' per-GPU batch; its standard error is over batches.

``--padding-cost``: one training step (target encoder forward, context encoder + predictor forward and
backward) of a ViT-Ti/16 at 224 px with fixed-mode masks at batch 16, run three ways on the same batches,
back to back: contexts padded to the batch maximum with the key mask (what ``fixed`` now does), the
same padded tokens without the mask (the fused kernel on as many tokens: the mask's own cost), and the
contexts cut to the batch minimum (the old collation's length, no mask). Reported: median step times
and the medians of the per-batch time ratios.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from jepa.data.loader import accumulation_steps, sample_masks, step_generator
from jepa.data.stream import derive_seed
from jepa.interfaces import MaskSet
from jepa.modalities.image.config import MaskConfig
from jepa.modalities.image.masks import MultiBlockMaskSampler, check_mask_feasibility

ROOT = Path(__file__).resolve().parents[1]
PAPER_RECIPES = ("image_vith14_in1k", "image_vith14_in22k", "image_vith16_448_in1k", "image_vitg16_in22k")
AUTHORS_PER_GPU = {"image_vith14_in1k": 128, "image_vith14_in22k": 32, "image_vith16_448_in1k": 16,
                   "image_vitg16_in22k": 16}
"""``data.batch_size`` of the authors' configs (x GPUs = 2048): the batch their collator cuts contexts over."""


# ---------------------------------------------------------------------------- sampler speed
def bench_speed(args: argparse.Namespace) -> None:
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
                context, _ = sampler.collate_context(full)
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


# ---------------------------------------------------------------------------- the authors' collator (reference)
def _authors_sides(u: float, scale: tuple[float, float], aspect: tuple[float, float], grid: int) -> tuple[int, int]:
    area = int(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
    a = aspect[0] + u * (aspect[1] - aspect[0])
    return min(round(math.sqrt(area * a)), grid - 1), min(round(math.sqrt(area / a)), grid - 1)


def authors_collator(grid: int, batch: int, counter: int, cfg: MaskConfig, gen: torch.Generator) -> tuple[int, int]:
    """(collated context length K, tokens per target block T) of one batch, per docs/method/ijepa.md, "The authors' sampler"."""
    g = torch.Generator().manual_seed(counter)
    u_target, u_context = torch.rand(1, generator=g).item(), torch.rand(1, generator=g).item()
    th, tw = _authors_sides(u_target, cfg.target_scale, cfg.target_aspect_ratio, grid)
    ch, cw = _authors_sides(u_context, cfg.context_scale, (1.0, 1.0), grid)
    m, rng = cfg.num_targets, torch.arange(grid)

    def block(top, left, h, w):  # (...) corners -> (..., G, G) bool
        rows = (rng >= top[..., None]) & (rng < top[..., None] + h)
        cols = (rng >= left[..., None]) & (rng < left[..., None] + w)
        return rows[..., :, None] & cols[..., None, :]

    targets = block(torch.randint(0, grid - th, (batch, m), generator=gen),
                    torch.randint(0, grid - tw, (batch, m), generator=gen), th, tw)  # (B, M, G, G)
    kept = torch.zeros(batch, dtype=torch.long)
    todo = torch.arange(batch)
    tries, timeout = torch.zeros(batch, dtype=torch.long), torch.full((batch,), 20)
    while todo.numel():
        n = todo.numel()
        ctx = block(torch.randint(0, grid - ch, (n,), generator=gen), torch.randint(0, grid - cw, (n,), generator=gen), ch, cw)
        allowed = torch.arange(m) < (m - tries[todo])[:, None]  # the first M - tries target blocks constrain it
        covered = (targets[todo] & allowed[:, :, None, None]).any(1)
        count = (ctx & ~covered).flatten(1).sum(1)
        ok = count > cfg.min_keep
        kept[todo[ok]] = count[ok]
        failed = todo[~ok]
        timeout[failed] -= 1
        relax = failed[timeout[failed] == 0]
        tries[relax] += 1
        timeout[relax] = 20
        todo = failed
    return int(kept.min()), th * tw


def _mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


# ---------------------------------------------------------------------------- paper recipes on 1, 2, 16 GPUs
def simulate_run(sampler: MultiBlockMaskSampler, global_batch: int, world: int, micro: int, steps: int,
                 seed: int, num_workers: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Mean (context, target) tokens per image over ``steps`` simulated steps, with standard errors."""
    accum = accumulation_steps(global_batch, world, micro)
    context, target = [], []
    for step in range(steps):
        k_sum = t_sum = 0.0
        for rank in range(world):
            for a in range(accum):
                micro_step = step * accum + a
                worker, batches = micro_step % num_workers, micro_step // num_workers
                gen = torch.Generator().manual_seed(derive_seed(seed, rank, worker, batches))  # the shard loader's
                masks = sample_masks(sampler, micro, gen, step_generator(seed, step))
                assert isinstance(masks, MaskSet)
                k_sum += masks.context_idx_BK.shape[1]
                t_sum += masks.target_idx_BMT.shape[1] * masks.target_idx_BMT.shape[2]
        context.append(k_sum / (world * accum))
        target.append(t_sum / (world * accum))
    return _mean_se(context), _mean_se(target)


def bench_recipes(args: argparse.Namespace) -> None:
    from jepa.recipe import load_recipe

    print(f"mean tokens per image (+- standard error); {args.steps} simulated steps per world size, "
          f"{args.reference_batches} batches of the authors' collator; seed {args.seed}")
    print(f"{'recipe':<22} {'grid':>5} {'micro':>5} {'what':>8} " + " ".join(f"{f'{w} GPU(s)':>14}" for w in args.worlds)
          + f" {'authors':>14} {'128/rank (old)':>15}")
    for name in PAPER_RECIPES:
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml", ["data.train_shards=unused"])
        grid, cfg, micro = r.modality.grid_size, r.modality.mask, r.data.micro_batch_size
        assert micro == AUTHORS_PER_GPU[name], (name, micro)
        sampler = MultiBlockMaskSampler(grid, cfg)
        ours = [simulate_run(sampler, r.data.global_batch_size, w, micro, args.steps, args.seed, r.data.num_workers)
                for w in args.worlds]
        old = simulate_run(sampler, r.data.global_batch_size, 16, 128, args.steps, args.seed, r.data.num_workers)
        gen = torch.Generator().manual_seed(args.seed)
        ref = [authors_collator(grid, micro, i, cfg, gen) for i in range(args.reference_batches)]
        authors = (_mean_se([float(k) for k, _ in ref]), _mean_se([float(cfg.num_targets * t) for _, t in ref]))
        for i, what in enumerate(("context", "target")):
            cells = [f"{m:>8.1f} +-{se:>4.1f}" for m, se in (o[i] for o in ours)]
            m, se = authors[i]
            print(f"{name:<22} {f'{grid}x{grid}':>5} {micro:>5} {what:>8} " + " ".join(cells)
                  + f" {m:>8.1f} +-{se:>4.1f} {old[i][0]:>15.1f}")


# ---------------------------------------------------------------------------- fixed mode
def bench_fixed(args: argparse.Namespace) -> None:
    print(f"fixed mode, mean context tokens per image (+- standard error over batches), {args.batches} batches of 16 "
          f"and of 128, block sizes of steps 0, 1, ... at both; 'runs' is the padded length K the encoder runs, 'cut' "
          "what the old collation to the batch minimum kept")
    print(f"{'grid':>5} {'batch':>5} {'kept':>14} {'runs':>7} {'cut':>7} {'padding':>8}")
    for grid in args.grids:
        sampler = MultiBlockMaskSampler(grid, MaskConfig(mode="fixed"))
        gen = torch.Generator().manual_seed(args.seed)
        for batch, n in ((16, args.batches), (128, args.batches)):
            kept, runs, cut = [], [], []
            for i in range(n):  # batch i has the block sizes of step i at either batch size
                masks = sampler(batch, gen, step_generator=step_generator(args.seed, i))
                counts = (masks.context_valid_BK.sum(1) if masks.context_valid_BK is not None
                          else torch.full((batch,), masks.context_idx_BK.shape[1]))
                kept.append(float(counts.double().mean()))
                runs.append(float(masks.context_idx_BK.shape[1]))
                cut.append(float(counts.min()))
            m, se = _mean_se(kept)
            pad = 1 - statistics.fmean(kept) / statistics.fmean(runs)
            print(f"{f'{grid}x{grid}':>5} {batch:>5} {m:>8.1f} +-{se:>4.1f} {statistics.fmean(runs):>7.1f} "
                  f"{statistics.fmean(cut):>7.1f} {100 * pad:>7.1f}%")


# ---------------------------------------------------------------------------- padding cost
def bench_padding_cost(args: argparse.Namespace) -> None:
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from jepa.loss import latent_loss
    from jepa.model import JEPA, cut_targets, target_representations
    from jepa.modalities.image.vit import ViTEncoder, ViTPredictor

    torch.manual_seed(0)
    encoder = ViTEncoder(224, 16, 3, 192, 12, 3, 768)
    predictor = ViTPredictor(14, 192, predictor_dim=192, depth=6, num_heads=3)
    target_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
    model = JEPA(encoder, predictor).train()
    sampler = MultiBlockMaskSampler(14, MaskConfig(mode="fixed"))
    gen = torch.Generator().manual_seed(args.seed)
    batch = args.padding_batch

    def step(x: torch.Tensor, masks: MaskSet) -> float:
        start = time.perf_counter()
        h = target_representations(target_encoder, x)
        loss = latent_loss(model(x, masks), cut_targets(h, masks), "smooth_l1")
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def cut(masks: MaskSet) -> MaskSet:  # the old collation's length (first tokens: the same cost)
        k = int(masks.context_valid_BK.sum(1).min()) if masks.context_valid_BK is not None else masks.context_idx_BK.shape[1]
        return MaskSet(masks.context_idx_BK[:, :k], masks.target_idx_BMT)

    print(f"ViT-Ti/16 @224 (14x14), predictor 192 x 6, fixed masks, batch {batch}, fp32, {torch.get_num_threads()} "
          f"thread(s), {args.repeats} batches (+2 warm-up), the three versions of each batch back to back, order rotating")
    names = ("padded", "unmasked", "cut")
    times: dict[str, list[float]] = {n: [] for n in names}
    k_run, k_cut = [], []
    for i in range(args.repeats + 2):
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        masks = sampler(batch, gen)
        versions = {"padded": masks, "unmasked": MaskSet(masks.context_idx_BK, masks.target_idx_BMT), "cut": cut(masks)}
        order = names[i % 3:] + names[:i % 3]
        took = {n: step(x, versions[n]) for n in order}
        if i < 2:
            continue
        for n in names:
            times[n].append(took[n])
        k_run.append(masks.context_idx_BK.shape[1])
        k_cut.append(versions["cut"].context_idx_BK.shape[1])
    print(f"context tokens run per image: padded {statistics.fmean(k_run):.1f}, cut to the batch minimum "
          f"{statistics.fmean(k_cut):.1f}")
    flops = {}
    for n in names:  # FLOPs of the last batch's step (matmuls and attention, counted by torch): no timing noise
        with FlopCounterMode(display=False) as counter:
            step(x, versions[n])
        flops[n] = counter.get_total_flops()
    print("FLOPs of one step (last batch): " + ", ".join(f"{n} {flops[n] / 1e9:.1f} G" for n in names)
          + f"; padded / cut {flops['padded'] / flops['cut']:.3f}")
    print("median step: " + ", ".join(f"{n} {statistics.median(times[n]) * 1e3:.0f} ms" for n in names))
    for a, b, what in (("padded", "cut", "padding vs the old cut to the batch minimum"),
                       ("padded", "unmasked", "the key mask alone (same tokens, no mask: fused kernel)")):
        ratios = [x / y for x, y in zip(times[a], times[b])]
        print(f"median ratio {a} / {b} ({what}): {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f} .. {max(ratios):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", action="store_true", help="paper recipes at 1, 2, 16 GPUs vs the authors' collator")
    parser.add_argument("--fixed", action="store_true", help="fixed mode: context tokens per image at batch 16 and 128")
    parser.add_argument("--padding-cost", action="store_true", help="step time of padded vs cut contexts")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave the default)")
    parser.add_argument("--grids", type=int, nargs="+", default=[14, 16])
    parser.add_argument("--min-keep", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100, help="--recipes: simulated steps per world size")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 16])
    parser.add_argument("--reference-batches", type=int, default=4000, help="--recipes: batches of the authors' collator")
    parser.add_argument("--batches", type=int, default=400, help="--fixed: batches of 16 and of 128")
    parser.add_argument("--repeats", type=int, default=15, help="--padding-cost: timed batches")
    parser.add_argument("--padding-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipes:
        bench_recipes(args)
    elif args.fixed:
        bench_fixed(args)
    elif args.padding_cost:
        bench_padding_cost(args)
    else:
        bench_speed(args)


if __name__ == "__main__":
    main()
