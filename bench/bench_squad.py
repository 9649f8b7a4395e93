"""SQuAD v1.1 end to end: cache train and dev, train the default head, evaluate.

    PROJHEAD_DATA=../shared/data python bench/bench_squad.py [--cache-dir bench/work] [--seeds 0 1 2] [--alpha 1]

Caches SQuAD v1.1 train (all 87,599 questions, sentence contexts) and dev (sentence and
paragraph contexts) with the default encoder, trains a head with ``projhead train``'s
defaults (model selection, ``projhead.select.auto_train``) once per seed, and scores frozen vs head vs BM25 on dev, both protocols, at both
granularities. Prints one line per step with its wall time and writes
bench/results/squad.json and bench/results/squad.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import projhead
from projhead.data import load_pairs
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import format_table
from projhead.select import auto_train
from reuse import stamp


def step(name: str, timings: dict):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
            print(f"[{timings[name]:8.1f}s] {name}", flush=True)

    return _T()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--heads-dir", default="bench/work/heads")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--alpha", type=float, default=None,
                    help="interpolation toward the frozen encoder (default: projhead train's)")
    ap.add_argument("--out", default="bench/results/squad")
    args = ap.parse_args()
    data = os.environ.get("PROJHEAD_DATA")
    cache_dir = Path(args.cache_dir)
    timings: dict[str, float] = {}
    statuses = {}

    enc = get_encoder(DEFAULT_ENCODER)
    caches = {}
    for split, gran in (("train", "sentence"), ("dev", "sentence"), ("dev", "paragraph")):
        name = f"cache {split} {gran}"
        with step(name, timings):
            pairs = load_pairs("squad-v1.1", split, gran, data=data)
            path = cache_dir / f"squad-v1.1-{split}-{gran}-all-MiniLM-L6-v2.h5"
            statuses[name] = projhead.build_cache(pairs, enc, path, progress=False).status
        caches[(split, gran)] = projhead.open_cache(path)
        print(f"    {statuses[name]}: {len(pairs)} queries, {len(pairs.contexts)} contexts", flush=True)

    runs = []
    for seed in args.seeds:
        name = f"train seed {seed}"
        with step(name, timings):
            head, log = auto_train(caches[("train", "sentence")], projhead.TrainConfig(seed=seed, alpha=args.alpha),
                                   out=Path(args.heads_dir) / f"seed{seed}", progress=False)
            stamp(Path(args.heads_dir) / f"seed{seed}", **({} if args.alpha is None else {"alpha": args.alpha}))
        res = {}
        for gran in ("sentence", "paragraph"):
            with step(f"eval dev {gran} seed {seed}", timings):
                res[gran] = projhead.evaluate_cache(caches[("dev", gran)], head=head, bm25=(seed == args.seeds[0]))
            print(format_table(res[gran]), flush=True)
        runs.append({"seed": seed, "chosen": log["selection"]["chosen"], "selection": log["selection"]["candidates"],
                     "dev_gain": log["decision"].get("dev_gain"),
                     "best_epoch": log["best_epoch"], "passthrough": log["passthrough"],
                     "epochs_run": len(log["epochs"]), "train_seconds": log["seconds"], "results": res,
                     "dev_split": {"frozen": log["frozen_dev"], "epochs": log["epochs"]}})

    result = {"bench": "squad", "encoder": DEFAULT_ENCODER, "head": projhead.HeadConfig().__dict__,
              "train": projhead.TrainConfig().__dict__, "cache_status": statuses, "timings_s": timings,
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "processor": platform.processor()},
              "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    md = [f"SQuAD v1.1 dev, encoder `{DEFAULT_ENCODER}`, default head, seeds {args.seeds} (percent).", ""]
    for gran in ("sentence", "paragraph"):
        table = {"frozen": runs[0]["results"][gran]["frozen"], "bm25": runs[0]["results"][gran]["bm25"]}
        for r in runs:
            table[f"head (seed {r['seed']})"] = r["results"][gran]["head"]
        md += [f"**{gran} contexts**", "", format_table(table), ""]
    md += ["| step | wall time (s) | status |", "|---|---|---|"]
    md += [f"| {k} | {v:.1f} | {statuses.get(k, '')} |" for k, v in timings.items()]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out}.json and {out}.md")
    heads = [r["results"]["sentence"]["head"]["out_of_500"]["top1"] for r in runs]
    print(f"out-of-500 top-1 over seeds: mean {100 * np.mean(heads):.2f}, min {100 * min(heads):.2f}")


if __name__ == "__main__":
    main()
