"""Hybrid scoring: a dense scorer (the frozen encoder or a head) fused with BM25.

Usage::

    from projhead.fusion import FusionSpec, fuse, rrf
    spec = FusionSpec(weight=0.6)                  # or head.fusion, saved by `projhead train`
    fused = fuse(dense_scores, bm25_scores, spec)  # (Nq, Nc) each -> (Nq, Nc)
    rrf(dense_scores, bm25_scores, k=60)           # reciprocal rank fusion, no weight

The fused score of a context is ``weight * norm(dense) + (1 - weight) * norm(bm25)``, where
``norm`` is applied per query over every context scored for it:

- ``zscore`` (the default): minus the query's mean score, divided by its standard deviation.
  Both are statistics of the whole score distribution, so they barely move when the corpus
  grows with more of the same kind of text; the weight chosen on one corpus holds on a larger
  one (bench/bench_hybrid.py measures it).
- ``minmax``: to [0, 1] by the query's lowest and highest score. The highest BM25 score grows
  with the corpus (more chances of a long exact match), so the weight drifts.
- ``fixed``: raw cosine plus BM25 divided by ``BM25_SCALE``: nothing depends on the corpus
  but the raw scale of BM25 moves with its idf, which does.

A spec also holds the BM25 settings (bm25s: variant, ``k1``, ``b``, stemmer, stopwords), so
the BM25 a weight was chosen with is the BM25 it is applied with. It is plain data, saved in
a head's config.json (``Head.fusion``) and beside its exports. This module needs numpy (and
bm25s with PyStemmer for ``bm25_scorer``); of projhead, only ``config``'s rule for a number in
range (shared with the training settings).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .config import real_in

NORMALISATIONS = ("zscore", "minmax", "fixed")
# The dense share when nothing was chosen on held-out queries, and the one projhead train keeps
# unless another beats it beyond noise there (hybrid.kept_weight): the median of the frozen
# encoder's highest-scoring weights on SQuAD v1.1 train held-out queries (all-MiniLM-L6-v2,
# seeds 0-2: 0.80, 0.85, 0.75; bench/bench_hybrid.py before the rule). A field where BM25 is stronger wants less.
DEFAULT_WEIGHT = 0.8
BM25_SCALE = 10.0  # "fixed": BM25 divided by this, added to the raw cosine
RRF_K = 60
BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")  # bm25s's variants
FUSION_NAME = "fusion.json"  # beside an exported head (sentence-transformers folder, ONNX files)
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1
# BM25's (k1, b) tried on held-out queries (after model selection; with --hybrid before training), bm25s's defaults first (kept on ties):
# short texts (sentences) want little saturation and length normalisation, long passages more.
BM25_GRID = ((1.5, 0.75), (0.9, 0.75), (0.5, 0.75), (1.5, 0.3), (0.9, 0.3), (0.5, 0.3))


class FusionError(ValueError):
    """Bad fusion settings; the message says which and why."""


@dataclass(frozen=True)
class BM25Settings:
    """The BM25 of bm25s: ``method`` (lucene, robertson, atire, bm25l, bm25+), ``k1``, ``b``,
    ``stemmer`` (a PyStemmer language, or "" for none) and ``stopwords`` (bm25s's name, "en",
    or "" for none)."""

    method: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    stemmer: str = "english"
    stopwords: str = "en"

    def __post_init__(self):
        if self.method not in BM25_METHODS:
            raise FusionError(f"BM25 method must be one of {', '.join(BM25_METHODS)}, not {self.method!r}")
        for name, top in (("k1", math.inf), ("b", 1.0)):
            v = real_in(getattr(self, name), top)
            if v is None:
                raise FusionError(f"BM25 {name} must be " + ("a finite number >= 0" if top == math.inf
                                                             else "a number in [0, 1]") + f", not {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        for name in ("stemmer", "stopwords"):
            if not isinstance(getattr(self, name), str):
                raise FusionError(f"BM25 {name} must be a name (a string, '' for none), not {getattr(self, name)!r}")


def weight_given(chosen: dict) -> bool:
    """Whether a fusion's record (``FusionSpec.chosen``) holds a weight tried alone, not chosen:
    ``--hybrid`` saves the one its held-out queries were ranked at."""
    return len(chosen.get("grid") or ()) == 1


@dataclass(frozen=True)
class FusionSpec:
    """How to fuse dense and BM25 scores (see module doc). ``weight``: the dense share for
    the head it is saved with; ``frozen_weight``: the share of frozen + BM25 as the identity
    would have been saved, the baseline row of an evaluation (None if not chosen: ``weight``);
    ``frozen_bm25``: that baseline's BM25 where it is not the head's (None: ``bm25``);
    ``chosen``: where the weights came from (queries, metric, grid), for the record."""

    weight: float = DEFAULT_WEIGHT
    normalisation: str = "zscore"
    bm25: BM25Settings = field(default_factory=BM25Settings)
    frozen_weight: float | None = None
    rrf_k: int = RRF_K
    chosen: dict = field(default_factory=dict)
    frozen_bm25: BM25Settings | None = None

    def __post_init__(self):
        for name in ("weight", "frozen_weight"):
            w = getattr(self, name)
            if w is not None:  # one rule with search's and fuse's weight, stored as a float
                object.__setattr__(self, name, checked_weight(w, f"fusion {name}"))
        if self.normalisation not in NORMALISATIONS:
            raise FusionError(f"fusion normalisation must be one of {NORMALISATIONS}, not {self.normalisation!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 1:
            raise FusionError(f"rrf_k must be a positive integer, not {self.rrf_k!r}")
        if not isinstance(self.bm25, BM25Settings):
            raise FusionError(f"bm25 must be BM25Settings, not {self.bm25!r}")
        if self.frozen_bm25 is not None and not isinstance(self.frozen_bm25, BM25Settings):
            raise FusionError(f"frozen_bm25 must be BM25Settings or None, not {self.frozen_bm25!r}")
        if not isinstance(self.chosen, dict):
            raise FusionError(f"chosen (where the weights came from) must be an object, not {self.chosen!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionSpec":
        """From ``to_dict``'s form (config.json); unknown keys or bad values raise FusionError."""
        if not isinstance(d, dict):
            raise FusionError(f"fusion settings must be an object, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise FusionError(f"unknown fusion settings {extra}")
        settings = {}
        for name in ("bm25", "frozen_bm25"):
            b = d.get(name, {} if name == "bm25" else None)
            if b is not None and (not isinstance(b, dict) or set(b) - {f.name for f in fields(BM25Settings)}):
                raise FusionError(f"bad BM25 settings {b!r}")
            settings[name] = None if b is None else BM25Settings(**b)
        return cls(**{**d, **settings})

    @property
    def baseline(self) -> tuple[float, BM25Settings]:
        """Frozen + BM25's dense weight and BM25: the evaluation's baseline row."""
        return (self.weight if self.frozen_weight is None else self.frozen_weight), self.frozen_bm25 or self.bm25

    def with_weight(self, weight: float, frozen_weight: float | None = None) -> "FusionSpec":
        return replace(self, weight=weight, frozen_weight=frozen_weight)


def json_file(path: Path, missing: str):
    """The JSON in file ``path``: FusionError ``missing`` where there is none, or naming the
    file where it cannot be read or is no JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FusionError(missing) from None
    except ValueError as e:  # UnicodeDecodeError too
        raise FusionError(f"{path}: malformed JSON ({e})") from None
    except OSError as e:
        raise FusionError(f"{path}: cannot read it ({e.strerror or e})") from None


def read_fusion(folder) -> FusionSpec:
    """The fusion saved beside an exported head (``FUSION_NAME`` in ``folder``)."""
    path = Path(folder) / FUSION_NAME
    d = json_file(path, f"{path}: no fusion settings (the head was exported without a chosen fusion)")
    try:
        return FusionSpec.from_dict(d)
    except (FusionError, TypeError) as e:
        raise FusionError(f"{path}: {e}") from None


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-row normalisation of (R, N) scores: ``zscore`` or ``minmax`` (a constant row
    becomes 0); ``fixed`` returns them as they are."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "fixed":
        return s
    if how == "zscore":
        mu, sd = s.mean(axis=1, keepdims=True), s.std(axis=1, keepdims=True)
        return np.where(sd > 0, (s - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    if how == "minmax":
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        return np.where(hi > lo, (s - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    raise FusionError(f"fusion normalisation must be one of {NORMALISATIONS}, not {how!r}")


def normalised_pair(dense: np.ndarray, bm25: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sides normalised as ``fuse`` uses them: (R, N) each, float64."""
    return normalise(dense, how), normalised_bm25(bm25, how)


def normalised_bm25(bm25: np.ndarray, how: str) -> np.ndarray:
    """The BM25 side of ``normalised_pair``."""
    b = normalise(bm25, how)
    return b / BM25_SCALE if how == "fixed" else b


def checked_weight(w, name: str = "fusion weight") -> float:
    """``w`` as a float if it is a dense share (a number in [0, 1], not a bool), else a
    FusionError naming ``name``."""
    v = real_in(w, 1.0)
    if v is None:
        raise FusionError(f"{name} must be a number in [0, 1], not {w!r}")
    return v


def fuse(dense: np.ndarray, bm25: np.ndarray, spec: FusionSpec | None = None,
         weight: float | None = None) -> np.ndarray:
    """Fused scores (R, N) of dense and BM25 scores of the same (R, N) query-context pairs,
    with ``spec`` (default settings if None); ``weight`` overrides its dense share."""
    spec = spec or FusionSpec()
    dense, bm25 = np.asarray(dense), np.asarray(bm25)
    if dense.shape != bm25.shape:
        raise FusionError(f"dense scores {dense.shape} and BM25 scores {bm25.shape} must have the same shape")
    w = spec.weight if weight is None else checked_weight(weight)
    d, b = normalised_pair(np.atleast_2d(dense), np.atleast_2d(bm25), spec.normalisation)
    return (w * d + (1.0 - w) * b).reshape(dense.shape)


def min_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column in each row, ties sharing the best rank (a context
    ranks 1 + the number of contexts scoring strictly higher)."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    out = np.empty(s.shape, dtype=np.int64)
    for i, row in enumerate(s):
        asc = np.sort(-row)
        out[i] = np.searchsorted(asc, -row, side="left") + 1
    return out


def rrf(dense: np.ndarray, bm25: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion: ``1 / (k + rank_dense) + 1 / (k + rank_bm25)`` per context,
    ranks over the row's contexts (ties share the best rank)."""
    if np.shape(dense) != np.shape(bm25):
        raise FusionError(f"dense scores {np.shape(dense)} and BM25 scores {np.shape(bm25)} must have the same shape")
    return 1.0 / (k + min_ranks(dense)) + 1.0 / (k + min_ranks(bm25))


def fused_scorer(dense, bm25, spec: FusionSpec, weight: float | None = None, method: str = "weighted"):
    """A scorer (rows, cols=None) -> (R, Nc or |cols|) of fused scores from two scorers of
    the same shape. Normalisation and RRF ranks are over every context (cols only selects
    columns afterwards), so the out-of-n protocol sees the same fused system."""

    def score(rows, cols=None):
        d, b = dense(rows), bm25(rows)
        s = rrf(d, b, spec.rrf_k) if method == "rrf" else fuse(d, b, spec, weight)
        return s if cols is None else s[:, cols]

    return score


def stemmer_for(settings: BM25Settings):
    """The PyStemmer stemmer of ``settings`` (None for ""). Required where asked for: without
    it BM25 ranks differently, and results must not depend on what happens to be installed."""
    if not settings.stemmer:
        return None
    try:
        import Stemmer
    except ImportError as e:
        raise ImportError("BM25 needs PyStemmer: pip install 'projhead[eval]'") from e
    try:
        return Stemmer.Stemmer(settings.stemmer)
    except KeyError:
        raise FusionError(f"unknown stemmer {settings.stemmer!r} (PyStemmer languages: "
                          f"{', '.join(Stemmer.algorithms())})") from None


def tokenize(texts, settings: BM25Settings, stemmer=None, return_ids: bool = False):
    """bm25s's tokens of ``texts`` with the stopwords and stemmer of ``settings`` (``stemmer``:
    one already made by ``stemmer_for``, else made here): how every BM25 in projhead tokenises."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=settings.stopwords or None,
                          stemmer=stemmer if stemmer is not None else stemmer_for(settings),
                          return_ids=return_ids, show_progress=False)


class BM25Index:
    """bm25s over ``texts`` with ``settings``: ``scores(query_texts)`` (Nq, N) of every text,
    ``tokens`` once per query list; a query of stopwords only scores 0 everywhere."""

    def __init__(self, texts: list[str], settings: BM25Settings | None = None, tokenized=None):
        """``tokenized``: ``tokenize(texts, settings, return_ids=True)`` made already (indexes of
        other k1 and b share it: only the stemmer and stopwords shape the tokens). bm25s adds
        its empty token to the vocabulary it is given, so each index gets a copy."""
        import bm25s

        self.settings = settings or BM25Settings()
        s = self.settings
        self._stemmer = stemmer_for(s)
        self.n = len(texts)
        self.retriever = bm25s.BM25(method=s.method, k1=s.k1, b=s.b)
        corpus = (tokenized.ids, dict(tokenized.vocab)) if tokenized is not None else \
            self._tokenize(texts, return_ids=True)
        if not any(len(t) for t in corpus[0]):  # bm25s fails on it with a bare ValueError
            raise FusionError(f"BM25 has nothing to index: none of the {self.n} texts has a token left after "
                              "stop words" if self.n else "BM25 has nothing to index: no texts")
        self.retriever.index(corpus, show_progress=False)

    def save(self, folder) -> None:
        """bm25s's own files in ``folder`` (numpy arrays without pickle, JSON); ``load`` reads them."""
        self.retriever.save(str(folder), show_progress=False, allow_pickle=False)

    @classmethod
    def load(cls, folder, settings: BM25Settings) -> "BM25Index":
        """An index ``save`` wrote, scored with ``settings`` (the tokens' stemmer and stop words;
        k1, b and the method must be those it was built with)."""
        import bm25s

        self = cls.__new__(cls)
        self.settings, self._stemmer = settings, stemmer_for(settings)
        self.retriever = bm25s.BM25.load(str(folder), load_corpus=False, mmap=False, allow_pickle=False,
                                         show_progress=False)
        r = self.retriever
        if (r.method, float(r.k1), float(r.b)) != (settings.method, float(settings.k1), float(settings.b)):
            raise FusionError(f"{folder}: BM25 {r.method} k1 {r.k1:g}, b {r.b:g} there, but the fusion says "
                              f"{settings.method} k1 {settings.k1:g}, b {settings.b:g}")
        self.n = int(r.scores["num_docs"])
        return self

    def _tokenize(self, texts, return_ids=False):
        return tokenize(texts, self.settings, self._stemmer, return_ids)

    def tokens(self, query_texts: list[str]) -> list[list[str]]:
        return self._tokenize(query_texts)

    def scores_of(self, tokens: list[list[str]], rows) -> np.ndarray:
        """(len(rows), N) float32 scores of the token lists ``tokens[rows]``."""
        empty = np.zeros(self.n, dtype=np.float32)
        return np.stack([self.retriever.get_scores(tokens[i]) if tokens[i] else empty for i in rows]
                        ).astype(np.float32).reshape(len(rows), self.n)

    def scores(self, query_texts: list[str]) -> np.ndarray:
        t = self.tokens(query_texts)
        return self.scores_of(t, range(len(t)))


def bm25_scorer(queries: list[str], contexts: list[str], settings: BM25Settings | None = None):
    """A scorer (rows, cols=None) of BM25 over ``contexts`` for the query rows (defaults:
    bm25s's Lucene variant, k1 1.5, b 0.75, English stopwords, Snowball English stemmer)."""
    index = BM25Index(contexts, settings)
    tokens = index.tokens(queries)

    def score(rows, cols=None):
        s = index.scores_of(tokens, rows)
        return s if cols is None else s[:, cols]

    return score


def eval_fusion(head, weight: float | None, normalisation: str | None, say=None):
    """The fusion ``projhead eval --bm25`` applies: the head's saved one (else the defaults),
    with the options' weight and normalisation; says which and where from through ``say`` (e.g. ``click.echo``)."""
    spec = (head.fusion if head is not None else None) or FusionSpec()
    source = ("the one held-out training queries were ranked at in hybrid selection"
              if weight_given(spec.chosen) else
              "chosen on held-out training queries" if spec.chosen.get("queries") else
              "default; BM25 as saved with the head" if spec.chosen else "default")  # --no-auto: its BM25 only
    if normalisation is not None and normalisation != spec.normalisation:
        spec = replace(spec, normalisation=normalisation, frozen_weight=None)
        source = "default" if weight is None else source
        if weight is None:
            spec = replace(spec, weight=DEFAULT_WEIGHT)
    if weight is not None:
        spec, source = spec.with_weight(weight, weight), "--fusion-weight"
    if say is not None:
        fw, fb = spec.baseline
        say(f"fusion: {spec.normalisation} scores, dense weight {spec.weight:g}"
                   + (f" (frozen encoder {fw:g})" if fw != spec.weight else "") + f" ({source}); RRF k={spec.rrf_k}; "
                   f"BM25 k1 {spec.bm25.k1:g}, b {spec.bm25.b:g}"
                   + (f" (frozen encoder: k1 {fb.k1:g}, b {fb.b:g}, as the identity would have been saved)"
                      if fb != spec.bm25 else ""))
    return spec
