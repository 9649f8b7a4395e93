"""Where ``projhead train --hybrid`` chooses BM25's k1 and b and the dense share it ranks
held-out queries at: on the choosing half of the held-out queries (its earlier rule) against
every held-out query (today's, as plain selection chooses them after training), with the
frozen encoder, for each seed's dev split; no head is trained.

    PROJHEAD_DATA=../shared/data python bench/bench_hybrid_settings.py --seeds 0 1 2 \\
        [--cache bench/work/squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5] [--out bench/results/hybrid_settings.json]

A seed whose picks are the same both ways trains exactly as before (the rest of selection is
unchanged), so bench_hybrid.py may reuse that seed's earlier head; a seed whose picks differ
is trained again. Prints one line per (seed, rule) and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from projhead.batches import held_out
from projhead.cache import open_cache
from projhead.config import TrainConfig
from projhead.evaluate import PER_QUERY
from projhead.fusion import WEIGHT_GRID
from projhead.hybrid import best_weight, choose_bm25
from projhead.select import _halves, _ranked_against, split_groups
from projhead.train import dev_fraction, split_by_group


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="bench/work/squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/results/hybrid_settings.json")
    args = ap.parse_args()
    cache = open_cache(args.cache)
    rows_out = []
    for seed in args.seeds:
        cfg = TrainConfig(seed=seed, hybrid=True)
        _ranked_against(cache, cfg)  # corpus rows as selection ranks them
        groups = split_groups(cache, need=5)
        _, held = split_by_group(groups, dev_fraction(cfg, len(cache.q2c)), seed)
        choose, _ = _halves(groups, held, seed, {})
        for rule, rows in (("choosing half", choose), ("every held-out", held)):
            t0 = time.perf_counter()
            bm, search = choose_bm25(cache, rows, cfg.select_metric, seed=seed)
            dev = held_out(cache, rows, replace(cfg, bm25_k1=bm.k1, bm25_b=bm.b, fusion_weight=WEIGHT_GRID[1]))
            w = best_weight(dev, None, WEIGHT_GRID[1:], PER_QUERY[cfg.select_metric], seed=seed)
            r = {"seed": seed, "rows": rule, "n": int(len(rows)), "k1": bm.k1, "b": bm.b, "weight": w,
                 "best": search["best"], "seconds": round(time.perf_counter() - t0, 1)}
            print(r, flush=True)
            rows_out.append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "hybrid_settings", "cache": Path(args.cache).name,
                                          "rows": rows_out}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
