"""Does choosing the fusion on a few hundred held-out queries beat the fixed default?

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_fusion_choice.py [--datasets quac boolq fiqa]
        [--sizes 100 300 1000 3000] [--seeds 0 1 2] [--out bench/results/fusion_choice]

``projhead train`` saves, with every head and with the identity, a fusion with BM25 chosen on the
queries model selection held out (on small data every query, out of fold): BM25's k1 and b of
``fusion.BM25_GRID`` and the dense weight of ``fusion.WEIGHT_GRID`` (``hybrid.choose_weight``).
When model selection keeps the identity, the system it hands over is frozen + BM25 at that
choice. This bench measures the choice alone, on the frozen encoder (no head is trained): per
dataset (the corpus bench's caches, ``bench_corpus``: test questions ranked against every text of
the file), size and seed, the subset's queries (whole groups, ``bench_small_data.subset_rows``)
ranked against the subset's contexts as selection ranks them, and on the test questions, full
corpus, frozen + BM25 fused:

- ``default``: dense weight ``fusion.DEFAULT_WEIGHT``, bm25s's default k1 and b.
- ``chosen``: k1, b and weight chosen on the subset's queries, each the highest mean (as
  ``projhead train`` chose before the weight had to beat the default beyond noise).
- ``weight only`` / ``BM25 only``: one of the two chosen, the other left at its default.
- ``chosen if beyond noise``: the chosen fusion where its per-query MRR@10 on the subset's
  queries beats the default's by the paired bootstrap (95% interval above 0), else the default.
- ``BM25 chosen, weight if beyond noise``: what ``projhead train`` saves (``hybrid.choose_weight``'s
  default): k1 and b chosen; the weight of highest mean where it beats the default weight at
  those k1 and b by the same test, else the default weight (``hybrid.kept_weight``).
- ``BM25 at the kept weight``: the same, but each k1 and b scored at the weight the rule would
  keep for it (of every other weight, as the search tries them), not at its best one.

``--datasets squad quora``: SQuAD v1.1 sentences (train subsets; test: dev, all 10,570 questions
against its 6,698 sentences), where BM25 alone beats the frozen encoder, and Quora duplicates
(the hybrid bench's split by pair).

Prints one line per run and writes ``OUT.json`` and ``OUT.md`` (means over seeds, points).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_corpus import WORK, caches  # noqa: E402
from bench_hybrid import DATASETS, open_or_cache  # noqa: E402
from bench_small_data import subset_rows  # noqa: E402
from written import write_results  # noqa: E402

import projhead  # noqa: E402
from projhead.batches import held_out  # noqa: E402
from projhead.corpus import with_corpus  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER, get_encoder  # noqa: E402
from projhead.fusion import BM25_GRID, DEFAULT_WEIGHT, WEIGHT_GRID, BM25Settings, FusionSpec  # noqa: E402
from projhead.hybrid import choose_weight  # noqa: E402
from projhead.metrics import PER_QUERY, paired_bootstrap  # noqa: E402

RULES = ("default", "chosen", "weight only", "BM25 only", "chosen if beyond noise", "BM25 chosen, weight if beyond noise",
         "BM25 at the kept weight")
SHOWN = ("nDCG@10", "MRR@10", "R@1")


def per_query(sub, spec: FusionSpec) -> np.ndarray:
    """MRR@10 of each of ``sub``'s queries, frozen + BM25 fused as ``spec``, ranked as selection ranks."""
    cfg = projhead.TrainConfig(hybrid=True, fusion_weight=spec.weight, bm25_k1=spec.bm25.k1, bm25_b=spec.bm25.b)
    return PER_QUERY["mrr10"](held_out(sub, np.arange(len(sub.q2c)), cfg).ranks(None))


