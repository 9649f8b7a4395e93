"""What k-fold selection should save: the winner refit on every pair, or its fold heads averaged.

    PROJHEAD_DATA=../shared/data python bench/bench_after_folds.py [--seeds 0 1 2] [--jobs quac squad boolq fiqa]
        [--cache-dir bench/work] [--out bench/results/after_folds]

``projhead train`` on fewer than 5,000 queries chooses its candidate and epoch out of fold
(5 folds); then it saves either the winner trained again on every pair (``--after-folds refit``,
the default) or the mean of the 5 fold heads' weights at the chosen epoch (``average``). Both
are run on the same data and seed and scored on queries neither saw:

- ``quac``: dialog heads (turns section of 2 turns) on QuAC val-train only: its dialogs cut in
  4 parts by dialog (seeded); each part in turn is the test, the other three train. Out-of-500
  top-1 / top-10 on the test part (val-test is not used here).
- ``squad``: SQuAD v1.1 train subsets of 300, 1,000 and 3,000 pairs (whole articles, seeded),
  scored on SQuAD v1.1 dev (nDCG@10 and out-of-500 top-1).
- ``boolq`` (300, 1,000 pairs) and ``fiqa`` (300): train subsets, scored on the test split.

The keep decision does not depend on the mode (it is made on the fold heads' out-of-fold ranks),
so when the identity is kept the two modes save the same head: then ``average`` is not run.
Caches missing from ``--cache-dir`` are encoded first. Writes OUT.json and OUT.md; one CPU thread.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from projhead.cache import cache_dataset, open_cache
from projhead.data import load_pairs
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import dense_scorer, evaluate_cache, out_of_n
from projhead.select import auto_train, group_folds, split_groups
from projhead.train import TrainConfig
from projhead.turns import build_with_turns, dialog_view

sys.path.insert(0, str(Path(__file__).parent))
from bench_small_data import subset_rows  # noqa: E402

FIELDS = {"squad": (("squad-v1.1", "train", "sentence"), ("squad-v1.1", "dev", "sentence"), (300, 1000, 3000)),
          "boolq": (("boolq", "train", "passage"), ("boolq", "dev", "passage"), (300, 1000)),
          "fiqa": (("fiqa", "train", "question"), ("fiqa", "dev", "question"), (300,))}


def quac_parts(view, k: int = 4):
    """(part, train, test) for each of ``k`` parts of a dialog view cut by dialog (seeded): the part
    is the test, the other parts train."""
    parts = group_folds(split_groups(view, need=k), k, seed=100)
    for p, test_rows in enumerate(parts):
        yield p, view.subset(np.sort(np.concatenate([r for i, r in enumerate(parts) if i != p]))), \
            view.subset(np.sort(test_rows))


def out_of_500(head, cache) -> dict:
    q = cache.queries if head is None else head.encode_queries(cache.queries)
    c = cache.contexts if head is None else head.encode_contexts(cache.contexts)
    m = out_of_n(dense_scorer(q, c), cache.q2c)
    return {"top1": 100 * m["top1"], "top10": 100 * m["top10"]}


def full(head, cache) -> dict:
    r = evaluate_cache(cache, head=head)["head" if head is not None else "frozen"]
    return {"ndcg10": 100 * r["full_corpus"]["nDCG@10"], "top1": 100 * r["out_of_500"]["top1"]}


def both_modes(train, seed: int, score) -> dict:
    """``projhead train``'s selection with refit, then with average when a head was kept."""
    out = {}
    for mode in ("refit", "average"):
        t0 = time.perf_counter()
        head, log = auto_train(train, TrainConfig(seed=seed, threads=1, after_folds=mode), progress=False)
        kept = log["decision"]["kept"]
        out[mode] = {"kept": kept, "chosen": log["selection"]["chosen"], "seconds": time.perf_counter() - t0,
                     **score(head)}
        if kept == "identity":
            out["average"] = dict(out[mode], same_as_refit=True)
            break
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", nargs="+", default=["quac", "squad", "boolq", "fiqa"], choices=["quac", *FIELDS])
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--out", default="bench/results/after_folds")
    args = ap.parse_args(argv)
    if not os.environ.get("PROJHEAD_DATA"):
        raise SystemExit("set PROJHEAD_DATA to the shared data folder")
    torch.set_num_threads(1)
    work = Path(args.cache_dir)
    work.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []

    def record(job, size, seed, frozen, res):
        rows.append({"job": job, "size": size, "seed": seed, "frozen": frozen, **res})
        key = "top1" if job.startswith("quac") else "ndcg10"
        print(f"{job:<8} n {size:>5} seed {seed}  frozen {frozen[key]:5.1f}  refit {res['refit'][key]:5.1f} "
              f"({res['refit']['kept']}, {res['refit']['chosen']}, {res['refit']['seconds']:.0f}s)  average "
              f"{res['average'][key]:5.1f}" + (" (same head)" if res["average"].get("same_as_refit") else
                                               f" ({res['average']['seconds']:.0f}s)"), flush=True)

    if "quac" in args.jobs:
        path = work / "quac-turns2-val-train.h5"  # as `projhead cache --dataset quac --split val-train --turns 2` names it
        build_with_turns(load_pairs("quac", "val-train", "sentence"), enc, path, 2, progress=False)
        view = dialog_view(open_cache(path))
        for p, train, test in quac_parts(view):
            for seed in args.seeds:
                record(f"quac-{p}", len(train.q2c), seed, out_of_500(None, test),
                       both_modes(train, seed, lambda h, t=test: out_of_500(h, t)))
    for job in [j for j in args.jobs if j in FIELDS]:
        tr_spec, te_spec, sizes = FIELDS[job]
        train_all = cache_dataset(*tr_spec, enc, work, os.environ["PROJHEAD_DATA"])
        test = cache_dataset(*te_spec, enc, work, os.environ["PROJHEAD_DATA"])
        frozen = full(None, test)
        for size in [s for s in sizes if s < len(train_all.q2c)]:
            for seed in args.seeds:
                train = train_all.subset(subset_rows(train_all.groups, size, seed))
                record(job, size, seed, frozen, both_modes(train, seed, lambda h, t=test: full(h, t)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"encoder": DEFAULT_ENCODER, "seeds": args.seeds, "rows": rows},
                                                   indent=1))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| data | pairs | metric | frozen | refit | average | heads kept | average - refit where kept (per run) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        k = ("quac" if r["job"].startswith("quac") else r["job"], r["size"] if not r["job"].startswith("quac") else 0)
        if k not in keys:
            keys.append(k)
    for job, size in keys:
        rs = [r for r in rows if (r["job"].startswith("quac") if job == "quac" else r["job"] == job)
              and (job == "quac" or r["size"] == size)]
        m = "top1" if job == "quac" else "ndcg10"
        kept = [r for r in rs if r["refit"]["kept"] == "head"]
        diffs = ", ".join(f"{r['average'][m] - r['refit'][m]:+.1f}" for r in kept) or "none kept"
        pairs = ("3/4 of val-train (" + ", ".join(str(r["size"]) for r in rs if r["seed"] == rs[0]["seed"]) + ")"
                 if job == "quac" else f"{size:,}")
        lines.append(f"| {job} | {pairs} | {'out-of-500 top-1' if m == 'top1' else 'nDCG@10'} | "
                     f"{np.mean([r['frozen'][m] for r in rs]):.1f} | {np.mean([r['refit'][m] for r in rs]):.1f} | "
                     f"{np.mean([r['average'][m] for r in rs]):.1f} | {len(kept)}/{len(rs)} | {diffs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
