"""Collect the ``jepa bench train --json`` files of a directory into a markdown table (tools/bench_gpu.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(directory: Path) -> str:
    rows = ["| setting | device | GPUs | micro batch | ZeRO | compile | act. ckpt | img/s | MFU | peak memory (GiB) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(directory.glob("*.json")):
        d = json.loads(path.read_text())
        if "error" in d:
            rows.append(f"| {path.stem} | | | | | | | failed: {d['error']} | | |")
            continue
        mfu = f"{100 * d['mfu']:.1f} %" if d.get("mfu") is not None else "?"
        mem = f"{d['peak_memory_bytes'] / 2**30:.1f}" if d.get("peak_memory_bytes") else "?"
        rows.append(f"| {path.stem} | {d['device_name']} | {d['world_size']} | {d['micro_batch']} | {d['zero_stage']} | "
                    f"{d['compile']} | {d['activation_checkpointing']} | {d['samples_per_s']:.1f} | {mfu} | {mem} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-gpu")))