def choices(sub, seed: int) -> tuple[dict, dict]:
    """Each rule's fusion for ``sub``, and the record of the choice."""
    rows = np.arange(len(sub.q2c))
    default = FusionSpec(weight=DEFAULT_WEIGHT)
    chosen = choose_weight(sub, rows, None, bm25_grid=BM25_GRID, seed=seed, stay=None)  # the highest mean
    weight_only = choose_weight(sub, rows, None, spec=FusionSpec(), seed=seed, stay=None)
    bm25 = FusionSpec(weight=DEFAULT_WEIGHT, bm25=chosen.bm25)
    ruled = choose_weight(sub, rows, None, bm25_grid=BM25_GRID, seed=seed, boot_seed=seed)  # the library's default
    vs = paired_bootstrap(per_query(sub, chosen), per_query(sub, default), seed=seed)
    # each BM25 setting scored at the weight the rule keeps for it (of every other weight, as the search tries them)
    at_kept = []
    for k1, b in BM25_GRID:
        s = choose_weight(sub, rows, None, spec=FusionSpec(bm25=BM25Settings(k1=k1, b=b)), grid=WEIGHT_GRID[::2],
                          boot_seed=seed)
        at_kept.append((s.chosen["scores"]["frozen"][WEIGHT_GRID[::2].index(s.weight)], -len(at_kept), s.bm25))
    kept_bm25 = max(at_kept)[2]
    specs = {"default": default, "chosen": chosen, "weight only": weight_only, "BM25 only": bm25,
             "chosen if beyond noise": chosen if vs["low"] > 0 else default,
             "BM25 chosen, weight if beyond noise": ruled,
             "BM25 at the kept weight": choose_weight(sub, rows, None, spec=FusionSpec(bm25=kept_bm25), boot_seed=seed)}
    record = {"chosen": {"k1": chosen.bm25.k1, "b": chosen.bm25.b, "weight": chosen.weight},
              "weight_only": weight_only.weight, "chosen_vs_default": {k: vs[k] for k in ("gain", "low", "high", "n")},
              "ruled": {"weight": ruled.weight, **ruled.chosen.get("against_stay", {}).get("frozen", {})}}
    return specs, record


def train_test(ds: str, enc) -> tuple:
    """(training cache, test cache ranked against its whole corpus) of ``ds``: the corpus bench's
    caches, or the hybrid bench's (``bench_hybrid.DATASETS``, in ``bench_corpus.WORK``) for SQuAD
    v1.1 sentences and Quora duplicates."""
    if ds in ("squad", "quora"):
        return tuple(open_or_cache(spec, WORK) for spec in DATASETS[ds])
    train, test, _ = caches(ds, enc)
    return train, with_corpus(test)


def test_metrics(test, spec: FusionSpec) -> dict:
    r = projhead.evaluate_cache(test, bm25=True, fusion=FusionSpec(weight=spec.weight, frozen_weight=spec.weight,
                                                                   bm25=spec.bm25))["frozen+bm25"]["full_corpus"]
    return {k: r[k] for k in SHOWN}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["quac", "boolq", "fiqa"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/results/fusion_choice")
    args = ap.parse_args()
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []
    for ds in args.datasets:
        train, test_all = train_test(ds, enc)
        memo = {}  # test metrics per fusion: many runs choose alike
        for size in [s for s in args.sizes if s <= len(train.q2c)]:
            for seed in args.seeds:
                sub = train.subset(subset_rows(train.groups, size, seed))
                specs, record = choices(sub, seed)
                test_of = {}
                for rule, spec in specs.items():
                    key = (spec.weight, spec.bm25)
                    if key not in memo:
                        memo[key] = test_metrics(test_all, spec)
                    test_of[rule] = memo[key]
                row = {"dataset": ds, "size": size, "seed": seed, **record, "test": test_of}
                rows.append(row)
                c = record["chosen"]
                print(f"{ds:<6} n {size:>5} seed {seed}  chosen k1 {c['k1']:g} b {c['b']:g} w {c['weight']:.2f} "
                      f"(vs default, held-out MRR@10 {record['chosen_vs_default']['gain']:+.4f}, low "
                      f"{record['chosen_vs_default']['low']:+.4f})  test nDCG@10 " + "  ".join(
                          f"{rule} {100 * test_of[rule]['nDCG@10']:.2f}" for rule in RULES), flush=True)
    write_results(args.out, {
        "bench": "fusion_choice", "encoder": DEFAULT_ENCODER, "default_weight": DEFAULT_WEIGHT,
        "default_bm25": asdict(BM25Settings()), "rows": rows}, table(rows))


def table(rows: list) -> str:
    """Per dataset and size: each rule's test nDCG@10 (mean over seeds; the default's figure, the
    others as a change from it), and how many seeds the noise rule moved off the default."""
    lines = ["| data | pairs | seeds | default nDCG@10 | " + " | ".join(r for r in RULES[1:]) + " | moved off the default (whole choice, weight) |",
             "|" + "---|" * (len(RULES) + 4)]
    for key in dict.fromkeys((r["dataset"], r["size"]) for r in rows):
        rs = [r for r in rows if (r["dataset"], r["size"]) == key]
        base = np.mean([r["test"]["default"]["nDCG@10"] for r in rs])
        cells = [f"{100 * (np.mean([r['test'][rule]['nDCG@10'] for r in rs]) - base):+.2f}" for rule in RULES[1:]]
        moved = f'{sum(r["chosen_vs_default"]["low"] > 0 for r in rs)}, {sum(r["ruled"]["weight"] != DEFAULT_WEIGHT for r in rs)}'
        lines.append(f"| {key[0]} | {key[1]:,} | {len(rs)} | {100 * base:.2f} | " + " | ".join(cells) + f" | {moved} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
