"""What the training loop reads: held-out splits, batch order, and batches of cached vectors.

Usage::

    from projhead.batches import MemorySource, split_by_group
    source = MemorySource(cache, cfg)          # or stream.StreamSource(cache, cfg) for caches larger than memory
    for batch in source.epoch(rng): ...        # losses.Batch of frozen vectors (and mined negatives)
    source.dev.ranks(head)                     # held-out queries against every context

Splits keep whole groups (documents) on one side, so held-out contexts are never trained on;
with fewer than ``MIN_GROUPS`` groups, each gold context is its own group. Batches are built
from whole shuffled groups (in-batch negatives from the same document) or at random; mined
negatives and silver pairs that touch the held-out split are dropped.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from .cache_reader import Cache
from .config import SMALL, TrainConfig, TrainError
from .evaluate import dense_scorer, excluding, ranks, self_matches
from .fusion import FusionSpec, fused_scorer
from .heads import Head
from .fusion import DEFAULT_WEIGHT
from .lexical import bm25_share, held_out_bm25, settings_of, training_bm25
from .losses import Batch


MIN_GROUPS = 5  # documents needed before held-out queries can speak for documents not trained on


def split_groups(cache: Cache, need: int = MIN_GROUPS) -> list[str]:
    """What a split keeps whole: the cache's groups (documents), merged where they share a gold
    context (``joined_by_gold``), or each query's gold context when there are fewer than ``need``
    groups (100 pairs of one article still get a held-out split, with no context on both sides;
    see ``within_documents``)."""
    joined = joined_by_gold(cache.groups, cache.q2c)
    if len(set(joined)) >= need:
        return joined
    return [f"context {i}" for i in cache.q2c]


def gold_components(group_ids: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per row, the smallest group id connected to its group through shared gold contexts
    (rows of groups a and b with one gold context in common, and so on transitively): label
    propagation over the groups-contexts graph, one vectorised sweep per step of its diameter."""
    group_ids, gold = np.asarray(group_ids, np.int64), np.asarray(gold, np.int64)
    if not len(gold):
        return group_ids
    _, ctx = np.unique(gold, return_inverse=True)
    label = np.arange(int(group_ids.max()) + 1)  # per group
    while True:
        per_ctx = np.full(int(ctx.max()) + 1, np.iinfo(np.int64).max)
        np.minimum.at(per_ctx, ctx, label[group_ids])
        new = label.copy()
        np.minimum.at(new, group_ids, per_ctx[ctx])
        new = new[new]  # jump: a label points at a group whose own label may be smaller
        if np.array_equal(new, label):
            return label[group_ids]
        label = new


def joined_by_gold(groups: list[str], gold: np.ndarray) -> list[str]:
    """``groups`` with every set of groups that share a gold context (the same context row:
    one answer text under several documents, duplicate questions) named after its first
    member, so a split keeping these whole never holds out a query whose gold context is the
    gold of a training query. Groups that share nothing keep their names."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    comp = gold_components(inverse.reshape(-1), gold)
    return names[comp].tolist()


def within_documents(cache: Cache) -> str | None:
    """Why a held-out gain says nothing about other documents, if it does not: fewer than
    ``MIN_GROUPS`` groups (after ``joined_by_gold``), so held-out queries share documents with the
    training pairs."""
    n = len(set(joined_by_gold(cache.groups, cache.q2c)))
    if n >= MIN_GROUPS:
        return None
    return (f"the pairs come from {n} document(s) (groups, joined where they share a gold context), so held-out queries share documents with the "
            f"training pairs and say nothing about other documents; give each document its own group "
            f"({MIN_GROUPS} or more), or pass --decision better to keep a head that helps within these documents")


def split_by_group(groups: list[str], fraction: float, seed: int, gold: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Train and dev query rows; whole groups go to one side, so no dev context is trained on.
    ``gold``: each row's gold context row; groups sharing one are kept together (``joined_by_gold``)."""
    if gold is not None:
        groups = joined_by_gold(groups, gold)
    names = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    n_dev = max(1, int(round(fraction * len(names)))) if fraction > 0 and len(names) > 1 else 0
    dev_names = set(rng.choice(names, size=n_dev, replace=False).tolist()) if n_dev else set()
    is_dev = np.array([g in dev_names for g in groups])
    return np.flatnonzero(~is_dev), np.flatnonzero(is_dev)


