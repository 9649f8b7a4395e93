"""Mine hard negatives, teacher scores and silver pairs from a cache; store them in it.

Usage::

    from projhead.mine import mine
    mine("cache/train.h5", method="semantic", k=8, teacher="hybrid", silver=0.5)
    # projhead mine cache/train.h5 --method semantic --k 8 --teacher hybrid --silver 0.5
    # then: projhead train cache/train.h5 --mined semantic --hard-negatives 1 [--silver] [--loss distill]

Candidates for each query come from a retriever over the cache's own contexts:

- ``semantic``: the frozen vectors (cosine), i.e. what the encoder already confuses;
- ``bm25``: BM25 (bm25s) over the context texts, i.e. lexical look-alikes;
- ``hybrid``: both, each standardised per query over all contexts, BM25 weighted by
  ``bm25_weight``.

The gold context is never a candidate, nor the gold of another pair with the same question
(texts that differ only in whitespace count as one, as in ``corpus.same_text``). The margin
filter is positive-aware (as in NV-Retriever and sentence-transformers' ``mine_hard_negatives``):
a candidate whose frozen cosine to the query is above the gold's minus ``margin`` is dropped,
being most likely an unlabelled positive or a near-copy of the gold. ``margin=None`` keeps every candidate.

A teacher scores the gold and the candidates of each query (``distill`` learns from these
scores): ``bm25``, ``hybrid``, ``semantic``, ``cache:PATH`` (another encoder's cache of the same
texts, e.g. a larger bi-encoder) or ``cross-encoder:NAME`` (a sentence-transformers
CrossEncoder, for users with its weights). Silver pairs (Augmented SBERT): candidates to
which the teacher gives at least ``silver`` of its probability (softmax over the
standardised scores of gold + candidates) become extra (query, context) training pairs.

Everything is stored as ``/mined/NAME`` in the cache (see ``write_mined``); NAME
defaults to the method.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from .cache_reader import Cache, open_cache
from .cache_writer import add_section
from .config import MINE_METHODS, MineError
from .files import plain_name
from .corpus import same_text_ids
from .metrics import bm25_scorer

METHODS = MINE_METHODS


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per row: zero mean, unit standard deviation."""
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


