"""Ranks and retrieval metrics: scorers (dense, BM25), both protocols' figures, per-query
scores and the paired bootstrap. Only numpy (and bm25s for BM25): no cache, no head.

Usage::

    from projhead.metrics import both_protocols, dense_scorer
    both_protocols(dense_scorer(queries, contexts), q2c)  # {"out_of_500": {...}, "full_corpus": {...}}

Both protocols take a *scorer*: a function from a list of query rows to their scores
against every context, ``(len(rows), Nc)``. A dense scorer is a matrix product of vectors;
BM25 gives the same shape from its own index. So frozen, head and BM25 are scored by the
same code.

- ``out_of_n``: consecutive blocks of ``n`` (500) queries in file order; the candidates of a
  block are the distinct gold contexts of its queries; the last, shorter block counts too.
  top-k = share of queries whose gold context ranks in the first k.
- ``full_corpus``: every distinct context of the split is a candidate. recall@k, MRR@10,
  nDCG@10 (one relevant context per query).

Ties are counted against the gold context (rank = number of candidates scoring >= gold,
minus itself), so a constant scorer gets no credit; a non-finite gold score is a miss. A
context whose text is the query's own (duplicate-question data) is never a candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Scorer = Callable[..., np.ndarray]  # scorer(rows, cols=None) -> (len(rows), len(cols) or Nc)
MISS = 2 ** 40  # the rank of a gold context that was not found at all (beyond any k)


def dense_scorer(q: np.ndarray, c: np.ndarray) -> Scorer:
    """Dot product of query rows against the contexts ``cols`` (all by default): cosine for
    normalised vectors."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    c = np.ascontiguousarray(c, dtype=np.float32)
    return lambda rows, cols=None: q[rows] @ (c if cols is None else c[cols]).T  # (R, Nc or |cols|)


def self_matches(query_texts: list[str], context_texts: list[str]) -> np.ndarray:
    """(Nq,) context row whose text is the query's own text, -1 if none. In data with
    questions on both sides (Quora duplicates) every query is also in the corpus; finding
    itself is no retrieval, so evaluation leaves that context out for that query. Empty (or
    blank) texts match nothing: they say no text was kept, not that two are the same."""
    row = {t: i for i, t in enumerate(context_texts) if t.strip()}
    return np.array([row.get(t, -1) for t in query_texts], dtype=np.int64)  # a blank query finds no blank row


def excluding(scorer: Scorer, exclude: np.ndarray | None) -> Scorer:
    """``scorer`` with each query's ``exclude`` context (-1: none) scored -inf."""
    if exclude is None or not (exclude >= 0).any():
        return scorer

    def score(rows, cols=None):
        s = scorer(rows, cols)
        ex = exclude[rows]
        if cols is not None:  # the excluded context's column among cols, -1 where it is not one
            pos = {int(c): j for j, c in enumerate(cols)}
            ex = np.array([pos.get(int(e), -1) if e >= 0 else -1 for e in ex], dtype=np.int64)
        r = np.flatnonzero(ex >= 0)
        s[r, ex[r]] = -np.inf
        return s

    return score


def gold_ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """0-based rank of each row's gold column: candidates scoring >= gold, except gold.
    A non-finite gold score (a diverged head, a broken scorer) is a miss at every depth
    (rank ``MISS``), instead of comparing False with everything and ranking first."""
    g = scores[np.arange(len(gold)), gold][:, None]  # (R, 1)
    r = (scores >= g).sum(axis=1) - 1
    return np.where(np.isfinite(g[:, 0]), r, MISS)


@dataclass
class SystemRanks:
    """One system's ranks on every query, computed once and read by every metric and plot."""

    block: np.ndarray  # (Nq,) gold rank among the distinct gold contexts of the query's block
    full: np.ndarray  # (Nq,) gold rank among all contexts (MISS: not retrieved)
    top: np.ndarray | None = None  # (Nq,) the top-1 context of the full corpus (None with an index)
    top_score: np.ndarray | None = None  # (Nq,) its score


def system_ranks(scorer: Scorer, q2c: np.ndarray, block: int = 500, full: bool = True) -> SystemRanks:
    """Both protocols from one pass: each block of ``block`` queries is scored against every
    context once (``full``), and the block's candidates are columns of those scores; with
    ``full=False`` only the candidate columns are scored (the full corpus comes from an index)."""
    q2c = np.asarray(q2c)
    n = len(q2c)
    out = {k: [] for k in ("block", "full", "top", "top_score")}
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        cand, gold = np.unique(q2c[rows], return_inverse=True)  # distinct gold contexts of the block
        if not full:
            out["block"].append(gold_ranks(scorer(rows, cand), gold))  # (R, |cand|)
            continue
        s = scorer(rows)  # (R, Nc)
        out["full"].append(gold_ranks(s, q2c[rows]))
        out["block"].append(gold_ranks(s[:, cand], gold))
        top = s.argmax(1)
        out["top"].append(top)
        out["top_score"].append(s[np.arange(len(rows)), top])
    cat = {k: np.concatenate(v) if v else None for k, v in out.items()}
    if cat["block"] is None:
        cat["block"] = np.zeros(0, np.int64)
    return SystemRanks(cat["block"], cat["full"] if full else np.zeros(0, np.int64), cat["top"], cat["top_score"])


