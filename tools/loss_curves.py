"""Short loss curves of every built-in recipe family, pinned so that a refactor shows any drift.

Each family is a tiny version of a built-in recipe (the synthetic data source, a few steps, one
CPU process, fp32) run with ``jepa.train.train``; its per-step losses and a SHA-256 of the final
consolidated weights (``models.pt``'s tensors, in key order) are what is pinned.

    python tools/loss_curves.py                        # run every family, print the curves
    python tools/loss_curves.py --write tests/assets/loss_curves.json   # (re)pin them
    python tools/loss_curves.py --check tests/assets/loss_curves.json   # compare (exit 1 on drift)
    python tools/loss_curves.py --demo image|video     # the demo recipes on their shards (30 / 10 steps)

``tests/test_loss_curves.py`` runs ``--check``'s comparison in the default test suite. Re-pin only
when a change is *meant* to change the numbers, and say so in the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from jepa.checkpoint import load_model_weights
from jepa.monitor import read_metrics
from jepa.recipe import apply_overrides, load_yaml, parse_recipe
from jepa.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE = {"encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4},
              "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4}, "input": {"crop_size": 32}}
TINY_VIDEO = {"encoder": {"arch": "vit_tiny", "patch_size": 8, "tubelet_size": 2, "embed_dim": 64, "depth": 2,
                          "num_heads": 4},
              "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4},
              "input": {"num_frames": 4, "crop_size": 32}}
COMMON = {"data": {"source": "synthetic", "samples_per_epoch": 64, "global_batch_size": 8, "micro_batch_size": 4},
          "optim": {"epochs": 1, "warmup_epochs": 0.25},
          "engine": {"precision": "fp32"}, "log": {"every_steps": 1}, "checkpoint": {"every_steps": 1000}}

TINY_LEJEPA = ["objective.num_local_views=2", "objective.num_slices=32", "objective.projector.hidden_dim=64",
               "objective.projector.out_dim=16"]

# family -> (recipe file it shrinks, overrides of that recipe, steps)
FAMILIES: dict[str, tuple[str, list[str], int]] = {
    "image_faithful_zero0": ("recipes/image_vith14_in1k.yaml", [], 6),
    "image_faithful_zero1": ("recipes/image_vith14_in1k.yaml", ["engine.zero_stage=1"], 4),
    "image_faithful_zero2": ("recipes/image_vith14_in1k.yaml", ["engine.zero_stage=2"], 4),
    "image_faithful_zero3": ("recipes/image_vith14_in1k.yaml", ["engine.zero_stage=3"], 4),
    "image_fixed_demo": ("recipes/image_demo.yaml", [], 6),
    "video_vjepa": ("recipes/video_vitl16_k400.yaml", [], 4),
    "lejepa_image": ("recipes/lejepa_vitl_in1k.yaml", [*TINY_LEJEPA, "modality.views.local_size=null"], 4),
    "lejepa_image_teacher_zero3": ("recipes/lejepa_vitl_in1k.yaml", [
        *TINY_LEJEPA, "modality.views.local_size=null", "objective.teacher={momentum: 0.9}", "engine.zero_stage=3"], 4),
    "lejepa_video": ("recipes/video_demo_lejepa.yaml", TINY_LEJEPA, 4),
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_recipe(family: str, run_dir: Path) -> Any:
    """The validated tiny recipe of ``family``, writing into ``run_dir``."""
    path, overrides, steps = FAMILIES[family]
    raw = load_yaml((ROOT / path).read_bytes(), path)
    tiny = TINY_VIDEO if raw["modality"]["name"] == "video" else TINY_IMAGE
    raw = _merge(raw, {**COMMON, "modality": tiny})
    for section in ("eval",):
        raw.pop(section, None)
    raw["modality"].get("mask", {}).pop("min_keep", None)
    if raw["modality"]["name"] == "image":
        raw["modality"].setdefault("mask", {})["min_keep"] = 1
    raw["data"].pop("train_shards", None)
    raw["data"].pop("num_workers", None)
    raw["checkpoint"].pop("keep_best", None)
    raw = apply_overrides(raw, [*overrides, f"max_steps={steps}", f"run_dir={run_dir}"])
    return parse_recipe(raw, f"{path} (tiny {family})")


def weights_digest(run_dir: Path) -> str:
    """SHA-256 over the final checkpoint's tensors (every module, keys sorted)."""
    weights = load_model_weights(run_dir)
    h = hashlib.sha256()
    for part in sorted(weights.parts):
        state = weights.parts[part]
        for key in sorted(state):
            h.update(f"{part}.{key}".encode())
            h.update(state[key].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_family(family: str) -> dict[str, Any]:
    """One family's curve, on one CPU thread (the sums' order, so the bits, depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / family
            train(tiny_recipe(family, run_dir))
            losses = [r["loss"] for r in read_metrics(run_dir)]
            return {"losses": losses, "weights_sha256": weights_digest(run_dir)}
    finally:
        torch.set_num_threads(threads)


def run_demo(which: str) -> dict[str, Any]:
    recipe_file, steps = {"image": ("recipes/image_demo.yaml", 30), "video": ("recipes/video_demo.yaml", 10)}[which]
    raw = load_yaml((ROOT / recipe_file).read_bytes(), recipe_file)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / which
        raw = apply_overrides(raw, [f"max_steps={steps}", f"run_dir={run_dir}", "log.every_steps=1", "eval.every_steps=null",
                                    "checkpoint.keep_best=null"])
        train(parse_recipe(raw, recipe_file))
        return {"losses": [r["loss"] for r in read_metrics(run_dir)], "weights_sha256": weights_digest(run_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="pin the curves into this JSON file")
    parser.add_argument("--check", type=Path, help="compare against this pinned JSON file")
    parser.add_argument("--demo", choices=("image", "video"), help="run a demo recipe on its shards instead")
    parser.add_argument("--only", nargs="*", help="families to run (default: all)")
    args = parser.parse_args(argv)
    if args.demo:
        print(json.dumps(run_demo(args.demo), indent=1))
        return 0
    results = {f: run_family(f) for f in (args.only or FAMILIES)}
    for family, result in results.items():
        print(f"{family}: {' '.join(f'{x:.6f}' for x in result['losses'])}  weights {result['weights_sha256'][:16]}")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(results, indent=1) + "\n")
    if args.check:
        pinned = json.loads(args.check.read_text())
        drift = [f for f, r in results.items() if pinned.get(f) != r]
        if drift:
            print(f"drift in: {', '.join(drift)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
