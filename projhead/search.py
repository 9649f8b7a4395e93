"""Full-corpus retrieval at scale with FAISS: exact or approximate, bounded memory.

Usage::

    from projhead.search import build_index, search, topk_metrics
    index = build_index(context_chunks, dim=384, factory="HNSW32")   # chunks: iterable of (n, D)
    scores, ids = search(index, queries, k=100)                      # (Nq, k) scores and context rows
    topk_metrics(ids, scores, q2c)                                   # R@1/5/10/100, MRR@10, nDCG@10

    # projhead eval DEV.h5 --head heads/x --index "IVF1024,Flat" --nprobe 32

``factory`` is a FAISS index-factory string (inner product, so cosine on normalised vectors):
``Flat`` is exact; ``HNSW32`` (a graph), ``IVF4096,Flat`` (inverted lists, ``nprobe`` lists
searched) and ``IVF4096,PQ48`` (compressed, less memory) are approximate. Contexts are added
chunk by chunk, and queries are searched chunk by chunk, so nothing but the index and one
chunk is held in memory. A gold context outside the top ``k`` counts as a miss; ties count
against the gold as everywhere in projhead, so with ``Flat`` and k >= 100 the metrics equal
``evaluate.full_corpus``.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class SearchError(ValueError):
    """FAISS missing or a bad index description; the message says why."""


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise SearchError("FAISS is needed for --index: pip install 'projhead[scale]' (faiss-cpu)") from e
    return faiss


def build_index(chunks: Iterable[np.ndarray], dim: int, factory: str = "Flat", train_size: int = 100_000,
                seed: int = 0, hnsw_ef_construction: int = 64):
    """An inner-product FAISS index over the rows of ``chunks`` (added in order: row i of the
    concatenation is id i). Indexes that need training (IVF, PQ) are trained on the first
    ``train_size`` rows."""
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise SearchError(f"bad FAISS index description {factory!r}: {str(e).splitlines()[0]}") from None
    if hasattr(index, "hnsw"):
        index.hnsw.efConstruction = hnsw_ef_construction
    pending: list[np.ndarray] = []
    held = 0

    def train(sample):
        try:
            index.train(sample)
        except RuntimeError as e:  # e.g. fewer rows than an IVF index's clusters
            raise SearchError(f"FAISS index {factory!r} cannot be trained on {len(sample)} vectors ({_last_line(e)}): "
                              "choose fewer clusters or a Flat index") from None

    def add(rows):
        try:
            index.add(rows)
        except RuntimeError as e:  # e.g. an IDMap index, which takes ids with its vectors
            raise SearchError(f"FAISS index {factory!r} cannot take the vectors ({_last_line(e)}): choose another "
                              "index description (Flat, HNSW32, IVF4096,Flat, ...)") from None
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if not index.is_trained:
            pending.append(chunk)
            held += len(chunk)
            if held < train_size:
                continue
            sample = np.concatenate(pending)
            train(sample[:train_size])
            chunk, pending = sample, []
        add(chunk)
    if pending:  # fewer rows than train_size
        sample = np.concatenate(pending)
        train(sample)
        add(sample)
    return index


def _last_line(e: Exception) -> str:
    """The last non-blank line of a FAISS error (its message; the lines before are a C++ trace)."""
    return [line for line in str(e).splitlines() if line.strip()][-1]


def search(index, queries: np.ndarray, k: int = 100, chunk: int = 4096, nprobe: int | None = None,
           ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` contexts of every query row: scores (Nq, k) float32 and context ids (Nq, k)
    int64 (-1 where fewer exist)."""
    faiss = _faiss()
    if nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:
            raise SearchError("nprobe applies to IVF indexes only") from None
    if ef_search is not None:
        try:  # through wrappers too (a PCA before the graph, say)
            faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef_search)
        except RuntimeError:
            raise SearchError("ef_search applies to HNSW indexes only") from None
    scores, ids = [], []
    for start in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)
        s, i = index.search(q, k)
        scores.append(s)
        ids.append(i)
    if not ids:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids)


def exact_topk(queries: np.ndarray, context_chunks: Iterable[np.ndarray], k: int = 100) -> np.ndarray:
    """Exact top-``k`` by torch matrix products, one context chunk at a time (the reference an
    ANN index is checked against)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), k), float("-inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.int64)
    offset = 0
    for chunk in context_chunks:
        c = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        s = q @ c.T  # (Nq, n)
        top_s, top_i = torch.topk(s, min(k, s.shape[1]), dim=1)
        merged_s = torch.cat([best_s, top_s], dim=1)
        merged_i = torch.cat([best_i, top_i + offset], dim=1)
        order = torch.topk(merged_s, k, dim=1).indices
        best_s, best_i = torch.gather(merged_s, 1, order), torch.gather(merged_i, 1, order)
        offset += len(c)
    return best_i.numpy()


def topk_metrics(ids: np.ndarray, scores: np.ndarray, q2c: np.ndarray, ks=(1, 5, 10, 100)) -> dict:
    """Full-corpus metrics from top-k lists, with ``evaluate``'s tie rule (contexts scoring >=
    the gold count against it) and metric code; a gold not listed is a miss."""
    from .metrics import corpus_metrics, topk_ranks

    return corpus_metrics(topk_ranks(ids, scores, q2c), tuple(k for k in ks if k <= ids.shape[1]))


def overlap_at_k(ids: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Recall of an ANN index against exact search: the share of the exact top-k it returns."""
    a, b = ids[:, :k], exact[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
