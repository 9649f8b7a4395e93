"""How model selection judges its fallback, the adapter recipe, and what that decision is worth.

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_recipe_judge.py [--datasets quac boolq fiqa]
        [--sizes 100 300 1000] [--seeds 0 1 2] [--out bench/results/recipe_judge]
    python bench/bench_recipe_judge.py --reread bench/results/null_recipe.json

The corpus bench's fields and subsets (``bench_corpus``: BoolQ, FiQA and QuAC, each with every
text of its file as the corpus). Per dataset, size and seed, the library's own judgement
(``recipe.judge_recipe``, on model selection's five folds: what ``projhead train`` does when its
search ends with the identity), once with held-out queries ranked against the subset's contexts
and once also against every other text of the file (``projhead-corpus``), beside the truth:
the recipe trained on every pair, its change of test nDCG@10 against the whole corpus, dense
(head against frozen) and fused with BM25 (head + BM25 against frozen + BM25, per-query z-scores,
dense weight ``fusion.DEFAULT_WEIGHT``, bm25s's default k1 and b).

Two rules read the same judgement: ``both above 0`` (the dense and the fused margin gain's 95%
intervals above 0) and ``dense above 0, fused not below`` (the library's: ``recipe.kept``). For
each, the default's expected change when the candidates keep the identity: the recipe's test
change where kept, else 0. Nothing here runs the candidates' search (bench_corpus does).

Prints one line per run and writes ``OUT.json`` and ``OUT.md``.

``--samples N [N ...]``: instead, today's rule only, with the held-out queries ranked against
the subset's contexts and a seeded sample of N of the other texts (0: none; -1: all of them):
how many distractors the decision needs. One table row per dataset and size, kept runs and the
default's mean change per sample.

``--reread RUNS.json``: nothing is trained; the recipe's judgements a null benchmark recorded
(``bench_null``'s ``runs``: null data, where any keep is false, and the planted rotation, where
keeping is right) read again under each rule: how many each keeps, per data and size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_corpus import WORK, caches, with_distractors  # noqa: E402
from bench_small_data import subset_rows  # noqa: E402
from written import write_results  # noqa: E402

import projhead  # noqa: E402
from projhead.corpus import load_corpus, with_corpus  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER, get_encoder  # noqa: E402
from projhead.fusion import DEFAULT_WEIGHT, FusionSpec  # noqa: E402
from projhead.hybrid import has_texts  # noqa: E402
from projhead.recipe import judge_recipe, kept, train_recipe  # noqa: E402
from projhead.select import group_folds  # noqa: E402
from projhead.train import split_groups  # noqa: E402

RULES = {"both above 0": lambda v: all(v[k]["low"] > 0 for k in ("margin_gain", "fused_margin_gain") if k in v),
         "dense above 0, fused not below": kept}


def test_ndcg(test, head) -> tuple[float, float]:
    """Full-corpus nDCG@10 of ``head`` (None: frozen) on ``test``, dense and fused with BM25."""
    r = projhead.evaluate_cache(test, head=head, bm25=True, fusion=FusionSpec(weight=DEFAULT_WEIGHT,
                                                                              frozen_weight=DEFAULT_WEIGHT))
    side = "head" if head is not None else "frozen"
    return r[side]["full_corpus"]["nDCG@10"], r[f"{side}+bm25"]["full_corpus"]["nDCG@10"]


def brief(b: dict) -> dict:
    return {k: b[k] for k in ("gain", "low", "high", "n")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["quac", "boolq", "fiqa"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/results/recipe_judge")
    ap.add_argument("--reread", default=None, metavar="RUNS.json", help="a bench_null result: its recipe judgements")
    ap.add_argument("--samples", type=int, nargs="+", default=None, metavar="N",
                    help="judge with N of the other texts as distractors (0 none, -1 all), today's rule only")
    args = ap.parse_args()
    if args.reread:
        print(reread(json.loads(Path(args.reread).read_text())["runs"]))
        return
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []
    for ds in args.datasets:
        train, test, _ = caches(ds, enc)
        test_all = with_corpus(test)
        corpus = load_corpus(train)[:2]
        frozen = test_ndcg(test_all, None)
        for size in [s for s in args.sizes if s <= len(train.q2c)]:
            for seed in args.seeds:
                subset = subset_rows(train.groups, size, seed)
                head = train_recipe(train.subset(subset), np.arange(len(subset)), seed=seed)
                dense, fused = (a - b for a, b in zip(test_ndcg(test_all, head), frozen))
                row = {"dataset": ds, "size": size, "seed": seed, "test_gain": dense, "test_fused_gain": fused}
                if args.samples:
                    row["samples"] = {}
                    for n in args.samples:
                        sub = train.subset(subset) if n == 0 else with_distractors(train, subset, corpus,
                                                                                   None if n < 0 else n, seed)
                        v = judge_recipe(sub, group_folds(split_groups(sub, need=5), 5, seed),
                                         projhead.TrainConfig(seed=seed), has_texts(sub))
                        row["samples"][str(n)] = {"distractors": int(sub.n_distractors), "kept": bool(kept(v)),
                                                  **{k: brief(v[k]) for k in ("margin_gain", "fused_margin_gain") if k in v}}
                    rows.append(row)
                    print(f"{ds:<6} n {size:>5} seed {seed}  test nDCG@10 {100 * dense:+.2f}  " + "  ".join(
                        f"{n}: {'kept' if r['kept'] else 'not'} (margin from {r['margin_gain']['low']:+.4f})"
                        for n, r in row["samples"].items()), flush=True)
                    continue
                for name, sub in (("subset", train.subset(subset)),
                                  ("corpus", with_distractors(train, subset, corpus, None, seed))):
                    v = judge_recipe(sub, group_folds(split_groups(sub, need=5), 5, seed),
                                     projhead.TrainConfig(seed=seed), has_texts(sub))
                    row[name] = {**{k: brief(v[k]) for k in ("margin_gain", "fused_margin_gain") if k in v},
                                 "kept": {rule: bool(f(v)) for rule, f in RULES.items()}}
                rows.append(row)
                print(f"{ds:<6} n {size:>5} seed {seed}  test nDCG@10 {100 * dense:+.2f} (fused {100 * fused:+.2f})  " + "  ".join(
                    f"{name}: margin {row[name]['margin_gain']['low']:+.4f}..{row[name]['margin_gain']['high']:+.4f}"
                    + (f" fused {row[name]['fused_margin_gain']['gain']:+.4f} ({row[name]['fused_margin_gain']['low']:+.4f}.."
                       f"{row[name]['fused_margin_gain']['high']:+.4f})" if "fused_margin_gain" in row[name] else "")
                    + " kept: " + "/".join("y" if k else "n" for k in row[name]["kept"].values())
                    for name in ("subset", "corpus")), flush=True)
    write_results(args.out, {
        "bench": "recipe_judge", "encoder": DEFAULT_ENCODER, "fusion_weight": DEFAULT_WEIGHT, "samples": args.samples,
        "rows": rows}, sample_table(rows, args.samples) if args.samples else table(rows))


def sample_table(rows: list, samples: list[int]) -> str:
    """Per dataset and size: the recipe's mean test change; per sample of distractors (their mean
    count), runs kept by today's rule and the default's mean change (the recipe's where kept, else 0)."""
    name = {0: "none", -1: "all"}
    lines = ["| data | pairs | seeds | recipe's mean test nDCG@10 change | " + " | ".join(
        f"{name.get(n, f'{n:,}')} distractors: kept, mean change" for n in samples) + " |", "|" + "---|" * (4 + len(samples))]
    for ds, size in sorted({(r["dataset"], r["size"]) for r in rows}):
        rs = [r for r in rows if (r["dataset"], r["size"]) == (ds, size)]
        cells = []
        for n in samples:
            k = [r["samples"][str(n)]["kept"] for r in rs]
            d = np.mean([r["samples"][str(n)]["distractors"] for r in rs])
            cells.append(f"{sum(k)}/{len(k)}, {100 * np.mean([r['test_gain'] if x else 0.0 for r, x in zip(rs, k)]):+.2f}"
                         + (f" ({d:,.0f})" if n < 0 else ""))
        lines.append(f"| {ds} | {size:,} | {len(rs)} | {100 * np.mean([r['test_gain'] for r in rs]):+.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reread(runs: list) -> str:
    """Per data and size of a null benchmark's ``runs``: runs, recipe judged in place of the identity
    (not beside a kept candidate), and kept by each rule."""
    lines = ["| data | pairs | runs | recipe judged | " + " | ".join(f"recipe kept, {rule}" for rule in RULES) + " |",
             "|" + "---|" * (4 + len(RULES))]
    for key in sorted({(r["data"], r["size"]) for r in runs}):
        rs = [r for r in runs if (r["data"], r["size"]) == key]
        judged = [r["recipe"] for r in rs if "margin_gain" in (r.get("recipe") or {}) and "beside" not in r["recipe"]]
        lines.append(f"| {key[0]} | {key[1]:,} | {len(rs)} | {len(judged)} | "
                     + " | ".join(str(sum(bool(f(v)) for v in judged)) for f in RULES.values()) + " |")
    return "\n".join(lines) + "\n"


def table(rows: list) -> str:
    """Per dataset and size: the recipe's test changes by seed; per rule, runs kept (without / with
    the corpus) and the default's mean change (the recipe's where kept, else 0)."""
    head = "| data | pairs | recipe's test nDCG@10 change by seed (fused with BM25) | " + " | ".join(
        f"{rule}: kept / default's mean (without, with corpus)" for rule in RULES) + " |"
    lines = [head, "|" + "---|" * (3 + len(RULES))]
    keys = sorted({(r["dataset"], r["size"]) for r in rows}, key=lambda k: (["quac", "boolq", "fiqa"].index(k[0])
                                                                             if k[0] in ("quac", "boolq", "fiqa") else 9, k[1]))
    for ds, size in keys:
        rs = [r for r in rows if (r["dataset"], r["size"]) == (ds, size)]
        cells = []
        for rule in RULES:
            parts = []
            for name in ("subset", "corpus"):
                k = [r[name]["kept"][rule] for r in rs]
                parts.append(f"{sum(k)}/{len(k)}, {100 * np.mean([r['test_gain'] if x else 0.0 for r, x in zip(rs, k)]):+.2f}")
            cells.append("; ".join(parts))
        lines.append(f"| {ds} | {size:,} | mean {100 * np.mean([r['test_gain'] for r in rs]):+.2f}: " + ", ".join(f"{100 * r['test_gain']:+.2f} ({100 * r['test_fused_gain']:+.2f})"
                                                         for r in rs) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
