"""What the SQuAD training benches share: their command line, their caches, their tables.

    from squad_runs import md_row, squad_run
    args, train_path, dev_path = squad_run("bench/results/x.json", "names of rows to run")

The benches run as ``python bench/bench_NAME.py``, so this folder is on the import path.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TRAIN = "squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5"  # the caches bench_squad.py makes
DEV = "squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5"


def squad_run(out: str, only: str):
    """The options every such bench takes (--cache-dir, --seed, --only, --out), parsed; and
    the paths of the SQuAD v1.1 train and dev sentence caches in --cache-dir."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help=f"{only} (default: all)")
    ap.add_argument("--out", default=out)
    args = ap.parse_args()
    d = Path(args.cache_dir)
    return args, d / TRAIN, d / DEV


def md_row(*cells) -> str:
    """One row of a Markdown table ("| a | b | |": an empty cell is one space)."""
    return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"
