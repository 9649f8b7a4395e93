"""Evaluating a cache: frozen vectors, a head and BM25 on every query, both protocols.

Usage::

    from projhead.evaluate import evaluate_cache
    table = evaluate_cache(cache, head=head, bm25=True)   # {"frozen": {...}, "head": {...}, "bm25": {...}}
    evaluate_streamed("cache/big.h5", head, index="IVF1024,Flat")   # the file read in chunks

The protocols, the tie rule and the metrics are ``metrics``'s (re-exported here); the
full-corpus protocol at scale searches a FAISS index (``search``).
"""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from .corpus import labelled_only
from .metrics import (MISS, PER_QUERY, Scorer, SystemRanks, block_metrics, bm25_scorer, both_protocols,  # noqa: F401
                      corpus_metrics, dense_scorer, excluding, full_corpus, gold_ranks, out_of_n,
                      paired_bootstrap, protocols, rank_metrics, ranks, self_matches, system_ranks, topk_ranks)


def bm25_ranks(cache, block: int = 500, exclude: np.ndarray | None = None, settings=None) -> SystemRanks:
    """BM25's ranks on a cache held in memory (its texts); with corpus rows (``with_corpus``),
    the out-of-500 ranks are those of the labelled contexts alone (``corpus.labelled_only``)."""
    if exclude is None:
        exclude = self_matches(cache.query_texts, cache.context_texts)
    r = system_ranks(excluding(bm25_scorer(cache.query_texts, cache.context_texts, settings), exclude),
                     cache.q2c, block)
    lab = labelled_only(cache)
    return r if lab is cache else replace(r, block=bm25_ranks(lab, block, settings=settings).block)


def fused_ranks(cache, head=None, spec=None, block: int = 500, exclude: np.ndarray | None = None) -> dict:
    """Ranks of BM25 and of the fused systems on a cache held in memory: ``bm25``,
    ``frozen+bm25`` (at the spec's ``baseline``: as the identity would have been saved), ``head+bm25`` (with a
    head) at its ``weight``, and ``rrf`` of the best dense system (the head if given) with
    BM25. ``spec``: a ``fusion.FusionSpec`` (default: the head's, else the defaults). Each
    block's BM25 scores are computed once for every system. With corpus rows (``with_corpus``),
    the out-of-500 ranks are those of the labelled contexts alone (``corpus.labelled_only``:
    BM25's statistics and each query's normalisation over them), as without a corpus."""
    every = _fused_ranks(cache, head, spec, block, exclude)
    lab = labelled_only(cache)
    if lab is cache:
        return every
    inside = _fused_ranks(lab, head, spec, block, None)
    return {name: replace(r, block=inside[name].block) for name, r in every.items()}


def _fused_ranks(cache, head, spec, block: int, exclude: np.ndarray | None) -> dict:
    """``fused_ranks`` with both protocols on every context of ``cache``."""
    from .fusion import FusionSpec, fuse, rrf

    spec = spec or (head.fusion if head is not None else None) or FusionSpec()
    if exclude is None:
        exclude = self_matches(cache.query_texts, cache.context_texts)
    bm25 = bm25_scorer(cache.query_texts, cache.context_texts, spec.bm25)
    fw, fb = spec.baseline  # frozen + BM25 as the identity would have been saved
    base = bm25 if fb == spec.bm25 else bm25_scorer(cache.query_texts, cache.context_texts, fb)
    q, c = cache.queries, cache.contexts
    dense = {"frozen": (q, c)}
    if head is not None:
        dense["head"] = (head.encode_queries(q), head.encode_contexts(c))
    best = dense["head" if head is not None else "frozen"]
    systems = {"bm25": (None, lambda d, b, bb: b), "frozen+bm25": (dense["frozen"], lambda d, b, bb: fuse(d, bb, spec, fw))}
    if head is not None:
        systems["head+bm25"] = (dense["head"], lambda d, b, bb: fuse(d, b, spec))
    systems["rrf"] = (best, lambda d, b, bb: rrf(d, b, spec.rrf_k))
    q2c = np.asarray(cache.q2c)
    parts = {name: [] for name in systems}
    for start in range(0, len(q2c), block):  # the protocol's own blocks, one at a time
        rows = np.arange(start, min(start + block, len(q2c)))
        b = bm25(rows)  # (R, Nc)
        bb = b if base is bm25 else base(rows)
        for name, (vecs, f) in systems.items():
            d = None if vecs is None else dense_scorer(vecs[0][rows], vecs[1])(np.arange(len(rows)))

            def score(r, cols=None, d=d, f=f):
                s = f(None if d is None else d[r], b[r], bb[r])
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


