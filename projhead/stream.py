"""Training pairs streamed from the cache file, for caches larger than memory (``--stream``).

Usage::

    from projhead.stream import StreamSource
    source = StreamSource(cache, cfg)          # cfg.stream: as batches.MemorySource, read chunk by chunk
    for batch in source.epoch(rng): ...

The dev split holds out whole groups chosen by a hash of their name (``_in_dev``), decided
without the list of all groups; its queries are ranked against the dev contexts only.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .batches import DevSet, _subset, dev_fraction, epoch_order, gold_components
from .cache_reader import Cache, shards_said
from .config import TrainConfig, TrainError
from .h5strings import column
from .losses import Batch


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
                                 f"{a}..{b - 1} or their contexts (chunk read while streaming)" + shards_said(self.path))
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
