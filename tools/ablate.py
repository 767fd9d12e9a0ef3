#!/usr/bin/env python
"""Run an ablation table: every row of a plan trained and probed over several seeds at one budget.

A plan (YAML, e.g. ``tools/ablations/image_small.yaml``) names a base recipe, the labelled shards to
probe on, the seeds, optional ``base_set`` overrides that make the study's base out of the recipe
(e.g. the settings the study started from, when the recipe file now holds its result), the budget
overrides shared by every row, and the rows (each a list of ``jepa train --set`` overrides against
the base). For every (row, seed) this runs

    jepa train BASE --set seed=S --set run_dir=OUT/ROW/seedS BASE_SET... BUDGET... ROW...
    jepa eval OUT/ROW/seedS --train-data TRAIN --val-data VAL --protocol linear,knn --seed S --json ...

and, as reference rows, the first row's architecture at random initialisation (``random:``) and the
raw pixels (``pixels:``). Finished (row, seed) pairs are skipped, so an interrupted table resumes; a
protocol added to the plan later is probed on its own and merged into the finished reports. The plan's
``pixel_protocols`` (default: its ``protocols``) sets the pixel row's probes, since an attentive probe
over raw pixel tokens rarely fits in memory (``jepa eval`` refuses it before running anything).
The table (mean over seeds, with each seed's numbers and the command of the row) is printed and
written to ``OUT/table.md``; ``OUT/results.json`` holds every number.

    python tools/ablate.py tools/ablations/image_small.yaml --out runs/ablation_small
    python tools/ablate.py tools/ablations/image_small.yaml --out runs/ablation_small --rows base,ema_0996
    python tools/ablate.py tools/ablations/image_small.yaml --out runs/ablation_small --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

PROTOCOLS = ("linear", "knn")
REFERENCES = {"random": "random init (row 1's architecture)", "pixels": "raw pixels"}


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "_", name)


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(path.read_text())
    missing = {"base", "train_data", "val_data", "seeds", "rows"} - set(plan or {})
    if missing:
        raise SystemExit(f"{path}: the plan lacks {sorted(missing)}; see the docstring of tools/ablate.py")
    names = [r["name"] for r in plan["rows"]]
    if len(set(names)) != len(names) or set(names) & set(REFERENCES):
        raise SystemExit(f"{path}: row names must be unique and not {sorted(REFERENCES)}: {names}")
    return plan


def train_command(plan: dict, row: dict, seed: int, run_dir: Path) -> list[str]:
    sets = [f"seed={seed}", f"run_dir={run_dir}", *plan.get("base_set", []), *plan.get("budget", []),
            *row.get("set", [])]
    return ["jepa", "train", plan["base"], *[a for s in sets for a in ("--set", s)]]


def protocols_of(plan: dict, kind: str = "") -> list[str]:
    """The probes of a trained row or reference ``kind`` (the pixel row may have its own)."""
    protocols = plan.get("protocols", PROTOCOLS)
    return list(plan.get("pixel_protocols", protocols) if kind == "pixels" else protocols)


def eval_command(plan: dict, source: str, seed: int, out_json: Path, protocols: list[str] | None = None) -> list[str]:
    return ["jepa", "eval", source, "--train-data", plan["train_data"], "--val-data", plan["val_data"],
            "--protocol", ",".join(protocols or protocols_of(plan)), "--seed", str(seed), "--json", str(out_json),
            *plan.get("eval_args", [])]


_THREADS: dict[str, str] = {}
"""OMP_NUM_THREADS for every command when cells run in parallel (``--jobs``)."""


def _run(cmd: list[str], log: Path) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), **_THREADS}
    with log.open("a") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"command failed (exit {done.returncode}); its output is in {log}")


def _top1(report: Path) -> dict[str, float]:
    results = json.loads(report.read_text())["results"]
    top1 = {r["protocol"]: r["top1"] for r in results}
    metrics = report.parent / "metrics.jsonl"  # a trained cell: its final training loss (label-free signal)
    if metrics.is_file() and (lines := metrics.read_text().splitlines()):
        top1["final_loss"] = json.loads(lines[-1])["loss"]
    return top1


def missing_protocols(report: Path, protocols: list[str]) -> list[str]:
    """The plan's protocols a finished report lacks (all of them when there is no report)."""
    if not report.is_file():
        return list(protocols)
    have = {r["protocol"] for r in json.loads(report.read_text())["results"]}
    return [p for p in protocols if p not in have]


def probe(plan: dict, source: str, seed: int, report: Path, protocols: list[str]) -> None:
    """Run ``jepa eval`` for ``protocols`` and write ``report``, or merge them into the report there.

    A merged report keeps its first run's header (features, timings) and lists the later probes' results
    after the earlier ones; ``merged`` lists each addition's protocols and its ``jepa eval`` seconds."""
    tmp = report.with_suffix(".tmp")
    _run(eval_command(plan, source, seed, tmp, protocols), report.parent / "eval.log")
    if report.is_file():
        added = json.loads(tmp.read_text())
        merged = json.loads(report.read_text())
        merged["results"] += added["results"]
        merged.setdefault("merged", []).append({"protocols": protocols, "total_seconds": added.get("total_seconds")})
        tmp.write_text(json.dumps(merged, indent=2))
    tmp.replace(report)


