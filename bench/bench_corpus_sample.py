"""How large a corpus sample does model selection need? 1,000 SQuAD pairs, distractors sampled.

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_corpus_sample.py --cache-dir /work/cache
        [--size 1000] [--samples 0 1000 5000 -1] [--seeds 0 1 2] [--out bench/results/corpus_sample]

Training sets: ``--size`` pairs of SQuAD v1.1 train (sentence contexts, whole articles in a
seeded order, ``bench_small_data.subset_rows``). Distractors: the other sentences of SQuAD train
that are contexts (texts without queries for this training set), a seeded sample of each size
in ``--samples`` (0: none, -1: all of them). ``projhead train`` defaults choose and decide with
held-out queries ranked against the subset's contexts plus those distractors; each head is
then scored on SQuAD v1.1 dev (full corpus: every dev sentence that is a context, nDCG@10).
Reports, per sample size, the decision (head kept, candidate, epoch), the dev gain selection
measured and the test nDCG@10, means over seeds. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_small_data import subset_rows  # noqa: E402

import projhead  # noqa: E402
from projhead.cache import cache_name, open_cache  # noqa: E402
from projhead.corpus import sample_rows  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER  # noqa: E402
from projhead.select import auto_train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--samples", type=int, nargs="+", default=[0, 1000, 5000, -1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/results/corpus_sample")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = Path(args.cache_dir)
    train = open_cache(d / cache_name("squad-v1.1", "train", "sentence", DEFAULT_ENCODER))
    test = open_cache(d / cache_name("squad-v1.1", "dev", "sentence", DEFAULT_ENCODER))
    frozen = projhead.evaluate_cache(test)["frozen"]["full_corpus"]["nDCG@10"]
    print(f"SQuAD dev frozen nDCG@10 {100 * frozen:.1f} ({len(test.contexts)} contexts)", flush=True)
    rows = []
    for seed in args.seeds:
        subset = subset_rows(train.groups, args.size, seed)
        others = np.setdiff1d(np.arange(len(train.contexts)), train.q2c[subset])
        for sample in args.samples:
            sub = train.subset(subset)
            keep = others[sample_rows(len(others), None if sample < 0 else sample, seed)]
            sub.attach_distractors(train.contexts[keep], [train.context_texts[i] for i in keep])
            t0 = time.perf_counter()
            head, log = auto_train(sub, projhead.TrainConfig(seed=seed), progress=False)
            seconds = time.perf_counter() - t0
            sel = log["selection"]
            test_ndcg = projhead.evaluate_cache(test, head=head)["head"]["full_corpus"]["nDCG@10"]
            gain = log["decision"].get("dev_gain") or {}
            row = {"seed": seed, "sample": sample, "distractors": sel["distractors"], "kept": log["decision"]["kept"],
                   "chosen": sel["chosen"], "epoch": next((c["best_epoch"] for c in sel["candidates"]
                                                          if c["name"] == sel["chosen"]), None),
                   "frozen_dev_mrr10": sel["frozen_dev"]["mrr10"], "dev_gain": gain.get("gain"), "dev_gain_of": gain.get("of", "mrr10"),
                   "test_nDCG@10": test_ndcg, "seconds": seconds}
            rows.append(row)
            print(f"seed {seed} distractors {sel['distractors']:>6}: {row['chosen']} epoch {row['epoch']} {row['kept']}, "
                  f"frozen dev MRR@10 {row['frozen_dev_mrr10']:.3f}, dev gain {gain.get('gain', float('nan')):+.3f}; "
                  f"test nDCG@10 {100 * test_ndcg:.1f} ({100 * (test_ndcg - frozen):+.1f}) {seconds:.0f}s", flush=True)
    summary = []
    for sample in args.samples:
        rs = [r for r in rows if r["sample"] == sample]
        summary.append({"sample": sample, "distractors": float(np.mean([r["distractors"] for r in rs])),
                        "heads_kept": sum(r["kept"] == "head" for r in rs), "seeds": len(rs),
                        "epochs": [r["epoch"] for r in rs], "chosen": [r["chosen"] for r in rs],
                        "frozen_dev_mrr10": float(np.mean([r["frozen_dev_mrr10"] for r in rs])),
                        "test_gain": float(np.mean([r["test_nDCG@10"] - frozen for r in rs])),
                        "seconds": float(np.mean([r["seconds"] for r in rs]))})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "corpus_sample", "size": args.size, "frozen_test_nDCG@10": frozen, "rows": rows,
              "summary": summary, "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                                              "torch": torch.__version__, "platform": platform.platform()}}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["| distractors (mean) | heads kept | epochs | frozen held-out MRR@10 | test nDCG@10 vs frozen | selection time |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['distractors']:.0f} | {s['heads_kept']}/{s['seeds']} | {', '.join(map(str, s['epochs']))} | "
                     f"{s['frozen_dev_mrr10']:.3f} | {100 * s['test_gain']:+.1f} | {s['seconds']:.0f}s |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
