"""What the training loop reads: held-out splits, batch order, and batches of cached vectors.

Usage::

    from projhead.batches import MemorySource, StreamSource, split_by_group
    source = MemorySource(cache, cfg)          # or StreamSource(path, cfg) for caches larger than memory
    for batch in source.epoch(rng): ...        # losses.Batch of frozen vectors (and mined negatives)
    source.dev.ranks(head)                     # held-out queries against every context

Splits keep whole groups (documents) on one side, so held-out contexts are never trained on;
with fewer than ``MIN_GROUPS`` groups, each gold context is its own group. Batches are built
from whole shuffled groups (in-batch negatives from the same document) or at random; mined
negatives and silver pairs that touch the held-out split are dropped.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import numpy as np
import torch

from .cache_reader import Cache
from .config import SMALL, TrainConfig, TrainError
from .evaluate import dense_scorer, excluding, ranks, self_matches
from .fusion import FusionSpec, fused_scorer
from .h5strings import column
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


def _in_dev(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Streaming dev split: a group (its ``_group_keys`` number) is held out when a hash of
    (seed, key) falls below ``fraction``; decided without the list of all groups."""
    x = np.asarray(keys, np.int64).astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64's finaliser
        x = (x ^ (x >> np.uint64(shift))) * np.uint64(mul)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) < fraction * 2.0 ** 53


def _group_keys(groups) -> np.ndarray:
    """A number per group name (its 7-byte hash): what ``epoch_order`` sorts a buffer by."""
    return np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "little") for g in groups],
                    dtype=np.int64)


def gather_rows(dset, rows: np.ndarray, out: np.ndarray, block: int = 8192) -> np.ndarray:
    """``out[:] = dset[rows]`` in the file's dtype, ``block`` sorted rows per read: a
    contiguous slice where they lie close together (contexts follow their queries), else a
    sorted fancy read. Memory: ``out`` and one block."""
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    for i in range(0, len(ranked), block):
        part = ranked[i:i + block]
        lo, hi = int(part[0]), int(part[-1]) + 1
        if hi - lo <= 4 * len(part) + 1024:
            out[order[i:i + block]] = dset[lo:hi][part - lo]
        else:
            uniq, inv = np.unique(part, return_inverse=True)
            out[order[i:i + block]] = dset[uniq][inv.reshape(-1)]
    return out