def block_metrics(r: np.ndarray, ks=(1, 5, 10)) -> dict:
    """The out-of-n protocol's figures from gold ranks among the block's candidates."""
    out = {f"top{k}": float((r < k).mean()) for k in ks}
    out["mrr10"] = float(np.where(r < 10, 1.0 / (r + 1), 0.0).mean())
    return out


def corpus_metrics(r: np.ndarray, ks=(1, 5, 10, 100)) -> dict:
    """The full-corpus figures from gold ranks among all contexts (MISS: not retrieved)."""
    out = {f"R@{k}": float((r < k).mean()) for k in ks}
    out["MRR@10"] = float(np.where(r < 10, 1.0 / (r + 1), 0.0).mean())
    out["nDCG@10"] = float(np.where(r < 10, 1.0 / np.log2(np.minimum(r, 10) + 2), 0.0).mean())
    return out


def topk_ranks(ids: np.ndarray, scores: np.ndarray, q2c: np.ndarray) -> np.ndarray:
    """Gold ranks from top-k lists (ids and scores, as an index returns them), with the same
    tie rule as ``gold_ranks``: listed contexts scoring >= the gold count against it; a gold
    not in the list is a miss (``MISS``)."""
    hit = ids == np.asarray(q2c)[:, None]  # (Nq, k)
    found = hit.any(1)
    g = np.where(found, scores[np.arange(len(ids)), hit.argmax(1)], np.nan)[:, None]
    r = ((scores >= g) & (ids >= 0)).sum(1) - 1
    return np.where(found & np.isfinite(g[:, 0]), r, MISS)


def out_of_n(scorer: Scorer, q2c: np.ndarray, n: int = 500, ks=(1, 5, 10)) -> dict:
    """The out-of-n protocol alone: only the candidate columns are scored."""
    return block_metrics(system_ranks(scorer, q2c, n, full=False).block, ks)


def ranks(scorer: Scorer, q2c: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """0-based rank of each query's gold context among all contexts (ties count against it)."""
    q2c = np.asarray(q2c)
    return np.concatenate([gold_ranks(scorer(rows), q2c[rows])
                           for rows in np.array_split(np.arange(len(q2c)), max(1, -(-len(q2c) // chunk)))])


def full_corpus(scorer: Scorer, q2c: np.ndarray, ks=(1, 5, 10, 100), chunk: int = 1024) -> dict:
    return corpus_metrics(ranks(scorer, q2c, chunk), ks)


# Per-query scores from 0-based gold ranks: what model selection compares query by query.
PER_QUERY = {
    "top1": lambda r: (r < 1).astype(np.float64),
    "top5": lambda r: (r < 5).astype(np.float64),
    "top10": lambda r: (r < 10).astype(np.float64),
    "mrr10": lambda r: np.where(r < 10, 1.0 / (r + 1), 0.0),
    "ndcg10": lambda r: np.where(r < 10, 1.0 / np.log2(r + 2), 0.0),
}


def rank_metrics(r: np.ndarray) -> dict:
    """Mean of every per-query score (``PER_QUERY``) over the ranks ``r``."""
    return {name: float(f(r).mean()) if len(r) else float("nan") for name, f in PER_QUERY.items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``a - b`` (per-query scores of two systems on the same queries) with a
    percentile interval from ``n`` resamples of the queries: is the gain more than noise?"""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) == 0:
        return {"gain": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    block = max(1, min(n, 2_000_000 // len(d)))  # resamples drawn a block at a time (the same draws as one by one)
    means = np.concatenate([d[rng.integers(0, len(d), (min(block, n - i), len(d)))].mean(1)
                            for i in range(0, n, block)])
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"gain": float(d.mean()), "low": float(lo), "high": float(hi), "n": int(len(d))}


def not_above_zero(metric: str, boot: dict) -> str:
    """Why the identity is kept when a held-out gain (``paired_bootstrap``'s) is not above 0."""
    return f"dev {metric} gain {boot['gain']:+.4f} (95% interval {boot['low']:+.4f} to {boot['high']:+.4f}) is not above 0"


def protocols(r: SystemRanks, block: int = 500) -> dict:
    """Both protocols' figures from one system's ranks."""
    return {"out_of_500" if block == 500 else f"out_of_{block}": block_metrics(r.block),
            "full_corpus": corpus_metrics(r.full)}


def both_protocols(scorer: Scorer, q2c: np.ndarray, block: int = 500) -> dict:
    return protocols(system_ranks(scorer, q2c, block), block)


def bm25_scorer(queries: list[str], contexts: list[str], settings=None) -> Scorer:
    """BM25 (bm25s, Lucene variant, English stopwords, Snowball English stemmer, or
    ``settings``: a ``fusion.BM25Settings``) over the distinct contexts; scores of every
    context for each query row."""
    from .fusion import bm25_scorer as scorer

    return scorer(queries, contexts, settings)