def epoch_order(train_rows: np.ndarray, group_ids: np.ndarray, batching: str, rng) -> np.ndarray:
    """Row order for one epoch. ``group`` shuffles the groups (articles), then the rows inside
    each, and lays them end to end: a batch holds a few whole documents, so most in-batch
    negatives come from the same document, the hard case retrieval meets. ``random`` is a
    plain shuffle."""
    if batching == "random":
        return rng.permutation(train_rows)
    if batching != "group":
        raise ValueError(f"batching must be 'group' or 'random', not {batching!r}")
    g = group_ids[train_rows]
    rank = rng.permutation(int(g.max()) + 1)
    key = rank[g]  # shuffled position of each row's group
    jitter = rng.random(len(train_rows))  # shuffles rows within a group
    return train_rows[np.lexsort((jitter, key))]


class DevSet:
    """Held-out queries ranked against candidate contexts (in memory: every context of the
    cache, so small data still gives a metric that can move), with each query's own text
    left out (duplicate-question data). ``ranks(head)`` gives the per-query ranks that
    model selection and the bootstrap compare; ``None`` is the frozen encoder."""

    chunk = 1024  # queries scored at a time
    block = None  # rows a head encodes at a time (None: all; streamed: float16 vectors a block at a time)

    def __init__(self, q: np.ndarray, c: np.ndarray, gold: np.ndarray, exclude: np.ndarray | None = None,
                 bm25=None, weight: float | None = None):
        self.q, self.c, self.gold = q, c, np.asarray(gold, np.int64)
        self.exclude = exclude
        # hybrid selection: (R, Nc) sparse raw BM25 of these queries, fused z-scores at ``weight``
        self.bm25, self.weight = bm25, weight

    def __len__(self) -> int:
        return len(self.gold)

    def _encode(self, encode, x: np.ndarray) -> np.ndarray:
        if self.block is None:
            return encode(x)
        out = None
        for a in range(0, len(x), self.block):
            y = encode(x[a:a + self.block].astype(np.float32))
            out = np.empty((len(x),) + y.shape[1:], np.float32) if out is None else out
            out[a:a + len(y)] = y
        return out

    def ranks(self, head: Head | None) -> np.ndarray:
        q = self._encode(lambda x: x if head is None else head.encode_queries(x), self.q)
        c = self._encode(lambda x: x if head is None else head.encode_contexts(x), self.c)
        scorer = dense_scorer(q, c)
        if self.bm25 is not None:
            scorer = fused_scorer(scorer, lambda rows: self.bm25[rows].toarray(), FusionSpec(), self.weight)
        return ranks(excluding(scorer, self.exclude), self.gold, self.chunk)


