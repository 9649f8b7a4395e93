"""Retrieval metrics: the out-of-500 protocol and full-corpus retrieval, plus BM25.

Usage::

    from projhead.evaluate import evaluate_cache
    table = evaluate_cache(cache, head=head, bm25=True)   # {"frozen": {...}, "head": {...}, "bm25": {...}}

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
    itself is no retrieval, so evaluation leaves that context out for that query."""
    row = {t: i for i, t in enumerate(context_texts)}
    return np.array([row.get(t, -1) for t in query_texts], dtype=np.int64)


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


def bm25_ranks(cache, block: int = 500, exclude: np.ndarray | None = None, settings=None) -> SystemRanks:
    """BM25's ranks on a cache held in memory (its texts)."""
    if exclude is None:
        exclude = self_matches(cache.query_texts, cache.context_texts)
    return system_ranks(excluding(bm25_scorer(cache.query_texts, cache.context_texts, settings), exclude),
                        cache.q2c, block)


def fused_ranks(cache, head=None, spec=None, block: int = 500, exclude: np.ndarray | None = None) -> dict:
    """Ranks of BM25 and of the fused systems on a cache held in memory: ``bm25``,
    ``frozen+bm25`` (at the spec's ``frozen_weight`` when it has one), ``head+bm25`` (with a
    head) at its ``weight``, and ``rrf`` of the best dense system (the head if given) with
    BM25. ``spec``: a ``fusion.FusionSpec`` (default: the head's, else the defaults). Each
    block's BM25 scores are computed once for every system."""
    from .fusion import FusionSpec, fuse, rrf

    spec = spec or (head.fusion if head is not None else None) or FusionSpec()
    if exclude is None:
        exclude = self_matches(cache.query_texts, cache.context_texts)
    bm25 = bm25_scorer(cache.query_texts, cache.context_texts, spec.bm25)
    q, c = cache.queries, cache.contexts
    dense = {"frozen": (q, c)}
    if head is not None:
        dense["head"] = (head.encode_queries(q), head.encode_contexts(c))
    best = dense["head" if head is not None else "frozen"]
    fw = spec.frozen_weight if spec.frozen_weight is not None else spec.weight
    systems = {"bm25": (None, lambda d, b: b), "frozen+bm25": (dense["frozen"], lambda d, b: fuse(d, b, spec, fw))}
    if head is not None:
        systems["head+bm25"] = (dense["head"], lambda d, b: fuse(d, b, spec))
    systems["rrf"] = (best, lambda d, b: rrf(d, b, spec.rrf_k))
    q2c = np.asarray(cache.q2c)
    parts = {name: [] for name in systems}
    for start in range(0, len(q2c), block):  # the protocol's own blocks, one at a time
        rows = np.arange(start, min(start + block, len(q2c)))
        b = bm25(rows)  # (R, Nc)
        for name, (vecs, f) in systems.items():
            d = None if vecs is None else dense_scorer(vecs[0][rows], vecs[1])(np.arange(len(rows)))

            def score(r, cols=None, d=d, f=f):
                s = f(None if d is None else d[r], b[r])
                return s if cols is None else s[:, cols]

            parts[name].append(system_ranks(excluding(score, exclude[rows]), q2c[rows], block))
    return {name: SystemRanks(*(np.concatenate([getattr(p, k) for p in ps])
                                for k in ("block", "full", "top", "top_score")))
            for name, ps in parts.items()}


def _dense_ranks(q, c, q2c, block, index, search_kw, exclude=None) -> SystemRanks:
    scorer = excluding(dense_scorer(q, c), exclude)
    if index is None:
        return system_ranks(scorer, q2c, block)
    from .search import build_index, search

    chunks = (c[i:i + 65536] for i in range(0, len(c), 65536))
    scores, ids = search(build_index(chunks, c.shape[1], index), q, k=100, **search_kw)
    r = system_ranks(scorer, q2c, block, full=False)  # the blocks' candidate columns only
    r.full = topk_ranks(ids, scores, q2c)
    return r


def evaluate_cache(cache, head=None, bm25: bool = False, block: int = 500, index: str | None = None,
                   return_ranks: bool = False, fusion=None, **search_kw):
    """Metrics of the frozen vectors, of ``head`` (if given) and of BM25 (if asked), both
    protocols, on every query of ``cache``. ``index``: a FAISS index-factory string
    (``Flat``, ``HNSW32``, ``IVF1024,Flat``...) for the full-corpus protocol (see
    ``projhead.search``); ``search_kw``: ``nprobe``, ``ef_search``. Each system's ranks are
    computed once; ``return_ranks`` also returns them ({system: SystemRanks}, for the report).
    With ``bm25``, the fused systems too (``fused_ranks``: frozen + BM25, head + BM25,
    RRF) with ``fusion`` (a ``fusion.FusionSpec``; default: the head's, else the defaults)."""
    exclude = self_matches(cache.query_texts, cache.context_texts)
    if index is not None and (exclude >= 0).any():
        from .search import SearchError

        raise SearchError(f"{cache.path}: queries that are also contexts (duplicate-question data) are not "
                         "supported with index=; evaluate without an index")
    every = {"frozen": _dense_ranks(cache.queries, cache.contexts, cache.q2c, block, index, search_kw, exclude)}
    if head is not None:
        head.check_cache(cache)
        q, c = head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)
        every["head"] = _dense_ranks(q, c, cache.q2c, block, index, search_kw, exclude)
    if bm25 and index is None:
        every.update(fused_ranks(cache, head, fusion, block, exclude))
    elif bm25:
        every["bm25"] = bm25_ranks(cache, block, exclude, fusion.bm25 if fusion is not None else None)
    results = {name: protocols(r, block) for name, r in every.items()}
    return (results, every) if return_ranks else results


