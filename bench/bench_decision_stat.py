"""Which per-query statistic of held-out queries can see a small real gain?

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_decision_stat.py [--datasets quac boolq fiqa]
        [--sizes 100 300 1000] [--seeds 0 1 2] [--out bench/results/decision_stat]

Model selection keeps a head when the paired bootstrap of a per-query score (MRR@10 by
default) over held-out queries puts the gain above 0. At a few hundred pairs that test
cannot see gains of the size the LlamaIndex adapter recipe (lr 1e-3) makes on QuAC, nor tell
them from its losses on BoolQ and FiQA. This bench asks whether another statistic of the same
held-out queries can: the recipe, fixed in advance, is trained on four of model selection's
five folds (``bench_corpus.judged_adapter``, held-out queries ranked against the subset's
contexts and every other text of the file, as ``projhead-corpus``), each held-out fold scored
by its fold's adapter and by the frozen encoder, and the paired bootstrap run on each statistic:

- ``mrr10``: reciprocal rank of the gold context within the top 10, else 0 (the default's).
- ``rr``: reciprocal rank at any depth.
- ``margin``: the gold context's cosine minus the best other candidate's (every query counts,
  also those whose gold is far below the top 10); not invariant to a change of the scores' scale.
- ``zmargin``: the margin divided by the standard deviation of the query's scores over every
  candidate (invariant to scale and shift of a query's scores).

Beside each run: the adapter trained on every pair, scored on the test questions against the
whole corpus (nDCG@10), the truth the statistic should predict.

``--squad-sizes`` / ``--quora-sizes``: also subsets of the SQuAD v1.1 train sentences and of the
Quora sample's training pairs (``bench_small_data``'s caches and subsets), where
all-MiniLM-L6-v2 was trained and the recipe loses; held-out queries ranked against the subset's
contexts and a seeded sample of ``--distractors`` other training contexts; test: SQuAD v1.1 dev
(sentence contexts) and the Quora test pairs, full-corpus nDCG@10.

``--fused W``: the fields (``--datasets``) judged and tested fused with BM25 (per-query z-scores,
dense weight W, bm25s's default k1 and b), head + BM25 against frozen + BM25, where most search
engines would serve the head: the check inside the fusion that model selection also makes.

``--null-seeds N``: also the null benchmark's data (``bench_null.make_data``: queries are their
context plus isotropic noise, so no head can beat the frozen encoder and a keep is a false
one) at each ``--null-sizes``, N fresh data sets each, and its planted rotation (a head can
undo it: keeping is right) with ``--planted-seeds``; the same out-of-fold judgement.

Nothing here changes what ``projhead train`` does. Prints one line per run and writes
``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_corpus import caches, with_distractors  # noqa: E402
from bench_small_data import adapter, subset_rows  # noqa: E402

import projhead  # noqa: E402
from projhead.batches import held_out  # noqa: E402
from projhead.corpus import load_corpus, with_corpus  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER, get_encoder  # noqa: E402
from projhead.fusion import FusionSpec, fused_scorer  # noqa: E402
from projhead.metrics import dense_scorer, excluding, paired_bootstrap  # noqa: E402
from projhead.select import group_folds  # noqa: E402
from projhead.train import split_groups  # noqa: E402

STATS = ("mrr10", "rr", "margin", "zmargin")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def per_query(s: np.ndarray, gold: np.ndarray) -> dict:
    """Each statistic of ``STATS`` per query, from the scores ``s`` (R, Nc) of every candidate."""
    rows = np.arange(len(gold))
    g = s[rows, gold]
    other = s.copy()
    other[rows, gold] = -np.inf
    r = (other >= g[:, None]).sum(1)
    margin = g - other.max(1)
    finite = np.where(np.isfinite(s), s, np.nan)
    return {"mrr10": np.where(r < 10, 1.0 / (r + 1), 0.0), "rr": 1.0 / (r + 1), "margin": margin,
            "zmargin": margin / np.nanstd(finite, axis=1).clip(min=1e-12)}


def scores(dev, q: np.ndarray) -> np.ndarray:
    """Cosines of ``q`` against every candidate of ``dev`` (a ``batches.DevSet``), fused with
    its BM25 (per-query z-scores at its dense weight) when it has one."""
    scorer = dense_scorer(unit(q), unit(dev.c))
    if dev.bm25 is not None:
        scorer = fused_scorer(scorer, lambda rows: dev.bm25[rows].toarray(), FusionSpec(), dev.weight)
    return excluding(scorer, dev.exclude)(np.arange(len(q)))


def judged(sub, seed: int, folds: int = 5, fused: float | None = None) -> dict:
    """The out-of-fold paired bootstrap of every statistic: adapter against frozen; ``fused``:
    both fused with BM25 at this dense weight."""
    rows = np.arange(len(sub.q2c))
    cfg = projhead.TrainConfig(seed=seed, hybrid=True, fusion_weight=fused) if fused is not None else None
    mine, base = {k: [] for k in STATS}, {k: [] for k in STATS}
    for held in group_folds(split_groups(sub, need=folds), folds, seed):
        dev = held_out(sub, held, cfg)
        fold = adapter(sub.subset(np.setdiff1d(rows, held)), lr=1e-3, warmup=100, seed=seed)
        for store, q in ((mine, fold.encode_queries(dev.q)), (base, dev.q)):
            for k, v in per_query(scores(dev, q), dev.gold).items():
                store[k].append(v)
    out = {}
    for k in STATS:
        b = paired_bootstrap(np.concatenate(mine[k]), np.concatenate(base[k]), seed=seed)
        out[k] = {"gain": b["gain"], "low": b["low"], "high": b["high"], "kept": bool(b["low"] > 0), "n": b["n"]}
    return out


def synthetic(size: int, rotate: float, seed: int) -> dict:
    """``judged`` on the null benchmark's data (``rotate`` 0: no head can help; 0.5: planted)."""
    import tempfile

    from bench_null import make_data

    from projhead.cache import build_cache, open_cache

    pairs, enc = make_data(size, 64, 2.5, rotate, seed=1000 + seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_cache(pairs, enc, Path(tmp) / "c.h5", progress=False)
        return judged(open_cache(Path(tmp) / "c.h5"), seed)


def small_data(ds: str, sizes: list[int], seeds: list[int], distractors: int, enc) -> list[dict]:
    """``judged`` on SQuAD or Quora training subsets, tested on their test queries."""
    from bench_small_data import WORK
    from projhead.cache_naming import cache_dataset

    data = os.environ.get("PROJHEAD_DATA")
    if ds == "squad":
        train = cache_dataset("squad-v1.1", "train", "sentence", enc, WORK, data)
        test = cache_dataset("squad-v1.1", "dev", "sentence", enc, WORK, data)
    else:
        train = cache_dataset("quora", "train", "question", enc, WORK, data)
        test = cache_dataset("quora", "dev", "question", enc, WORK, data)
    return runs_on(ds, train, test, (np.zeros((0, train.dim), np.float32), []), distractors, sizes, seeds)


def runs_on(ds: str, train, test, corpus: tuple, sample: int | None, sizes: list[int], seeds: list[int],
            fused: float | None = None) -> list[dict]:
    """Per size and seed: the recipe on a subset of ``train``, ``judged`` with the other texts
    (``corpus`` and the train contexts outside the subset; a seeded ``sample`` of them) as
    distractors, and its change of full-corpus nDCG@10 on ``test``; ``fused``: both judged and
    tested fused with BM25 at this dense weight (head + BM25 against frozen + BM25)."""
    def test_ndcg(head):
        if fused is None:
            r = projhead.evaluate_cache(test, head=head)
            return r["head" if head is not None else "frozen"]["full_corpus"]["nDCG@10"]
        r = projhead.evaluate_cache(test, head=head, bm25=True, fusion=FusionSpec(weight=fused, frozen_weight=fused))
        return r["head+bm25" if head is not None else "frozen+bm25"]["full_corpus"]["nDCG@10"]

    frozen = test_ndcg(None)
    out = []
    for size in [s for s in sizes if s <= len(train.q2c)]:
        for seed in seeds:
            subset = subset_rows(train.groups, size, seed)
            full = adapter(train.subset(subset), lr=1e-3, warmup=100, seed=seed)
            test_gain = test_ndcg(full) - frozen
            stats = judged(with_distractors(train, subset, corpus, sample, seed), seed, fused=fused)
            out.append({"dataset": ds, "size": size, "seed": seed, "test_gain": test_gain, "stats": stats})
            print(f"{ds:<6} n {size:>5} seed {seed}  test nDCG@10 {100 * test_gain:+.2f}  " + "  ".join(
                f"{k} {v['gain']:+.4f} ({v['low']:+.4f} to {v['high']:+.4f}){' kept' if v['kept'] else ''}"
                for k, v in stats.items()), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="*", default=["quac", "boolq", "fiqa"], help="none: the synthetic data only")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--squad-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--quora-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--distractors", type=int, default=10000, help="SQuAD / Quora: other training contexts ranked too")
    ap.add_argument("--fused", type=float, default=None, metavar="W",
                    help="the fields (--datasets) judged and tested fused with BM25 at this dense weight")
    ap.add_argument("--null-seeds", type=int, default=0, help="null data sets at each --null-sizes")
    ap.add_argument("--null-sizes", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--planted-seeds", type=int, default=0, help="planted-rotation data sets at each --null-sizes")
    ap.add_argument("--out", default="bench/results/decision_stat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []
    for kind, rotate, n_seeds in (("null", 0.0, args.null_seeds), ("planted", 0.5, args.planted_seeds)):
        for size in args.null_sizes if n_seeds else []:
            for seed in range(n_seeds):
                stats = synthetic(size, rotate, seed)
                rows.append({"dataset": kind, "size": size, "seed": seed, "test_gain": None, "stats": stats})
                print(f"{kind:<7} n {size:>5} seed {seed}  " + "  ".join(
                    f"{k} {v['gain']:+.4f}{' kept' if v['kept'] else ''}" for k, v in stats.items()), flush=True)
    for ds, sizes in (("squad", args.squad_sizes), ("quora", args.quora_sizes)):
        if sizes:
            rows += small_data(ds, sizes, args.seeds, args.distractors, enc)
    for ds in args.datasets:
        train, test, _ = caches(ds, enc)
        rows += runs_on(ds, train, with_corpus(test), load_corpus(train)[:2], None, args.sizes, args.seeds, args.fused)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "decision_stat", "encoder": DEFAULT_ENCODER, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


def table(rows: list) -> str:
    """Per dataset and size: the adapter's test gains by seed, and for each statistic the
    seeds in which the held-out test kept it."""
    lines = ["| data | pairs | adapter's test nDCG@10 change, by seed | " + " | ".join(
        f"kept on `{k}`" for k in STATS) + " |", "|---|---|---|" + "---|" * len(STATS)]
    for key in dict.fromkeys((r["dataset"], r["size"]) for r in rows):  # synthetic data first
        runs = [r for r in rows if (r["dataset"], r["size"]) == key]
        gains = ("none can gain: a keep is false" if key[0] == "null" else "a head can gain: a keep is right"
                 if key[0] == "planted" else ", ".join(f"{100 * r['test_gain']:+.1f}" for r in runs))
        kept = [f"{sum(r['stats'][k]['kept'] for r in runs)}/{len(runs)}" for k in STATS]
        lines.append(f"| {key[0]} | {key[1]:,} | {gains} | " + " | ".join(kept) + " |")
    real = [r for r in rows if r["test_gain"] is not None]
    right = {k: sum(r["stats"][k]["kept"] == (r["test_gain"] > 0) for r in real) for k in STATS}
    if real:
        lines.append(f"| all fields | | {len(real)} runs | " + " | ".join(
            f"{right[k]} decisions right (kept a gain, passed over a loss)" for k in STATS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