def spread(x: np.ndarray) -> float:
    """How spread out vectors are: the mean per-dimension standard deviation of the
    L2-normalised rows, times sqrt(D). 0 when every vector is the same (collapse); about 1
    for directions spread evenly over the sphere."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return float(x.std(0).mean() * math.sqrt(x.shape[1]))


class MinedSet:
    """A mined set prepared for training: negatives and silver pairs that touch the dev split
    are dropped (dev contexts stay unseen), silver contexts are removed from their query's
    negatives (a positive is never a negative)."""

    def __init__(self, cache: Cache, cfg: TrainConfig, train_rows: np.ndarray, dev_ctx: np.ndarray):
        m = cache.mined(cfg.mined)
        dev = np.zeros(len(cache.contexts), dtype=bool)
        dev[dev_ctx] = True
        neg = m["negatives"].copy()
        neg[(neg >= 0) & dev[neg.clip(min=0)]] = -1
        self.negatives = neg  # (Nq, k)
        self.teacher = m.get("teacher")  # (Nq, 1 + k) or None
        silver = m["silver"]
        k = m["negatives"].shape[1]
        if cfg.hard_negatives > k:  # it would take k: say so rather than train on fewer than asked
            raise TrainError(f"{cache.path}: mined set {cfg.mined!r} holds {k} negatives a query, fewer than "
                             f"--hard-negatives {cfg.hard_negatives}: ask for {k} or fewer, or mine again with --k")
        if cfg.silver and not len(silver):  # --silver would change nothing, as --mined alone would
            p = cache.mined_settings(cfg.mined).get("silver")
            raise TrainError(f"{cache.path}: mined set {cfg.mined!r} holds no silver pairs ("
                             + ("mined without --silver" if p is None else f"none reached probability {p:g}")
                             + "): drop --silver, or mine a set with --teacher and --silver P")
        in_train = np.zeros(len(cache.q2c), dtype=bool)
        in_train[train_rows] = True
        self.silver = silver[in_train[silver[:, 0]] & ~dev[silver[:, 1]]] if cfg.silver else silver[:0]
        for qrow, crow in self.silver:
            neg[qrow][neg[qrow] == crow] = -1

    def draw(self, qrows: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        """n negatives per row, drawn without replacement from its valid ones (-1 pads);
        and the columns they came from (for the teacher scores)."""
        cand = self.negatives[qrows]  # (B, k)
        key = rng.random(cand.shape) + (cand < 0) * 2.0  # padding sorts last
        cols = np.argsort(key, axis=1)[:, :n]
        return np.take_along_axis(cand, cols, 1), cols


def _subset(q2c: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Context rows used by ``rows`` and the re-indexed q2c."""
    ctx, local = np.unique(q2c[rows], return_inverse=True)
    return ctx, local


def make_batch(idx: np.ndarray, pair_q, pair_c, Qt, Ct, mined: MinedSet | None, cfg: TrainConfig, rng,
               bm25=None) -> Batch:
    """The frozen vectors of the pairs ``idx``, with mined negatives and teacher scores, and
    with ``bm25`` (``lexical.TrainingBM25``) the BM25 block of every query and candidate."""
    qrows, crows = pair_q[idx], pair_c[idx]
    dev = Qt.device
    batch = Batch(q=Qt[torch.from_numpy(qrows).to(dev)], c=Ct[torch.from_numpy(crows).to(dev)],
                  context_ids=torch.from_numpy(crows).to(dev),
                  query_ids=torch.from_numpy(qrows).to(dev) if mined is not None and len(mined.silver) else None)
    if mined is not None and cfg.hard_negatives:
        neg, cols = mined.draw(qrows, cfg.hard_negatives, rng)
        neg_t = torch.from_numpy(neg).to(dev)
        batch.negatives = Ct[neg_t.clamp_min(0)]  # (B, n, D); padding rows are masked by id -1
        batch.negative_ids = neg_t
        if mined.teacher is not None:
            t = mined.teacher[qrows]  # (B, 1 + k): gold, then the mined negatives
            chosen = np.where(neg >= 0, np.take_along_axis(t[:, 1:], cols, 1), np.nan)
            batch.teacher = torch.from_numpy(np.concatenate([t[:, :1], chosen], axis=1)).to(dev)
    if bm25 is not None:
        cols = crows if batch.negative_ids is None else np.concatenate([crows, batch.negative_ids.cpu().numpy().ravel()])
        batch.lexical = torch.from_numpy(bm25.block(qrows, cols)).to(dev)
    return batch


def dev_fraction(cfg: TrainConfig, n_queries: int) -> float:
    """The dev share: as set, else 5%, or 20% under ``SMALL`` queries (a dev split that can
    tell a real gain from noise needs a few hundred queries)."""
    if cfg.dev_fraction is not None:
        return cfg.dev_fraction
    return 0.05 if n_queries >= SMALL else 0.2