class CandidateScorer:
    """Full (R, Nc) scores of query rows, for every method in ``methods``: the frozen cosines
    and the BM25 scores are computed once per chunk and shared by the miner and its teacher."""

    def __init__(self, cache: Cache, methods, bm25_weight: float):
        self.w = bm25_weight
        self.Q, self.C = torch.from_numpy(cache.queries), torch.from_numpy(cache.contexts)
        lexical = any(m in ("bm25", "hybrid") for m in methods)
        self.bm25 = bm25_scorer(cache.query_texts, cache.context_texts) if lexical else None

    def __call__(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Scores by method; "semantic" (the frozen cosines) is always there."""
        out = {"semantic": self.Q[rows] @ self.C.T}
        if self.bm25 is not None:
            out["bm25"] = torch.from_numpy(self.bm25(rows))
            out["hybrid"] = _standardise(out["semantic"]) + self.w * _standardise(out["bm25"])
        return out


def golds_of_question(texts: list[str], q2c: np.ndarray) -> dict[int, np.ndarray]:
    """For each query row whose question (``same_text``) is also asked by pairs with another
    gold context: every gold context of that question. Rows with one gold are left out."""
    asked = same_text_ids(texts)
    by_question: dict[int, set] = {}
    for a, c in zip(asked.tolist(), np.asarray(q2c).tolist()):
        by_question.setdefault(a, set()).add(c)
    return {i: np.array(sorted(g)) for i, a in enumerate(asked.tolist()) if len(g := by_question[a]) > 1}


def _teacher(cache: Cache, teacher: str | None):
    """A function (rows, candidate columns (R, 1+k), scores by method) -> teacher scores (R, 1+k)."""
    if teacher is None:
        return None
    if teacher in METHODS:
        def by_method(rows, cols, scores):
            return torch.gather(scores[teacher], 1, torch.from_numpy(cols).clamp_min(0))
        return by_method
    if teacher.startswith("cache:"):
        other_path = teacher[len("cache:"):]
        other = open_cache(other_path)
        if (other.attrs["fingerprint"] != cache.attrs["fingerprint"]
                or other.query_texts != cache.query_texts or other.context_texts != cache.context_texts):
            raise MineError(f"{other_path}: the teacher cache holds other texts than {cache.path} "
                            "(it must be a cache of the same pairs, with another encoder)")
        TQ, TC = torch.from_numpy(other.queries), torch.from_numpy(other.contexts)

        def by_cache(rows, cols, *_):
            return torch.einsum("rd,rkd->rk", TQ[rows], TC[torch.from_numpy(cols).clamp_min(0)])
        return by_cache
    if teacher.startswith("cross-encoder:"):
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as e:
            raise MineError("a cross-encoder teacher needs sentence-transformers: pip install 'projhead[encoders]'") from e
        name = teacher[len("cross-encoder:"):]
        try:
            model = CrossEncoder(name)
        except Exception as e:  # hub down, bad folder: name it
            raise MineError(f"cannot load cross-encoder {name!r} ({type(e).__name__}: {e})") from None
        qt, ct = cache.query_texts, cache.context_texts

        def by_cross_encoder(rows, cols, *_):
            pairs = [(qt[r], ct[c]) for r, row in zip(rows, cols) for c in np.maximum(row, 0)]
            scores = model.predict(pairs, batch_size=64, show_progress_bar=False, convert_to_numpy=True)
            return torch.from_numpy(np.asarray(scores, dtype=np.float32).reshape(cols.shape))
        return by_cross_encoder
    raise MineError(f"unknown teacher {teacher!r}: use one of {', '.join(METHODS)}, cache:PATH or cross-encoder:NAME")


def mine(cache: str | os.PathLike | Cache, method: str = "semantic", k: int = 8, margin: float | None = 0.05,
         teacher: str | None = None, silver: float | None = None, name: str | None = None,
         bm25_weight: float = 0.3, chunk: int = 1024, progress: bool = True, overwrite: bool = False) -> dict:
    """Mine ``k`` negatives per query by ``method`` (see module doc), score them with
    ``teacher``, pick silver pairs at probability >= ``silver``, and store the set in the
    cache as /mined/NAME (default: the method). A set of that name mined with other settings
    is replaced only with ``overwrite`` (heads trained on it name it). Returns a summary
    (counts, seconds, settings)."""
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise MineError(f"unknown mining method {method!r}; choose from {', '.join(METHODS)}")
    if k < 1:
        raise MineError(f"k must be at least 1, not {k}")
    if silver is not None and teacher is None:
        raise MineError("silver pairs need a teacher to score them (--teacher)")
    if silver is not None and not 0 < silver <= 1:
        raise MineError(f"silver is a teacher probability in (0, 1], not {silver}")
    if name is not None and (not name.strip() or name != name.strip() or not plain_name(name)):
        raise MineError(f"a mined set needs a plain name (no spaces around it, no '/', not '.' or '..'), not "
                        f"{name!r}: leave --name out for the method's, or give one")
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    name = name or method
    t0 = time.perf_counter()
    nq, nc = len(cache.q2c), len(cache.contexts)
    k_eff = min(k, nc - 1)
    if k_eff < 1:
        raise MineError(f"{cache.path}: one context only, nothing to mine")
    same = {"method": method, "k": k_eff, "margin": margin, "teacher": teacher, "silver": silver,
            "bm25_weight": bm25_weight}
    if name in cache.mined_sets and not overwrite:
        old = {key: cache.mined_settings(name).get(key) for key in same}
        if old != same:
            raise MineError(f"{cache.path}: mined set {name!r} exists with other settings ("
                            + "; ".join(f"{key}: set has {old[key]!r}, this run {v!r}" for key, v in same.items()
                                        if old[key] != v)
                            + "); pass --overwrite to replace it, or --name for a set beside it")
    scorer = CandidateScorer(cache, {method, teacher}, bm25_weight)
    teach = _teacher(cache, teacher)
    negatives = np.full((nq, k_eff), -1, dtype=np.int64)
    neg_scores = np.full((nq, k_eff), np.nan, dtype=np.float32)
    teacher_scores = np.full((nq, k_eff + 1), np.nan, dtype=np.float32) if teach else None
    q2c = torch.from_numpy(cache.q2c)
    asked_again = golds_of_question(cache.query_texts, cache.q2c)  # a question with several golds: none a negative
    filtered = 0
    for start in tqdm(range(0, nq, chunk), desc=f"mining {name}", unit="chunk", disable=not progress):
        rows = np.arange(start, min(start + chunk, nq))
        scores_by = scorer(rows)
        dense, full = scores_by["semantic"], scores_by[method]  # (R, Nc): frozen cosine, the miner's
        gold = q2c[rows]
        idx = torch.arange(len(rows))
        drop = torch.zeros_like(full, dtype=torch.bool)
        drop[idx, gold] = True
        for i, r in enumerate(rows):
            if r in asked_again:
                drop[i, torch.from_numpy(asked_again[r])] = True
        if margin is not None:
            near = dense > (dense[idx, gold] - margin)[:, None]
            near[idx, gold] = False
            filtered += int(near.sum())
            drop |= near
        scores = full.masked_fill(drop, float("-inf"))
        top, cols = torch.topk(scores, k_eff, dim=1)  # (R, k)
        cols = torch.where(torch.isfinite(top), cols, torch.full_like(cols, -1))
        negatives[rows] = cols.numpy()
        neg_scores[rows] = torch.where(cols >= 0, torch.gather(dense, 1, cols.clamp_min(0)),
                                       torch.full_like(top, float("nan"))).numpy()
        if teach:
            cand = np.concatenate([cache.q2c[rows, None], cols.numpy()], axis=1)  # (R, 1 + k)
            t = teach(rows, cand, scores_by).numpy().astype(np.float32)
            teacher_scores[rows] = np.where(cand >= 0, t, np.nan)
    arrays = {"negatives": negatives, "negative_scores": neg_scores}
    silver_pairs = np.zeros((0, 2), dtype=np.int64)
    silver_score = np.zeros(0, dtype=np.float32)
    if teach:
        arrays["teacher"] = teacher_scores
        if silver is not None:
            prob = _teacher_probability(teacher_scores)  # (Nq, 1 + k)
            qi, kj = np.nonzero(prob[:, 1:] >= silver)
            silver_pairs = np.stack([qi, negatives[qi, kj]], axis=1).astype(np.int64)
            silver_score = prob[qi, kj + 1].astype(np.float32)
    arrays["silver"], arrays["silver_score"] = silver_pairs, silver_score
    settings = {**same, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_mined(cache.path, name, arrays, settings)
    found = negatives >= 0
    return {"cache": str(cache.path), "name": name, "settings": settings, "queries": nq,
            "negatives_per_query": float(found.sum(1).mean()), "queries_without_negatives": int((~found.any(1)).sum()),
            "filtered_by_margin": filtered, "silver_pairs": int(len(silver_pairs)),
            "seconds": time.perf_counter() - t0}


def _teacher_probability(scores: np.ndarray) -> np.ndarray:
    """Softmax over each row's standardised teacher scores (NaN entries get 0)."""
    valid = np.isfinite(scores)
    t = np.where(valid, scores, 0.0)
    n = valid.sum(1, keepdims=True).clip(min=1)
    mean = t.sum(1, keepdims=True) / n
    std = np.sqrt((np.where(valid, t - mean, 0.0) ** 2).sum(1, keepdims=True) / n).clip(min=1e-6)
    z = np.where(valid, (t - mean) / std, -np.inf)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def write_mined(path: str | os.PathLike, name: str, arrays: dict[str, np.ndarray], settings: dict) -> None:
    """Store ``arrays`` as the mined set /mined/NAME of the cache at ``path`` (replacing a set of
    that name); their layout is ``cachefile.Mined``'s, and they are checked before anything is
    written. The cache is whole before and after (``cache_writer.add_section``); read a set
    back with ``Cache.mined(NAME)``."""
    add_section(path, "mined", arrays, {"settings_json": json.dumps(settings)}, instance=name)
