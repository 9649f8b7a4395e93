"""At which fusion should the adapter recipe's fused check compare head and frozen encoder?

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_fused_check.py [--datasets quac]
        [--sizes 100 300 1000] [--seeds 0 1 2] [--out bench/results/fused_check]

Model selection's fallback, the adapter recipe, is kept when its out-of-fold margin gain is
above noise dense and not below 0 fused with BM25 (``recipe.kept``). The fused margins of both
sides are taken at one fixed fusion (dense weight ``fusion.DEFAULT_WEIGHT``, bm25s's default k1
and b), not at the fusion each would be saved with: after the recipe is kept, ``projhead train``
chooses the head's weight and BM25 settings with its fold heads, and the identity would have
been saved with the frozen encoder's own. This bench judges the same runs (the corpus bench's
subsets, ``bench_corpus``: held-out queries ranked against the subset's contexts, and also
against every other text of the file) three ways, where the dense gain is above noise:

- ``fixed``: the library's judgement (``recipe.judge_recipe``), both sides at the fixed fusion.
- ``as saved, margin``: the head's fold heads at the weight and BM25 chosen for it
  (``hybrid.tune_after_selection`` with them, as ``projhead train`` chooses after keeping the
  recipe), the frozen encoder at the identity's own choice on the same queries
  (``hybrid.identity_spec``); the paired bootstrap of the margins.
- ``as saved, MRR@10``: the same two systems compared on MRR@10 (``chosen.against_frozen``).

Each keeps the recipe when its fused gain is not below 0. Beside them, the truth: the recipe
trained on every pair of the subset, its change of test nDCG@10 against the whole corpus, dense,
fused at the fixed fusion, and fused as saved (head + BM25 as chosen for it against frozen +
BM25 as chosen for the identity; each system's own test nDCG@10 in ``test_nDCG@10``). Prints
one line per run and writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_corpus import WORK, caches, with_distractors  # noqa: E402
from bench_small_data import subset_rows  # noqa: E402
from written import write_results  # noqa: E402

import projhead  # noqa: E402
from projhead.batches import held_out  # noqa: E402
from projhead.corpus import load_corpus, with_corpus  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER, get_encoder  # noqa: E402
from projhead.fusion import DEFAULT_WEIGHT, FusionSpec  # noqa: E402
from projhead.hybrid import identity_spec, tune_after_selection  # noqa: E402
from projhead.hybrid_select import bm25_choices  # noqa: E402
from projhead.metrics import paired_bootstrap  # noqa: E402
from projhead.recipe import judge_recipe, margins, train_recipe  # noqa: E402
from projhead.select import group_folds  # noqa: E402
from projhead.train import split_groups  # noqa: E402

CHECKS = ("fixed", "as saved, margin", "as saved, MRR@10")


def as_saved(sub, folds: list, heads: list, cfg) -> tuple[FusionSpec, FusionSpec, dict, dict]:
    """(the head's fusion, the identity's, the margin gain and the MRR@10 gain of head + BM25
    against frozen + BM25, each as saved), every query scored by the fold head that held it out."""
    rows = np.arange(len(sub.q2c))
    grid = bm25_choices(cfg)
    spec = FusionSpec.from_dict(tune_after_selection(
        None, sub, rows, cfg.select_metric, say=lambda t: None, folds=list(zip(folds, heads)), bm25_grid=grid,
        judge=rows, boot_seed=cfg.seed, frozen_bm25_grid=grid)["fusion"])
    frozen = identity_spec(spec)
    mixed = {}
    for side, s, hs in (("head", spec, heads), ("frozen", frozen, [None] * len(heads))):
        fused = replace(cfg, hybrid=True, fusion_weight=s.weight, bm25_k1=s.bm25.k1, bm25_b=s.bm25.b)  # fused as s
        mixed[side] = np.concatenate([margins(held_out(sub, held, fused), h, True)[2] for held, h in zip(folds, hs)])
    ok = np.isfinite(mixed["head"]) & np.isfinite(mixed["frozen"])
    margin = paired_bootstrap(mixed["head"][ok], mixed["frozen"][ok], seed=cfg.seed)
    return spec, frozen, margin, spec.chosen["against_frozen"]


def brief(b: dict) -> dict:
    return {k: b[k] for k in ("gain", "low", "high", "n")}


def nd(results: dict, system: str) -> float:
    return results[system]["full_corpus"]["nDCG@10"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["quac"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/results/fused_check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []
    fixed = FusionSpec(weight=DEFAULT_WEIGHT, frozen_weight=DEFAULT_WEIGHT)
    for ds in args.datasets:
        train, test, _ = caches(ds, enc)
        test_all = with_corpus(test)
        corpus = load_corpus(train)[:2]
        frozen_fixed = projhead.evaluate_cache(test_all, bm25=True, fusion=fixed)
        for size in [s for s in args.sizes if s <= len(train.q2c)]:
            for seed in args.seeds:
                subset = subset_rows(train.groups, size, seed)
                head = train_recipe(train.subset(subset), np.arange(len(subset)), seed=seed)
                t = projhead.evaluate_cache(test_all, head=head, bm25=True, fusion=fixed)
                truth = {"dense": nd(t, "head") - nd(frozen_fixed, "frozen"),
                         "fused fixed": nd(t, "head+bm25") - nd(frozen_fixed, "frozen+bm25")}
                for name, sub in (("subset", train.subset(subset)),
                                  ("corpus", with_distractors(train, subset, corpus, None, seed))):
                    cfg = projhead.TrainConfig(seed=seed)
                    folds = group_folds(split_groups(sub, need=5), 5, seed)
                    v = judge_recipe(sub, folds, cfg, fused=True)
                    row = {"dataset": ds, "size": size, "seed": seed, "ranked": name, "test": dict(truth),
                           "dense": brief(v["margin_gain"]), "fused": {"fixed": brief(v["fused_margin_gain"])}}
                    if v["margin_gain"]["low"] > 0:  # the fused check only matters then
                        spec, frozen, margin, mrr = as_saved(sub, folds, v["fold_heads"], cfg)
                        row["fused"].update({"as saved, margin": brief(margin), "as saved, MRR@10": brief(mrr)})
                        row["saved"] = {side: {"k1": s.bm25.k1, "b": s.bm25.b, "weight": s.weight}
                                        for side, s in (("head", spec), ("frozen", frozen))}
                        th = projhead.evaluate_cache(test_all, head=head, bm25=True, fusion=replace(
                            spec, frozen_weight=spec.weight))
                        tf = projhead.evaluate_cache(test_all, bm25=True, fusion=replace(frozen, frozen_weight=frozen.weight))
                        row["test"]["fused as saved"] = nd(th, "head+bm25") - nd(tf, "frozen+bm25")
                        row["test_nDCG@10"] = {"head+bm25 fixed": nd(t, "head+bm25"), "head+bm25 as saved": nd(
                            th, "head+bm25"), "frozen+bm25 fixed": nd(frozen_fixed, "frozen+bm25"),
                            "frozen+bm25 as saved": nd(tf, "frozen+bm25")}
                    row["kept"] = {c: bool(row["dense"]["low"] > 0 and c in row["fused"] and row["fused"][c]["gain"] >= 0)
                                   for c in CHECKS}
                    rows.append(row)
                    print(f"{ds:<6} n {size:>5} seed {seed} {name:<7} dense {row['dense']['low']:+.4f}..  "
                          + "  ".join(f"{c} {row['fused'][c]['gain']:+.4f}" for c in CHECKS if c in row["fused"])
                          + "  test " + " ".join(f"{k} {100 * x:+.2f}" for k, x in row["test"].items()), flush=True)
    write_results(args.out, {
        "bench": "fused_check", "encoder": DEFAULT_ENCODER, "fixed_weight": DEFAULT_WEIGHT, "rows": rows}, table(rows))


def table(rows: list) -> str:
    """Per check: runs judged fused, runs kept, and the recipe's test changes in those runs (mean
    over every run, 0 where not kept: dense, fused fixed, fused as saved); and per run."""
    n = len(rows)
    judged = [r for r in rows if "fused as saved" in r["test"]]
    saved = ", ".join(f"{100 * r['test']['fused as saved']:+.2f}" for r in judged)
    lines = [f"{n} runs, {len(judged)} with the dense gain above noise; the recipe's test change there, fused as "
             f"saved: {saved}", "", "mean test nDCG@10 of those runs, each system at the fixed fusion and as saved: " + ", ".join(
                 f"{k} {100 * np.mean([r['test_nDCG@10'][k] for r in judged]):.2f}" for k in (
                     judged[0]["test_nDCG@10"] if judged else [])), "",
             "| check | kept | test nDCG@10 change, mean over all runs (0 where not kept): dense | fused, fixed | "
             "fused, as saved | losses kept (fused as saved) |", "|---|---|---|---|---|---|"]
    for c in CHECKS:
        k = [r for r in rows if r["kept"][c]]
        mean = {key: 100 * sum(r["test"].get(key, 0.0) for r in k) / max(n, 1)
                for key in ("dense", "fused fixed", "fused as saved")}
        lines.append(f"| {c} | {len(k)} of {n} | {mean['dense']:+.2f} | {mean['fused fixed']:+.2f} | "
                     f"{mean['fused as saved']:+.2f} | {sum(r['test']['fused as saved'] < 0 for r in k)} |")
    lines += ["", "| data | pairs | seed | ranked against | dense low | " + " | ".join(f"fused gain, {c}" for c in CHECKS)
              + " | saved weights (head / frozen) | test: dense, fused fixed, fused as saved |", "|" + "---|" * 10]
    for r in rows:
        cells = [f"{r['fused'][c]['gain']:+.4f}" if c in r["fused"] else "" for c in CHECKS]
        w = f"{r['saved']['head']['weight']:.2f} / {r['saved']['frozen']['weight']:.2f}" if "saved" in r else ""
        lines.append(f"| {r['dataset']} | {r['size']:,} | {r['seed']} | {r['ranked']} | {r['dense']['low']:+.4f} | "
                     + " | ".join(cells) + f" | {w} | " + ", ".join(f"{100 * x:+.2f}" for x in r["test"].values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