def held_out(cache: Cache, rows: np.ndarray, cfg: TrainConfig | None = None) -> DevSet:
    """The queries ``rows`` ranked against every context of the cache and the corpus rows
    attached to it (``corpus.attach_corpus``), each query's own text left out; with
    ``cfg.hybrid``, by the dense score fused with BM25 (z-scores, ``cfg.fusion_weight``)."""
    contexts, texts = cache.ranked_contexts()
    exclude = self_matches([cache.query_texts[i] for i in rows], texts)
    if cfg is None or not cfg.hybrid:
        return DevSet(cache.queries[rows], contexts, cache.q2c[rows], exclude)
    if cfg.fusion_weight is None:
        raise TrainError("hybrid selection ranks held-out queries at a fusion weight: set fusion_weight")
    return DevSet(cache.queries[rows], contexts, cache.q2c[rows], exclude,
                  bm25=held_out_bm25(cache, rows, settings_of(cfg)), weight=cfg.fusion_weight)


class MemorySource:
    """Training pairs from a cache held in memory (the default): any batching, mined
    negatives, silver pairs. ``rows``: (train rows, dev rows[, other held-out rows]) to use
    instead of the group split (model selection passes its own; the contexts of other held-out
    rows are kept out of mined negatives too)."""

    def __init__(self, cache: Cache, cfg: TrainConfig, rows: tuple[np.ndarray, np.ndarray] | None = None):
        Q, C, q2c = cache.queries, cache.contexts, cache.q2c
        train_rows, dev_rows, *also_held = rows if rows is not None else split_by_group(
            split_groups(cache), dev_fraction(cfg, len(q2c)), cfg.seed)
        self.group_ids = np.unique(np.asarray(cache.groups), return_inverse=True)[1]  # (Nq,) int
        if len(train_rows) == 0:
            raise TrainError(f"{cache.path}: no training rows left after holding out the dev split")
        dev_ctx = np.unique(q2c[np.concatenate([dev_rows, *also_held]).astype(np.int64)])
        self.dev = held_out(cache, dev_rows, cfg)
        self.bm25 = training_bm25(cache, settings_of(cfg)) if cfg.bm25_aware else None
        if self.bm25 is not None and "bm25_weight" not in cfg.loss_settings:  # lambda of the fusion it will serve
            cfg = replace(cfg, loss_settings={**cfg.loss_settings, "bm25_weight": bm25_share(
                Q[train_rows], C, cfg.fusion_weight if cfg.fusion_weight is not None else DEFAULT_WEIGHT, cfg.seed)})
        self.spread_sample = Q[dev_rows] if len(dev_rows) else Q[:4096]
        self.mined = mined = MinedSet(cache, cfg, train_rows, dev_ctx) if cfg.mined else None
        if cfg.loss == "distill" and (mined.teacher is None or not cfg.hard_negatives or cfg.silver):
            raise TrainError(f"the distill loss needs teacher scores (projhead mine --teacher; mined set "
                             f"{cfg.mined!r} has {'some' if mined.teacher is not None else 'none'}), "
                             "--hard-negatives N >= 1, and no --silver")
        # training pairs: (query row, context row); gold pairs of the train split, then silver pairs
        self.pair_q = np.concatenate([train_rows, mined.silver[:, 0] if mined else []]).astype(np.int64)
        self.pair_c = np.concatenate([q2c[train_rows], mined.silver[:, 1] if mined else []]).astype(np.int64)
        self.n_train, self.n_silver = int(len(train_rows)), int(len(mined.silver)) if mined else 0
        self.Qt = torch.from_numpy(Q).to(cfg.device)  # (Nq, D)
        self.Ct = torch.from_numpy(C).to(cfg.device)  # (Nc, D)
        self.cfg = cfg = cfg.sized(len(self.pair_q))
        self.bs = min(cfg.batch_size, len(self.pair_q))
        self.steps_per_epoch = max(1, len(self.pair_q) // self.bs)  # drop the ragged last batch

    def epoch(self, rng):
        order = epoch_order(np.arange(len(self.pair_q)), self.group_ids[self.pair_q], self.cfg.batching, rng)
        for b in range(self.steps_per_epoch):
            yield make_batch(order[b * self.bs:(b + 1) * self.bs], self.pair_q, self.pair_c, self.Qt, self.Ct,
                             self.mined, self.cfg, rng, self.bm25)
