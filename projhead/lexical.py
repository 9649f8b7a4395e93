"""BM25 as sparse matrices, so a head can be trained and chosen beside it.

Usage::

    from projhead.lexical import Lexical, training_bm25
    lex = Lexical.build(texts)                    # bm25s over texts: W (texts x terms)
    raw = lex.scores(lex.counts(query_texts))     # (Nq, N) sparse, exactly bm25s's scores
    tb = training_bm25(cache)                     # the cache's bm25 section (made and stored once)
    z = tb.block(query_rows, context_rows)        # (B, M) z-scored BM25 of an in-batch block

bm25s precomputes, for every text and term, the term's share of the text's BM25 score
(idf times the saturated term frequency); a query's score of a text is the sum of those
shares over the query's tokens, each occurrence counted. So with ``W`` the (texts x terms)
matrix of shares and ``C`` a (queries x terms) matrix of token counts, ``C @ W.T`` is every
query's BM25 score of every text (bm25s's Lucene, Robertson and ATIRE variants exactly;
BM25L and BM25+ add a per-query constant, which z-scores remove). A training batch's BM25
block is then one sparse product: nothing is tokenised again per epoch.

The cache's ``bm25`` section (``cachefile.BM25Section``) stores ``W`` over the contexts and ``C``
over the queries (as coordinate lists), the terms, and each query's mean and standard
deviation of BM25 over every context, with the BM25 settings as the attribute
``settings_json``. ``training_bm25`` makes it when missing or made with other settings, and
stores it in the cache when the file may be rewritten (writable, not a symbolic link).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np

from .cachefile import CacheError
from .fusion import BM25Index, BM25Settings, tokenize

STATS_CHUNK = 4096  # queries per sparse product when computing their statistics


def _csr(rows, cols, vals, shape):
    import scipy.sparse as sp

    return sp.csr_matrix((np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
                         shape=shape)


class Lexical:
    """bm25s's BM25 over ``n`` texts as the sparse (n x terms) matrix ``W`` (see module doc)."""

    def __init__(self, W, terms: list[str], settings: BM25Settings):
        self.W, self.terms, self.settings = W.tocsr(), list(terms), settings
        self._vocab = {t: i for i, t in enumerate(self.terms)}
        self._WT = None

    @classmethod
    def build(cls, texts: list[str], settings: BM25Settings | None = None) -> "Lexical":
        import scipy.sparse as sp

        settings = settings or BM25Settings()
        r = BM25Index(list(texts), settings).retriever
        s = r.scores
        terms = [""] * len(r.vocab_dict)
        for t, i in r.vocab_dict.items():
            terms[i] = t
        W = sp.csc_matrix((s["data"], s["indices"], s["indptr"]), shape=(s["num_docs"], len(s["indptr"]) - 1))
        terms = terms[:W.shape[1]]
        order = np.argsort(np.array(terms, dtype=object), kind="stable")  # bm25s numbers terms in set order,
        return cls(W[:, order].astype(np.float32), [terms[i] for i in order], settings)  # which varies by run

    @property
    def WT(self):
        if self._WT is None:
            self._WT = self.W.T.tocsr()
        return self._WT

    def counts(self, query_texts: list[str]):
        """(Nq, terms) token counts of the queries, tokenised as the texts were (terms the
        texts never use are dropped: they score nothing)."""
        toks = tokenize(query_texts, self.settings)
        rows, cols = [], []
        for i, t in enumerate(toks):
            ids = [self._vocab[w] for w in t if w in self._vocab]
            rows += [i] * len(ids)
            cols += ids
        return _csr(rows, cols, np.ones(len(rows)), (len(query_texts), self.W.shape[1]))

    def scores(self, C):
        """(Nq, n) sparse BM25 scores of the queries whose counts are ``C``."""
        return (C @ self.WT).tocsr()

    def stats(self, C) -> np.ndarray:
        """(Nq, 2) float32: each query's mean and standard deviation of BM25 over all n texts."""
        n, out = self.W.shape[0], np.zeros((C.shape[0], 2), np.float64)
        for a in range(0, C.shape[0], STATS_CHUNK):
            P = self.scores(C[a:a + STATS_CHUNK])
            s1 = np.asarray(P.sum(axis=1)).ravel()
            s2 = np.asarray(P.multiply(P).sum(axis=1)).ravel()
            out[a:a + len(s1), 0] = s1 / n
            out[a:a + len(s1), 1] = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))
        return out.astype(np.float32)