def run_cell(plan: dict, row: dict, seed: int, out: Path) -> dict[str, float]:
    """Train and probe one (row, seed), probe the protocols its report lacks, or read its finished report."""
    run_dir = out / _slug(row["name"]) / f"seed{seed}"
    report = run_dir / "eval.json"
    if report.is_file():
        if missing := missing_protocols(report, protocols_of(plan)):
            probe(plan, str(run_dir), seed, report, missing)
    else:
        if run_dir.exists():  # an interrupted cell starts again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.monotonic()
        _run(train_command(plan, row, seed, run_dir), run_dir / "train.log")
        trained = time.monotonic()
        probe(plan, str(run_dir), seed, report, protocols_of(plan))
        seconds = {"train": trained - start, "eval": time.monotonic() - trained}
        (run_dir / "seconds.json").write_text(json.dumps(seconds))
    return _top1(report)


def run_reference(plan: dict, kind: str, seed: int, out: Path) -> dict[str, float]:
    first = out / _slug(plan["rows"][0]["name"]) / f"seed{seed}"
    report = out / kind / f"seed{seed}" / "eval.json"
    if missing := missing_protocols(report, protocols_of(plan, kind)):
        report.parent.mkdir(parents=True, exist_ok=True)
        probe(plan, f"{kind}:{first / 'recipe.yaml'}", seed, report, missing)
    return _top1(report)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    per_seed = " / ".join(f"{100 * v:.1f}" for v in values)
    return f"**{mean:.1f}** ({per_seed})"


def table(plan: dict, results: dict[str, dict[int, dict[str, float]]]) -> str:
    protocols = plan.get("protocols", PROTOCOLS)
    lines = ["| row | change against the base | " + " | ".join(f"{p} top-1 %" for p in protocols)
             + " | final training loss | reproduce |", "|---|---|" + "---|" * len(protocols) + "---|---|"]
    rows = [(k, v, "") for k, v in REFERENCES.items()] + [(r["name"], r.get("why", ""), r) for r in plan["rows"]]
    for name, why, row in rows:
        per_seed = results.get(name, {})
        seeds = sorted(per_seed)
        cells = [_cell([per_seed[s][p] for s in seeds if p in per_seed[s]]) for p in protocols]
        losses = [per_seed[s]["final_loss"] for s in seeds if "final_loss" in per_seed[s]]
        loss = " / ".join(f"{v:.4f}" for v in losses) or "-"
        change = why if not row else (why or ", ".join(row.get("set", [])) or "(base)")
        command = "" if not row else f"`--rows {name}`"
        lines.append(f"| {name} | {change} | {' | '.join(cells)} | {loss} | {command} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs, results.json and table.md")
    ap.add_argument("--rows", default=None, help="comma-separated row names to run (default: all, then references)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the plan's)")
    ap.add_argument("--table-only", action="store_true", help="print the table of what is finished; run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="cells trained at once, each with cores / jobs threads "
                    "(on a small CPU, 2 one-thread runs finish sooner than 2 two-thread runs in turn)")
    args = ap.parse_args()
    plan = load_plan(args.plan)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(plan["seeds"])
    wanted = set(args.rows.split(",")) if args.rows else None
    known = {r["name"] for r in plan["rows"]} | set(REFERENCES)
    if wanted and wanted - known:
        raise SystemExit(f"unknown rows {sorted(wanted - known)}; the plan has {sorted(known)}")
    if args.jobs > 1:
        _THREADS["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    results: dict[str, dict[int, dict[str, float]]] = {}
    cells, refs = [], []
    for row in [*plan["rows"], *({"name": k} for k in REFERENCES)]:
        name = row["name"]
        for seed in seeds:
            done = args.out / _slug(name) / f"seed{seed}" / "eval.json"
            if done.is_file():
                results.setdefault(name, {})[seed] = _top1(done)
            pending = missing_protocols(done, protocols_of(plan, name))  # none run yet, or some added later
            if pending and not args.table_only and (wanted is None or name in wanted):
                (refs if name in REFERENCES else cells).append((row, seed))
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # rows first; references need row 1's recipe
        for (row, seed), top1 in zip(cells, pool.map(lambda c: run_cell(plan, c[0], c[1], args.out), cells)):
            results.setdefault(row["name"], {})[seed] = top1
        for (row, seed), top1 in zip(refs, pool.map(lambda c: run_reference(plan, c[0]["name"], c[1], args.out), refs)):
            results.setdefault(row["name"], {})[seed] = top1
    text = table(plan, results)
    base_set, budget = " ".join(plan.get("base_set", [])), " ".join(plan.get("budget", [])) or "(the base)"
    header = (f"Base `{plan['base']}` {base_set}, budget {budget}, seeds {', '.join(map(str, seeds))}; "
              f"probes `jepa eval --protocol {','.join(plan.get('protocols', PROTOCOLS))}` on "
              f"{plan['train_data']} -> {plan['val_data']}. Command: `python tools/ablate.py {args.plan} --out "
              f"{args.out}` (add `--rows NAME` for one row).")
    print(header + "\n\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(header + "\n\n" + text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