def evaluate_streamed(path, head=None, index: str = "Flat", block: int = 500, chunk: int = 65536,
                      corpus: int | None = None, **search_kw) -> dict:
    """``evaluate_cache`` with an index, reading the cache file in chunks (``projhead eval
    --index``): contexts stream into the FAISS index, queries are read a block at a time and
    searched, and each block's candidate contexts are read for the out-of-500 protocol. Memory
    is the index, one chunk and 8 bytes a query; the fingerprint of the texts is checked in
    the same streaming way. The cache's corpus rows go into the index after the contexts
    (``corpus``: all when None, a seeded sample of that many, none for 0); ``"distractors"``
    in the result says how many."""
    import h5py

    from .cache_reader import CacheError, TextColumn, open_cache, read_rows, shards_said
    from .data import content_sha256
    from .h5strings import column
    from .hashing import text_hashes
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
            raise CacheError(f"{cache.path}: {what} holds NaN or Inf (first: row {a + int(np.flatnonzero(bad)[0])})"
                             + shards_said(cache.path))
        return x

    extra = np.zeros(0, np.int64)
    if corpus != 0 and "corpus" in cache.sections:
        from .corpus import sample_rows

        with cache.section_data("corpus") as d:  # checked (fingerprint, finite) a chunk at a time
            extra = sample_rows(d["text"].shape[0], corpus)
    with h5py.File(cache.path, "r") as f:
        Qd, Cd = f["queries/vectors"], f["contexts/vectors"]
        q2c = f["queries/context"][()].astype(np.int64)  # (Nq,)
        texts = [TextColumn(column(f, k), chunk) for k in ("queries/text", "queries/id", "queries/group", "contexts/text")]
        v2 = int(cache.attrs.get("format_version", 2)) >= 2  # version 1: texts only, under texts_sha256
        want = cache.attrs.get("fingerprint" if v2 else "texts_sha256")
        if want is not None and want != content_sha256(*texts, q2c if v2 else None):
            raise CacheError(f"{cache.path}: damaged cache, its texts or index do not match their checksum (fingerprint)")
        qh = text_hashes(texts[0])[:, 0]  # 64 bits suffice here
        if np.isin(qh, text_hashes(texts[3])[:, 0]).any():
            raise SearchError(f"{cache.path}: queries that are also contexts (duplicate-question data) are not "
                              "supported with an index; evaluate without one")
        if len(extra):  # the corpus rows in the index, their texts a chunk at a time
            ctext = column(f, "corpus/text")
            ch = np.concatenate([text_hashes([t.decode("utf-8") for t in ctext[np.sort(extra[a:a + chunk])]])[:, 0]
                                 for a in range(0, len(extra), chunk)])
            if np.isin(qh, ch).any():
                raise SearchError(f"{cache.path}: queries that are also corpus texts are not supported with an "
                                  "index (a query would find itself); evaluate without one")
        results = {}
        for name, (fq, fc) in systems.items():
            contexts = itertools.chain(
                (fc(finite(Cd[a:a + chunk].astype(np.float32), "contexts/vectors", a)) for a in range(0, len(Cd), chunk)),
                (fc(read_rows(f["corpus/vectors"], extra[a:a + chunk])) for a in range(0, len(extra), chunk)))
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
    results["distractors"] = int(len(extra))
    return results


def _protocol_label(protocol: str) -> str:
    """A column's protocol as a table heads it: the block size of out-of-n ("500"), or "full"."""
    return protocol.rsplit("_", 1)[1] if protocol.startswith("out_of_") else "full"


def format_table(results: dict) -> str:
    """Markdown table, one row per system, both protocols side by side (percent)."""
    systems = list(results)
    cols = [(p, m) for p in results[systems[0]] for m in results[systems[0]][p]]
    head = "| system | " + " | ".join(f"{_protocol_label(p)} {m}" for p, m in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for s in systems:
        vals = [results[s][p][m] for p, m in cols]
        lines.append(f"| {s} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def format_changes(every: dict) -> str:
    """Markdown table: per cache, the head's change against the frozen encoder (points)
    on the headline metrics of both protocols."""
    out = next((k for r in every.values() for k in r["head"] if k.startswith("out_of_")), "out_of_500")  # one --block
    cols = [(out, "top1"), (out, "top10"), ("full_corpus", "R@1"), ("full_corpus", "nDCG@10")]
    lines = ["| cache | frozen full nDCG@10 | " + " | ".join(f"{_protocol_label(p)} {m}" for p, m in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for name, r in every.items():
        vals = []
        for p, m in cols:
            vals.append(f"{100 * (r['head'][p][m] - r['frozen'][p][m]):+.1f}")
        lines.append(f"| {name} | {100 * r['frozen']['full_corpus']['nDCG@10']:.1f} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
