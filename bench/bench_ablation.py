"""What each training choice buys, on the caches bench_squad.py made.

    PROJHEAD_DATA=../shared/data python bench/bench_ablation.py [--cache-dir bench/work] [--seed 0]

Trains the default head and variants that change one setting (batching, towers, objective,
batch size), each with the same seed, and scores them on SQuAD v1.1 dev (sentence contexts,
both protocols). One line per configuration; writes bench/results/ablation.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import projhead
from squad_runs import squad_run

VARIANTS = {
    "default (group batching, separate towers, clip)": ({}, {}),
    "random batching": ({"batching": "random"}, {}),
    "shared tower": ({}, {"towers": "shared"}),
    "query tower only": ({}, {"towers": "query"}),
    "samtone loss": ({"loss": "samtone"}, {}),
    "batch 512": ({"batch_size": 512}, {}),
}


def main():
    args, train_path, dev_path = squad_run("bench/results/ablation.json", "names of variants to run")
    train, dev = projhead.open_cache(train_path), projhead.open_cache(dev_path)
    rows = []
    for name, (tkw, hkw) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        tcfg = projhead.TrainConfig(seed=args.seed, **tkw)
        head, log = projhead.train_head(train, projhead.HeadConfig(**hkw), tcfg, progress=False)
        res = projhead.evaluate_cache(dev, head=head)
        f, h = res["frozen"], res["head"]
        rows.append({"variant": name, "train": asdict(tcfg), "head": hkw, "best_epoch": log["best_epoch"],
                     "seconds": time.perf_counter() - t0, "results": res})
        print(f"{name:48s} top1 {100 * f['out_of_500']['top1']:.1f} -> {100 * h['out_of_500']['top1']:.1f}  "
              f"top10 {100 * f['out_of_500']['top10']:.1f} -> {100 * h['out_of_500']['top10']:.1f}  "
              f"full R@1 {100 * f['full_corpus']['R@1']:.1f} -> {100 * h['full_corpus']['R@1']:.1f}  "
              f"nDCG@10 {100 * f['full_corpus']['nDCG@10']:.1f} -> {100 * h['full_corpus']['nDCG@10']:.1f}  "
              f"(best epoch {log['best_epoch']})", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "ablation", "seed": args.seed, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