class TrainingBM25:
    """What a BM25-aware batch needs: ``block(query_rows, context_rows)``, the (B, M) BM25
    scores of those pairs, z-scored per query with its statistics over every context."""

    def __init__(self, lex: Lexical, C, stats: np.ndarray):
        self.lex, self.C, self.stats = lex, C.tocsr(), np.asarray(stats, np.float32)

    def block(self, query_rows, context_rows) -> np.ndarray:
        q, c = np.asarray(query_rows, np.int64), np.asarray(context_rows, np.int64)
        raw = (self.C[q] @ self.lex.W[np.maximum(c, 0)].T).toarray()  # (B, M); -1 (padding) scored as row 0
        mu, sd = self.stats[q, :1], self.stats[q, 1:]
        return ((raw - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)

    def arrays(self) -> tuple[dict, dict]:
        """The bm25 section's columns and attributes."""
        W, C = self.lex.W.tocoo(), self.C.tocoo()
        return ({"terms": self.lex.terms, "context_rows": W.row, "context_terms": W.col, "context_weights": W.data,
                 "query_rows": C.row, "query_terms": C.col, "query_counts": C.data, "query_stats": self.stats},
                {"settings_json": json.dumps(asdict(self.lex.settings), sort_keys=True)})


def _from_section(cache) -> tuple[TrainingBM25, BM25Settings]:
    d = cache.read("bm25")
    settings = BM25Settings(**json.loads(d["attrs"]["settings_json"]))
    nt, nc, nq = len(d["terms"]), len(cache.context_texts), len(cache.query_texts)
    W = _csr(d["context_rows"], d["context_terms"], d["context_weights"], (nc, nt))
    C = _csr(d["query_rows"], d["query_terms"], d["query_counts"], (nq, nt))
    return TrainingBM25(Lexical(W, d["terms"], settings), C, d["query_stats"]), settings


def settings_of(cfg) -> BM25Settings:
    """The BM25 a training configuration asks for: bm25s's defaults, with its ``bm25_k1`` and
    ``bm25_b`` where set (hybrid model selection sets them from its search)."""
    base = BM25Settings()
    return BM25Settings(k1=base.k1 if cfg.bm25_k1 is None else float(cfg.bm25_k1),
                        b=base.b if cfg.bm25_b is None else float(cfg.bm25_b))


def training_bm25(cache, settings: BM25Settings | None = None, store: bool = True, say=None) -> TrainingBM25:
    """The cache's BM25 for training (see module doc): read from its bm25 section when that
    was made with ``settings`` (the defaults if None), else computed (and stored when
    ``store`` and the file can be written; said through ``say``). Kept on the cache object,
    so folds and candidates share one."""
    settings = settings or BM25Settings()
    memo = getattr(cache, "_training_bm25", None)
    if memo is not None and memo.lex.settings == settings:
        return memo
    tb = None
    if "bm25" in getattr(cache, "sections", {}) and len(cache.context_texts) == int(cache.attrs["n_contexts"]) \
            and len(cache.query_texts) == int(cache.attrs["n_queries"]):  # not a view with rows added in memory
        tb, have = _from_section(cache)
        tb = tb if have == settings else None
    if tb is None:
        if not any(t.strip() for t in cache.context_texts):
            raise CacheError(f"{cache.path}: the cache holds no context texts; BM25 needs texts")
        t0 = time.perf_counter()
        lex = Lexical.build(cache.context_texts, settings)
        C = lex.counts(cache.query_texts)
        tb = TrainingBM25(lex, C, lex.stats(C))
        note = f"BM25 of every training pair: {lex.W.nnz} context terms, {time.perf_counter() - t0:.1f}s"
        if store and _is_file_cache(cache):
            try:
                from .cache_writer import add_section

                add_section(cache.path, "bm25", *tb.arrays())
                note += f"; stored in {cache.path} (section bm25)"
            except (OSError, CacheError) as e:
                note += f"; kept in memory only ({e})"
        if say is not None:
            say(note)
    cache._training_bm25 = tb
    return tb


def bm25_share(queries: np.ndarray, contexts: np.ndarray, weight: float, seed: int = 0, n: int = 1000) -> float:
    """lambda of BM25-aware training: the BM25 term added to each cosine so that training ranks
    as the fusion ``weight * z(dense) + (1 - weight) * z(bm25)`` does. With sigma the typical
    per-query standard deviation of the frozen cosines over every context (mean over ``n``
    seeded queries), ``z(dense) ~ cos / sigma`` up to a per-query shift that changes no
    ranking, so the fusion ranks as ``cos + (1 - weight) / weight * sigma * z(bm25)``."""
    if not 0 < weight <= 1:
        raise ValueError(f"a fusion weight in (0, 1] is needed, not {weight}")
    rows = np.random.default_rng(seed).permutation(len(queries))[:n]
    q = np.asarray(queries[np.sort(rows)], np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    c = np.asarray(contexts, np.float32)
    c = c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)
    sd = [(q[a:a + 256] @ c.T).std(axis=1) for a in range(0, len(q), 256)]
    sigma = float(np.concatenate(sd).mean()) if sd else 0.0
    return (1.0 - weight) / weight * sigma


def _is_file_cache(cache) -> bool:
    """Whether ``cache`` is the whole file at its path (not a subset or view in memory), and
    that file may be rewritten (writable, not reached through a symbolic link)."""
    import os
    from pathlib import Path

    from .cache_reader import open_cache

    path = Path(cache.path)
    if path.is_symlink() or not path.stat().st_mode & 0o222 or not os.access(path.parent, os.W_OK):
        return False
    try:
        return open_cache(cache.path, load=False).attrs.get("fingerprint") == cache.attrs.get("fingerprint")
    except (OSError, CacheError):
        return False


def held_out_bm25(cache, rows, settings: BM25Settings | None = None):
    """(len(rows), ranked) sparse raw BM25 of the query ``rows`` against what held-out queries
    are ranked against (``cache.ranked_contexts()``): from the training matrices when that is the
    contexts alone, else from an index of those texts, kept until other distractors are attached."""
    settings = settings or BM25Settings()
    rows = np.asarray(rows, np.int64)
    if cache.n_distractors == 0:
        tb = training_bm25(cache, settings)
        return tb.lex.scores(tb.C[rows])
    memo = cache.__dict__.setdefault("_ranked_lexical", {})  # emptied by Cache.attach_distractors
    if settings not in memo:
        memo.clear()
        memo[settings] = Lexical.build(cache.ranked_contexts()[1], settings)
    lex = memo[settings]
    return lex.scores(lex.counts([cache.query_texts[i] for i in rows]))