def return_freed_memory() -> None:
    """Have glibc's malloc give every block of 1 MB or more its own mapping, returned to the
    system when freed. By default that threshold rises with the blocks freed (up to 32 MB), so
    a training loop's batches, outputs and gradients (a few MB each, freed every step) pile
    up in the heap and hold their memory; streamed training asks for memory bounded by its
    buffer. Process-wide; nothing where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class StreamSource:
    """Training pairs read from the HDF5 file chunk by chunk, for caches larger than memory.
    Per epoch the chunks (``stream_chunk`` query rows each) are shuffled, ``stream_buffer`` of
    them are read together with their gold contexts and their rows shuffled, and batches are
    cut from that buffer (rows left over join the next buffer). Memory: one buffer of vectors
    in the file's dtype (a batch is turned to float32 when it is cut), and the dev split;
    nothing per row of the whole cache while training: the gold contexts and groups are read
    with their chunk, and the training rows of a chunk are the ones not in the dev split.
    Setting up, one pass holds the distinct (group, gold context) pairs (16 bytes each) to
    keep groups that share a gold context on one side (``_dev_contexts``). The dev split holds
    out whole groups chosen by a hash (``_in_dev``), so it differs from the in-memory split
    (never all of them: when the hash draws every group, none is held out). Plain pairs only: no mined negatives or silver pairs (they need random access),
    and batching is by chunk order."""

    DEV_BLOCK = 1 << 22  # dev scores computed at a time (floats): 16 MB, whatever the dev split's size

    def __init__(self, cache: Cache, cfg: TrainConfig):
        import h5py

        if cfg.mined or cfg.hard_negatives or cfg.silver:
            raise TrainError("--stream trains on plain pairs: mined negatives, silver pairs and distill need the "
                             "cache in memory")
        return_freed_memory()
        self.path = cache.path
        self.f = h5py.File(cache.path, "r")
        try:
            self._open(cache, cfg)
        except BaseException:
            self.f.close()
            raise

    def close(self) -> None:
        self.f.close()

    def _dev_contexts(self, fraction: float, seed: int) -> np.ndarray:
        """The sorted gold contexts of the dev split. Groups that share a gold context go to
        one side together (``gold_components``), as the hash of the smallest group key among
        them decides (``_in_dev``), so no dev context is ever a training row's gold. Memory: the
        (group, gold context) pair of every row while they are sorted (16 bytes each, and a sort's
        8), then the distinct ones, all freed before training starts."""
        if not self.chunks:
            return np.zeros(0, np.int64)
        keys = np.concatenate([_group_keys(g.decode() for g in self.Gd[a:b]) for a, b in self.chunks])
        gold = np.concatenate([self.Kd[a:b].astype(np.int64) for a, b in self.chunks])
        order = np.lexsort((gold, keys))  # the distinct (group, gold) pairs: sorted, then first of each run
        keys, gold = keys[order], gold[order]
        del order
        new = np.ones(len(keys), bool)
        new[1:] = (keys[1:] != keys[:-1]) | (gold[1:] != gold[:-1])
        keys, gold = keys[new], gold[new]
        del new
        group_keys, group = np.unique(keys, return_inverse=True)
        first = group_keys[gold_components(group.reshape(-1), gold)]  # sorted keys: smallest id, smallest key
        dev = _in_dev(first, fraction, seed)
        if dev.all():  # every group drawn (one or a few): hold none out, as the in-memory split never holds out all
            return np.zeros(0, np.int64)
        return np.unique(gold[dev])

    def _open(self, cache: Cache, cfg: TrainConfig) -> None:
        self.Qd, self.Cd = self.f["queries/vectors"], self.f["contexts/vectors"]
        self.Kd, self.Gd = self.f["queries/context"], column(self.f, "queries/group")
        n, step = self.Kd.shape[0], cfg.stream_chunk
        self.chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
        dev_ctx = self._dev_contexts(dev_fraction(cfg, n), cfg.seed)
        dev_rows, dev_q, dev_gold = [], [], []
        for a, b in self.chunks:  # the dev rows: those whose gold context is a dev context
            gold = self.Kd[a:b].astype(np.int64)
            dev = np.isin(gold, dev_ctx)
            if dev.any():
                dev_rows.append(a + np.flatnonzero(dev))
                dev_q.append(self.Qd[a:b][dev])
                dev_gold.append(gold[dev])
        del dev_ctx
        self.dev_rows = np.concatenate(dev_rows) if dev_rows else np.zeros(0, np.int64)  # sorted
        d = cache.dim
        if len(self.dev_rows):  # dev queries against the dev contexts: all contexts may not fit in memory
            dev_ctx, dev_q2c = _subset(np.concatenate(dev_gold), np.arange(len(self.dev_rows)))
            c = gather_rows(self.Cd, dev_ctx, np.empty((len(dev_ctx), d), self.Cd.dtype))
            self.dev = DevSet(np.concatenate(dev_q), c, dev_q2c)  # in the file's dtype, float32 when ranked
            self.dev.chunk, self.dev.block = max(1, self.DEV_BLOCK // len(dev_ctx)), 8192
        else:
            self.dev = DevSet(np.zeros((0, d), np.float32), np.zeros((0, d), np.float32), np.zeros(0, np.int64))
        del dev_q, dev_gold
        self.n_train, self.n_silver = int(n - len(self.dev_rows)), 0
        if self.n_train == 0:
            raise TrainError(f"{cache.path}: no training rows left after holding out the dev split")
        self.cfg = cfg = cfg.sized(self.n_train)
        self.bs = min(cfg.batch_size, self.n_train)
        self.steps_per_epoch = max(1, self.n_train // self.bs)

    @property
    def spread_sample(self) -> np.ndarray:
        """The dev queries (the first 4,096 queries without a dev split), as float32."""
        return (self.dev.q if len(self.dev_rows) else self.Qd[:4096]).astype(np.float32)

    def _keep(self, a: int, b: int) -> np.ndarray:
        """Which rows of ``a:b`` are training rows (not in the dev split)."""
        lo, hi = np.searchsorted(self.dev_rows, [a, b])
        keep = np.ones(b - a, dtype=bool)
        keep[self.dev_rows[lo:hi] - a] = False
        return keep

    def _load(self, chunk_ids, left=None) -> tuple[np.ndarray, ...]:
        """The training rows of ``chunk_ids`` after the rows ``left`` over from the last buffer:
        queries and gold contexts (file dtype), context rows and group keys."""
        keeps = [self._keep(*self.chunks[i]) for i in chunk_ids]
        have = len(left[0]) if left is not None else 0
        n = have + sum(int(k.sum()) for k in keeps)
        d = self.Qd.shape[1]
        q, c = np.empty((n, d), self.Qd.dtype), np.empty((n, d), self.Cd.dtype)
        ids, groups = np.empty(n, np.int64), np.empty(n, np.int64)
        if have:
            for out, x in zip((q, c, ids, groups), left):
                out[:have] = x
        p = have
        for i, keep in zip(chunk_ids, keeps):
            a, b = self.chunks[i]
            k = int(keep.sum())
            if k == 0:
                continue
            np.compress(keep, self.Qd[a:b], axis=0, out=q[p:p + k])
            ids[p:p + k] = self.Kd[a:b][keep]
            gather_rows(self.Cd, ids[p:p + k], c[p:p + k])
            groups[p:p + k] = _group_keys(g.decode() for g in self.Gd[a:b][keep])
            if not (np.isfinite(q[p:p + k]).all() and np.isfinite(c[p:p + k]).all()):
                raise TrainError(f"{self.path}: NaN or Inf in the vectors of query rows "
                                 f"{a}..{b - 1} or their contexts (chunk read while streaming)")
            p += k
        return q, c, ids, groups

    def epoch(self, rng):
        """Batches of one epoch: buffers of shuffled chunks, ordered inside a buffer as
        ``epoch_order`` does (``group``: whole groups of the buffer together)."""
        dev = self.cfg.device
        order = rng.permutation(len(self.chunks))
        left = None
        made = 0
        for g in range(0, len(order), self.cfg.stream_buffer):
            q, c, ids, grp = self._load(order[g:g + self.cfg.stream_buffer], left)
            left = None
            gid = np.unique(grp, return_inverse=True)[1].reshape(-1)
            perm = epoch_order(np.arange(len(gid)), gid, self.cfg.batching, rng) if len(gid) else gid
            full = len(ids) // self.bs * self.bs
            for s in range(0, full, self.bs):
                if made == self.steps_per_epoch:
                    return
                made += 1
                rows = perm[s:s + self.bs]
                yield Batch(q=torch.from_numpy(q[rows].astype(np.float32)).to(dev),
                            c=torch.from_numpy(c[rows].astype(np.float32)).to(dev),
                            context_ids=torch.from_numpy(ids[rows]).to(dev))
            rest = perm[full:]
            left = (q[rest], c[rest], ids[rest], grp[rest])
            del q, c, ids, grp  # the next buffer is read after this one is freed
