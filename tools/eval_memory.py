"""Peak host memory of the streamed attentive probe on a synthetic split of any size.

The split (:mod:`jepa.eval.synthetic`) is generated batch by batch and encoded by a tiny token
encoder, so its size is limited only by time. The script prints, and writes as JSON, how many
bytes the previous evaluation (which cached every training sample's patch tokens in host
memory, float16) would have needed, the machine's memory, and this process's peak resident set
size (``VmHWM``): over the whole run, and during the evaluation alone (the peak is restarted
after the imports and the setup), with the growth over the resident size before it.

Usage:
    python tools/eval_memory.py --samples 800000 --tokens 1024 --dim 64 --json OUT
    /usr/bin/time -v python tools/eval_memory.py ...   (the same peak, measured from outside)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's memory since it started, or since :func:`reset_peak`
    (``VmHWM``; unlike ``ru_maxrss`` it does not carry over the parent's peak through fork and exec)."""
    return _status_kib("VmHWM")


def current_rss_bytes() -> int:
    return _status_kib("VmRSS")


def reset_peak() -> bool:
    """Restart the peak at the current resident set size (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=800_000, help="training samples N")
    p.add_argument("--val-samples", type=int, default=10_000)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per sample T")
    p.add_argument("--dim", type=int, default=64, help="token width D")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lrs", default="1e-3,3e-3")
    p.add_argument("--wds", default="1e-2")
    p.add_argument("--noise", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import torch

    from jepa.eval.evaluate import EvalSettings, evaluate
    from jepa.eval.grid import parse_floats
    from jepa.eval.memory import gib, host_total_bytes
    from jepa.eval.synthetic import SyntheticData, TokenEncoder
    from jepa.sources import EncoderSource

    if a.threads:
        torch.set_num_threads(a.threads)
    encoder = TokenEncoder(16, a.tokens, a.dim).eval()
    source = EncoderSource(encoder, None, "random", f"token encoder {a.tokens}x{a.dim}", "target",  # type: ignore[arg-type]
                           "synthetic")
    train = SyntheticData(a.samples, a.classes, noise=a.noise, seed=1)
    val = SyntheticData(a.val_samples, a.classes, noise=a.noise, seed=2)
    # feature_cache names a folder: the attentive probe streams the encoder every epoch and stores no
    # tokens (with "auto" a split this small would be encoded once and held in memory).
    settings = EvalSettings(protocols=("attentive",), epochs=a.epochs, batch_size=a.batch_size, device="cpu",
                            attentive_lrs=parse_floats(a.lrs, "--lrs"), attentive_wds=parse_floats(a.wds, "--wds"),
                            feature_cache=tempfile.gettempdir())
    old_cache = a.samples * a.tokens * a.dim * 2  # float16 tokens of every training sample
    setup_peak, setup_rss = peak_rss_bytes(), current_rss_bytes()
    was_reset = reset_peak()  # the peak below is the evaluation's alone (when the kernel allows it)
    start = time.perf_counter()
    report = evaluate(source, train, val, settings)
    seconds = time.perf_counter() - start
    result = report.results[0]
    out = {
        "samples": a.samples, "tokens": a.tokens, "dim": a.dim, "heads": result.settings["heads"],
        "batch_size": a.batch_size, "epochs": a.epochs,
        "old_token_cache_bytes": old_cache, "machine_memory_bytes": host_total_bytes(),
        "old_cache_over_memory": old_cache / host_total_bytes(),
        "rss_before_bytes": setup_rss, "peak_rss_before_bytes": setup_peak,
        "peak_rss_bytes": max(peak_rss_bytes(), setup_peak), "peak_rss_during_bytes": peak_rss_bytes(),
        "peak_rss_growth_bytes": peak_rss_bytes() - setup_rss, "peak_was_reset": was_reset,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds,
        "val_top1": result.top1, "chance_top1": report.chance_top1, "chosen": {k: result.settings[k] for k in ("lr", "wd")},
    }
    print(f"old token cache: {gib(old_cache)} = {out['old_cache_over_memory']:.1f} x this machine's memory "
          f"({gib(host_total_bytes())}); peak RSS {gib(out['peak_rss_bytes'])} (before the probe {gib(setup_rss)}); "
          f"{seconds:.0f} s; val top-1 {100 * result.top1:.1f} % (chance {100 * report.chance_top1:.1f} %)",
          file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    else:
        print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
