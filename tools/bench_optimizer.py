"""Time one AdamW step over a ViT's parameters: torch's per-tensor loop, foreach, and fused.

On CPU, ``torch.optim.AdamW`` defaults to the per-tensor Python loop; jepa's engine asks for the fused
kernel on CPU and CUDA (``jepa.engine.FUSED_ADAMW_DEVICES``). Medians of ``--repeats`` steps, with the
ratio to the loop, in one process (the machine's noise cancels in the ratios).

    python tools/bench_optimizer.py --arch vit_tiny --patch 4 --size 32 --predictor 4x96
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_tiny", help="a jepa image arch (vit_tiny, vit_small, ...)")
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--predictor", default="4x96", help="DEPTHxWIDTH of the predictor, or none")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from jepa.modalities.image.config import ImageConfig
    from jepa.registry import bind

    cfg = {"name": "image", "encoder": {"arch": a.arch, "patch_size": a.patch}, "input": {"crop_size": a.size}}
    if a.predictor != "none":
        depth, width = (int(v) for v in a.predictor.split("x"))
        cfg["predictor"] = {"depth": depth, "embed_dim": width, "num_heads": max(1, width // 32)}
    modality = bind(ImageConfig.model_validate(cfg))
    params = list(modality.build_encoder().parameters())
    if a.predictor != "none":
        params += list(modality.build_predictor().parameters())
    params = [p.detach().to(a.device).requires_grad_() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"{a.arch}/{a.patch} @{a.size} + predictor {a.predictor}: {len(params)} tensors, "
          f"{sum(p.numel() for p in params):,} parameters, {torch.get_num_threads()} threads, {a.device}")
    base = None
    variants = (("per-tensor loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))
    for name, kw in variants:
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        times = []
        for i in range(a.repeats + 3):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            if a.device == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        base = base or med
        print(f"  {name:16s} {1e3 * med:8.2f} ms   {base / med:5.2f}x")


if __name__ == "__main__":
    main()