def _text_hashes(column) -> np.ndarray:
    """8-byte hashes of a text column, read in chunks: set operations on millions of texts
    without holding the strings."""
    import hashlib

    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
                        for t in column), dtype=np.uint64, count=len(column))


def evaluate_streamed(path, head=None, index: str = "Flat", block: int = 500, chunk: int = 65536,
                      **search_kw) -> dict:
    """``evaluate_cache`` with an index, reading the cache file in chunks (``projhead eval
    --index``): contexts stream into the FAISS index, queries are read a block at a time and
    searched, and each block's candidate contexts are read for the out-of-500 protocol. Memory
    is the index, one chunk and 8 bytes a query; the fingerprint of the texts is checked in
    the same streaming way."""
    import h5py

    from .cache import CacheError, TextColumn, open_cache, read_rows
    from .data import content_sha256
    from .search import SearchError, build_index, search

    cache = open_cache(path, load=False)  # format, attributes and shapes
    if head is not None:
        head.check_cache(cache)
    systems = {"frozen": (lambda x: x, lambda x: x)}
    if head is not None:
        systems["head"] = (head.encode_queries, head.encode_contexts)

    def finite(x, what, a):
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise CacheError(f"{cache.path}: {what} holds NaN or Inf (first: row {a + int(np.flatnonzero(bad)[0])})")
        return x

    with h5py.File(cache.path, "r") as f:
        Qd, Cd = f["queries/vectors"], f["contexts/vectors"]
        q2c = f["queries/context"][()].astype(np.int64)  # (Nq,)
        texts = [TextColumn(f[k], chunk) for k in ("queries/text", "queries/id", "queries/group", "contexts/text")]
        if cache.attrs["fingerprint"] != content_sha256(*texts, q2c):
            raise CacheError(f"{cache.path}: damaged cache, its texts or index do not match their checksum (fingerprint)")
        if np.isin(_text_hashes(texts[0]), _text_hashes(texts[3])).any():
            raise SearchError(f"{cache.path}: queries that are also contexts (duplicate-question data) are not "
                              "supported with an index; evaluate without one")
        results = {}
        for name, (fq, fc) in systems.items():
            contexts = (fc(finite(Cd[a:a + chunk].astype(np.float32), "contexts/vectors", a))
                        for a in range(0, len(Cd), chunk))
            idx = build_index(contexts, cache.dim if head is None or name == "frozen" else head.config.output_dim,
                              index)
            blocks, full = [], []
            for a in range(0, len(q2c), block):
                gold_ctx = q2c[a:a + block]
                q = np.asarray(fq(finite(Qd[a:a + block].astype(np.float32), "queries/vectors", a)), np.float32)
                cand, gold = np.unique(gold_ctx, return_inverse=True)
                c = np.asarray(fc(read_rows(Cd, cand)), np.float32)
                blocks.append(gold_ranks(q @ c.T, gold))  # (R, |cand|): the block's candidates only
                scores, ids = search(idx, q, k=100, **search_kw)
                full.append(topk_ranks(ids, scores, gold_ctx))
            del idx
            r = SystemRanks(np.concatenate(blocks) if blocks else np.zeros(0, np.int64),
                            np.concatenate(full) if full else np.zeros(0, np.int64))
            results[name] = protocols(r, block)
    return results


def format_table(results: dict) -> str:
    """Markdown table, one row per system, both protocols side by side (percent)."""
    systems = list(results)
    cols = [(p, m) for p in results[systems[0]] for m in results[systems[0]][p]]
    head = "| system | " + " | ".join(f"{'500' if p.startswith('out') else 'full'} {m}" for p, m in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for s in systems:
        vals = [results[s][p][m] for p, m in cols]
        lines.append(f"| {s} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def format_changes(every: dict) -> str:
    """Markdown table: per cache, the head's change against the frozen encoder (points)
    on the headline metrics of both protocols."""
    cols = [("out_of_500", "top1"), ("out_of_500", "top10"), ("full_corpus", "R@1"), ("full_corpus", "nDCG@10")]
    lines = ["| cache | frozen full nDCG@10 | " + " | ".join(f"{'500' if p.startswith('out') else 'full'} {m}"
                                                          for p, m in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, r in every.items():
        vals = []
        for p, m in cols:
            key = p if p in r["head"] else next(k for k in r["head"] if k.startswith("out"))
            vals.append(f"{100 * (r['head'][key][m] - r['frozen'][key][m]):+.1f}")
        lines.append(f"| {name} | {100 * r['frozen']['full_corpus']['nDCG@10']:.1f} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
