"""Probe a video encoder on the middle frame of each clip only (the motion demo's single-frame baseline).

Usage: python tools/eval_middle_frame.py SOURCE --train-shards DIR --val-shards DIR [--protocol attentive,linear]
       [--json OUT]   (SOURCE as for `jepa eval`: run dir, checkpoint, or random:RECIPE)
"""

from __future__ import annotations

import argparse

from rich.console import Console

from jepa.eval.evaluate import EvalSettings, evaluate_shards, parse_protocols
from jepa.modalities.video.baseline import middle_frame_source
from jepa.sources import load_source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("--train-shards", required=True)
    p.add_argument("--val-shards", required=True)
    p.add_argument("--protocol", default="linear,knn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    src = middle_frame_source(load_source(a.source))
    report = evaluate_shards(src, a.train_shards, a.val_shards,
                             EvalSettings(protocols=parse_protocols(a.protocol), seed=a.seed))
    Console().print(report.table())
    if a.json:
        report.write_json(a.json)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
