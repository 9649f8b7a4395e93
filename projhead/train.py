"""Train a head on a cache: the encoder never runs, so this takes seconds to minutes on a CPU.

Usage::

    from projhead.train import TrainConfig, train_head
    from projhead.heads import HeadConfig
    head, log = train_head("cache/squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5",
                           HeadConfig(kind="residual"), TrainConfig(epochs=5), out="heads/minilm")

The loop, nanoGPT-style: hold out a dev split (whole groups, i.e. articles, so dev contexts
are unseen), score the frozen vectors on it, then per epoch: shuffle, step over batches of
(query, gold context) pairs with AdamW and warm-up + cosine decay, clamp the temperature,
score the dev split with the out-of-500 protocol. The best epoch by ``select_metric`` is
kept; if no epoch beats the frozen vectors, the saved head is the identity (passthrough),
so a head never ships worse than the encoder it sits on, as measured on the dev split.

Heads should stay close to the frozen encoder unless the data says otherwise: identity
initialisation, early stopping (``patience``) and ``anchor_weight`` (a penalty on the mean
squared distance between head output and frozen vector) all pull that way.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .cache import Cache, open_cache
from .evaluate import PER_QUERY, dense_scorer, excluding, paired_bootstrap, rank_metrics, ranks, self_matches
from .config import ALPHA, DECISIONS, SELECT_METRICS, SMALL, TrainConfig, TrainError  # noqa: F401 (re-exported)
from .files import atomic_path
from .heads import Head, HeadConfig
from .losses import LOSSES, Batch, get_loss


MIN_GROUPS = 5  # documents needed before held-out queries can speak for documents not trained on


def split_groups(cache: Cache, need: int = MIN_GROUPS) -> list[str]:
    """What a split keeps whole: the cache's groups (documents), or each query's gold
    context when there are fewer than ``need`` groups (100 pairs of one article still get a
    held-out split, with no context on both sides; see ``within_documents``)."""
    if len(set(cache.groups)) >= need:
        return cache.groups
    return [f"context {i}" for i in cache.q2c]


def within_documents(cache: Cache) -> str | None:
    """Why a held-out gain says nothing about other documents, if it does not: fewer than
    ``MIN_GROUPS`` groups, so held-out queries share documents with the training pairs."""
    n = len(set(cache.groups))
    if n >= MIN_GROUPS:
        return None
    return (f"the pairs come from {n} document(s) (groups), so held-out queries share documents with the "
            f"training pairs and say nothing about other documents; give each document its own group "
            f"({MIN_GROUPS} or more), or pass --decision better to keep a head that helps within these documents")


def split_by_group(groups: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and dev query rows; whole groups go to one side, so no dev context is trained on."""
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

    def __init__(self, q: np.ndarray, c: np.ndarray, gold: np.ndarray, exclude: np.ndarray | None = None):
        self.q, self.c, self.gold = q, c, np.asarray(gold, np.int64)
        self.exclude = exclude

    def __len__(self) -> int:
        return len(self.gold)

    def ranks(self, head: Head | None) -> np.ndarray:
        q, c = (self.q, self.c) if head is None else (head.encode_queries(self.q), head.encode_contexts(self.c))
        return ranks(excluding(dense_scorer(q, c), self.exclude), self.gold)


def spread(x: np.ndarray) -> float:
    """How spread out vectors are: the mean per-dimension standard deviation of the
    L2-normalised rows, times sqrt(D). 0 when every vector is the same (collapse); about 1
    for directions spread evenly over the sphere."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return float(x.std(0).mean() * math.sqrt(x.shape[1]))


class _Mined:
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


def _batch(idx: np.ndarray, pair_q, pair_c, Qt, Ct, mined: _Mined | None, cfg: TrainConfig, rng) -> Batch:
    """The frozen vectors of the pairs ``idx``, with mined negatives and teacher scores."""
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
    return batch


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


CHECKPOINT_NAME = "checkpoint.safetensors"


def _save_checkpoint(path: Path, job: dict, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """One file, replaced atomically: tensors (head, loss, optimiser, best epoch, torch RNG)
    in safetensors, everything else as JSON in its metadata. No pickle."""
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp),
                      metadata={"job": json.dumps(job, default=str), "state": json.dumps(state, default=str)})
    except OSError as e:
        raise TrainError(f"{path}: cannot write the checkpoint ({e.strerror or e}); "
                         "the previous checkpoint, if any, is kept") from e


def _load_checkpoint(path: Path, job: dict) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        old_job, state = json.loads(meta["job"]), json.loads(meta["state"])
    except Exception as e:  # a damaged checkpoint: say so, do not guess
        raise TrainError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from None
    if old_job != json.loads(json.dumps(job, default=str)):
        diff = [k for k in job if old_job.get(k) != json.loads(json.dumps(job[k], default=str))]
        raise TrainError(f"{path}: checkpoint of a run with other settings ({', '.join(diff)}); "
                         "delete it or pass restart=True (--restart) to start over")
    return state, tensors


def _optimizer_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(opt, groups: list, tensors: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})




def dev_fraction(cfg: TrainConfig, n_queries: int) -> float:
    """The dev share: as set, else 5%, or 20% under ``SMALL`` queries (a dev split that can
    tell a real gain from noise needs a few hundred queries)."""
    if cfg.dev_fraction is not None:
        return cfg.dev_fraction
    return 0.05 if n_queries >= SMALL else 0.2


class _MemorySource:
    """Training pairs from a cache held in memory (the default): any batching, mined
    negatives, silver pairs. ``rows``: (train rows, dev rows) to use instead of the
    group split (model selection with folds passes its own)."""

    def __init__(self, cache: Cache, cfg: TrainConfig, rows: tuple[np.ndarray, np.ndarray] | None = None):
        Q, C, q2c = cache.queries, cache.contexts, cache.q2c
        train_rows, dev_rows = rows if rows is not None else split_by_group(
            split_groups(cache), dev_fraction(cfg, len(q2c)), cfg.seed)
        self.group_ids = np.unique(np.asarray(cache.groups), return_inverse=True)[1]  # (Nq,) int
        if len(train_rows) == 0:
            raise TrainError(f"{cache.path}: no training rows left after holding out the dev split")
        dev_ctx = np.unique(q2c[dev_rows])
        exclude = self_matches([cache.query_texts[i] for i in dev_rows], cache.context_texts)
        self.dev = DevSet(Q[dev_rows], C, q2c[dev_rows], exclude)
        self.spread_sample = Q[dev_rows] if len(dev_rows) else Q[:4096]
        self.mined = mined = _Mined(cache, cfg, train_rows, dev_ctx) if cfg.mined else None
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
            yield _batch(order[b * self.bs:(b + 1) * self.bs], self.pair_q, self.pair_c, self.Qt, self.Ct,
                         self.mined, self.cfg, rng)


def _in_dev(groups, fraction: float, seed: int) -> np.ndarray:
    """Streaming dev split: a group is held out when a hash of (seed, group) falls below
    ``fraction``; decided chunk by chunk, without the list of all groups."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{g}".encode(), digest_size=8).digest(), "little")
                     < fraction * 2.0 ** 64 for g in groups], dtype=bool)


def _read_rows(dset, rows: np.ndarray) -> np.ndarray:
    """dset[rows] as float32 for any row order: one contiguous read when the rows are close
    together (contexts follow their queries in a cache), else a sorted fancy read."""
    uniq, inv = np.unique(rows, return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * len(uniq) + 1024:
        vec = dset[lo:hi][uniq - lo]
    else:
        vec = dset[uniq]
    return vec.astype(np.float32, copy=False)[inv]


class _StreamSource:
    """Training pairs read from the HDF5 file chunk by chunk, for caches larger than memory.
    Per epoch the chunks (``stream_chunk`` query rows each) are shuffled, ``stream_buffer`` of
    them are read together with their gold contexts and their rows shuffled, and batches are
    cut from that buffer (rows left over join the next buffer). Memory: the buffer, one batch,
    the dev split and the (Nq,) index. The dev split holds out whole groups chosen by a hash
    (``_in_dev``), so it differs from the in-memory split. Plain pairs only: no mined
    negatives or silver pairs (they need random access), and batching is by chunk order."""

    def __init__(self, cache: Cache, cfg: TrainConfig):
        import h5py

        if cfg.mined or cfg.hard_negatives or cfg.silver:
            raise TrainError("--stream trains on plain pairs: mined negatives, silver pairs and distill need the "
                             "cache in memory")
        self.path = cache.path
        self.f = h5py.File(cache.path, "r")
        self.Qd, self.Cd = self.f["queries/vectors"], self.f["contexts/vectors"]
        self.q2c = self.f["queries/context"][()].astype(np.int64)
        n, step = len(self.q2c), cfg.stream_chunk
        self.chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
        self.train_mask = np.ones(n, dtype=bool)
        dev_q = []
        fraction = dev_fraction(cfg, n)
        group_hash = np.zeros(n, dtype=np.int64)  # batching by group without the list of all groups
        for a, b in self.chunks:  # one pass: the dev split, decided by group
            names = [g.decode() for g in self.f["queries/group"][a:b]]
            group_hash[a:b] = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "little")
                               for g in names]
            dev = _in_dev(names, fraction, cfg.seed)
            self.train_mask[a:b] = ~dev
            if dev.any():
                dev_q.append(self.Qd[a:b][dev].astype(np.float32))
        dev_rows = np.flatnonzero(~self.train_mask)
        d = cache.dim
        self.group_hash = group_hash
        if len(dev_rows):  # dev queries against the dev contexts: all contexts may not fit in memory
            dev_ctx, dev_q2c = _subset(self.q2c, dev_rows)
            self.dev = DevSet(np.concatenate(dev_q), _read_rows(self.Cd, dev_ctx), dev_q2c)
        else:
            self.dev = DevSet(np.zeros((0, d), np.float32), np.zeros((0, d), np.float32), np.zeros(0, np.int64))
        self.n_train, self.n_silver = int(self.train_mask.sum()), 0
        if self.n_train == 0:
            raise TrainError(f"{cache.path}: no training rows left after holding out the dev split")
        self.spread_sample = self.dev.q if len(dev_rows) else self.Qd[:4096].astype(np.float32)
        self.cfg = cfg = cfg.sized(self.n_train)
        self.bs = min(cfg.batch_size, self.n_train)
        self.steps_per_epoch = max(1, self.n_train // self.bs)

    def _load(self, chunk_ids) -> tuple[np.ndarray, ...]:
        qs, cs, ids, groups = [], [], [], []
        for i in chunk_ids:
            a, b = self.chunks[i]
            keep = self.train_mask[a:b]
            q = self.Qd[a:b][keep].astype(np.float32)
            ctx = self.q2c[a:b][keep]
            if len(ctx):
                qs.append(q)
                cs.append(_read_rows(self.Cd, ctx))
                ids.append(ctx)
                groups.append(self.group_hash[a:b][keep])
        if not qs:
            d = self.Qd.shape[1]
            return (np.zeros((0, d), np.float32), np.zeros((0, d), np.float32), np.zeros(0, np.int64),
                    np.zeros(0, np.int64))
        q, c = np.concatenate(qs), np.concatenate(cs)
        if not (np.isfinite(q).all() and np.isfinite(c).all()):
            raise TrainError(f"{self.path}: NaN or Inf in the vectors of query rows "
                             f"{self.chunks[chunk_ids[0]][0]}.. (chunk read while streaming)")
        return q, c, np.concatenate(ids), np.concatenate(groups)

    def epoch(self, rng):
        """Batches of one epoch: buffers of shuffled chunks, ordered inside a buffer as
        ``epoch_order`` does (``group``: whole groups of the buffer together)."""
        dev = self.cfg.device
        order = rng.permutation(len(self.chunks))
        left = None
        made = 0
        for g in range(0, len(order), self.cfg.stream_buffer):
            buf = self._load(order[g:g + self.cfg.stream_buffer])
            if left is not None:
                buf = tuple(np.concatenate([x, y]) for x, y in zip(left, buf))
            gid = np.unique(buf[3], return_inverse=True)[1].reshape(-1)
            perm = epoch_order(np.arange(len(gid)), gid, self.cfg.batching, rng) if len(gid) else gid
            q, c, ids, grp = (x[perm] for x in buf)
            full = len(ids) // self.bs * self.bs
            for s in range(0, full, self.bs):
                if made == self.steps_per_epoch:
                    return
                made += 1
                yield Batch(q=torch.from_numpy(q[s:s + self.bs]).to(dev), c=torch.from_numpy(c[s:s + self.bs]).to(dev),
                            context_ids=torch.from_numpy(ids[s:s + self.bs]).to(dev))
            left = (q[full:], c[full:], ids[full:], grp[full:])


def make_loss(cfg: TrainConfig):
    """The objective of ``cfg``: the trainer's temperature goes only to losses that have
    one; a temperature set for a loss without one is refused, not ignored."""
    try:
        cls = LOSSES[cfg.loss]
    except KeyError:
        raise TrainError(f"unknown loss {cfg.loss!r}; choose from {', '.join(LOSSES)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    kw = dict(cfg.loss_settings)
    if "init_temperature" in accepted:
        kw.setdefault("init_temperature", cfg.init_temperature if cfg.init_temperature is not None else 0.05)
    elif cfg.init_temperature is not None:
        raise TrainError(f"the {cfg.loss} loss has no softmax temperature: drop --temperature "
                         "(siglip: --loss-setting init_scale=...)")
    if "learn_temperature" in accepted:
        kw.setdefault("learn_temperature", cfg.learn_temperature)
    elif not cfg.learn_temperature:
        raise TrainError(f"the {cfg.loss} loss has no temperature to fix: drop --fixed-temperature")
    return get_loss(cfg.loss, **kw)


def param_groups(modules, weight_decay: float) -> list[dict]:
    """AdamW groups as open_clip makes them: weight matrices decay; scalars (the
    temperature, SigLIP's bias), biases and norm weights (fewer than 2 dimensions) do not,
    since decay would pull the temperature toward exp(0) = 1 and biases toward 0."""
    decay, keep = [], []
    seen = set()
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if p.ndim >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def setup(hcfg: HeadConfig, cfg: TrainConfig, device: str | torch.device | None = None):
    """Head, objective and optimiser on ``device``. The objective attaches to the head
    first (BYOL builds its target network and predictor there), then everything moves, so
    no part is left behind on the CPU."""
    head = Head(hcfg)
    loss_fn = make_loss(cfg)
    if hasattr(loss_fn, "attach"):
        loss_fn.attach(head)  # BYOL: target network and predictor
    device = device or cfg.device
    head.to(device)
    loss_fn.to(device)
    opt = torch.optim.AdamW(param_groups([head, loss_fn], cfg.weight_decay), lr=cfg.lr)
    return head, loss_fn, opt


class Canary:
    """A cache of another domain, scored with every head beside the frozen encoder: every
    query against every context, nDCG@10 (each query's own text left out)."""

    def __init__(self, cache: Cache | str | os.PathLike):
        if not isinstance(cache, Cache):
            cache = open_cache(cache)
        self.cache = cache
        self.name = Path(cache.path).name
        self.dev = DevSet(cache.queries, cache.contexts, cache.q2c,
                          self_matches(cache.query_texts, cache.context_texts))
        self.frozen = float(PER_QUERY["ndcg10"](self.dev.ranks(None)).mean())

    def score(self, head: Head) -> float:
        return float(PER_QUERY["ndcg10"](self.dev.ranks(head)).mean())


def _rng_state(device) -> dict:
    out = {"rng.torch": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        out["rng.cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return out


def _set_rng_state(tensors: dict, device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(tensors["rng.cuda"], torch.device(device))


def _check(cfg: TrainConfig, hcfg: HeadConfig, cache) -> None:
    if cfg.anchor_weight and hcfg.output_dim != hcfg.in_dim:
        raise TrainError(f"anchor_weight pulls head outputs toward the frozen vectors, so out_dim "
                         f"({hcfg.output_dim}) must equal the encoder's dimension ({hcfg.in_dim})")
    if (cfg.hard_negatives or cfg.silver or cfg.loss == "distill") and not cfg.mined:
        raise TrainError("hard negatives, silver pairs and the distill loss need a mined set: "
                         f"run `projhead mine {cache.path}`, then pass --mined NAME")
    if cfg.loss == "byol" and cfg.hard_negatives:
        raise TrainError("the byol loss uses no negatives: drop --hard-negatives (or use a contrastive loss)")


def fit(cache: Cache, hcfg: HeadConfig, cfg: TrainConfig, rows=None, ckpt: Path | None = None,
        job: dict | None = None, progress: bool = True, canaries=()) -> dict:
    """One training run: epochs over the training pairs, each scored on the dev queries.
    Returns the head with its best epoch's weights (or its step-0 weights when no epoch beat
    the frozen encoder), the log, and every epoch's per-query dev ranks (``epoch_ranks``,
    epoch 0 = frozen). Without dev queries the last epoch is kept. A non-finite loss ends
    the run at the last good epoch, said in the log (``stopped``)."""
    _check(cfg, hcfg, cache)
    t_start = time.perf_counter()
    source = _StreamSource(cache, cfg) if cfg.stream else _MemorySource(cache, cfg, rows)
    cfg = source.cfg  # sized to the data
    threads = torch.get_num_threads()
    # small batches are tiny matrix products: one thread is as fast, and far faster when
    # other processes share the cores (threads then wait on each other at every op)
    torch.set_num_threads(cfg.threads or (1 if cfg.batch_size <= 512 else threads))
    try:
        return _fit(source, cfg, hcfg, ckpt, job, progress, canaries, t_start)
    finally:
        torch.set_num_threads(threads)


def _fit(source, cfg: TrainConfig, hcfg: HeadConfig, ckpt, job, progress, canaries, t_start) -> dict:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = source.dev
    head, loss_fn, opt = setup(hcfg, cfg)
    init_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}

    total_steps = source.steps_per_epoch * cfg.epochs
    has_dev = len(dev) > 0
    frozen_ranks = dev.ranks(None) if has_dev else np.zeros(0, np.int64)
    frozen = rank_metrics(frozen_ranks) if has_dev else {}
    log = {"epochs": [], "frozen_dev": frozen, "n_train": source.n_train, "n_dev": int(len(dev)),
           "n_silver": source.n_silver, "frozen_spread": spread(source.spread_sample),
           "settings": {"batch_size": cfg.batch_size, "epochs": cfg.epochs, "patience": cfg.patience,
                        "steps_per_epoch": source.steps_per_epoch},
           "canaries_frozen": {c.name: c.frozen for c in canaries}}
    epoch_ranks = {0: frozen_ranks}
    best = {"score": frozen.get(cfg.select_metric, -math.inf), "epoch": 0, "state": None, "metrics": frozen}
    step, bad_epochs, first_epoch = 0, 0, 1
    resumed = _load_checkpoint(ckpt, job) if ckpt is not None else None
    if resumed is not None:
        state, tensors = resumed
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        loss_fn.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
        _restore_optimizer(opt, state["param_groups"], tensors)
        _set_rng_state(tensors, cfg.device)
        rng.bit_generator.state = state["numpy_rng"]
        step, bad_epochs, first_epoch, log = state["step"], state["bad_epochs"], state["epoch"] + 1, state["log"]
        best = dict(state["best"], state={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None)
        epoch_ranks.update({int(k[6:]): v.numpy() for k, v in tensors.items() if k.startswith("ranks.")})
        if progress:
            print(f"resuming from {ckpt} after epoch {state['epoch']}", flush=True)
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not progress)
    for epoch in range(first_epoch, cfg.epochs + 1):
        if bad_epochs >= cfg.patience or log.get("stopped"):
            break  # a resumed run that had already stopped
        t0 = time.perf_counter()
        head.train()
        losses = []
        for batch in source.epoch(rng):
            loss, q, c = loss_fn.batch_loss(head, batch)
            if cfg.anchor_weight:
                # pull outputs toward the frozen vectors: stay close unless the data says otherwise
                loss = loss + cfg.anchor_weight * ((q - batch.q).pow(2).sum(1).mean()
                                                   + (c - batch.c).pow(2).sum(1).mean()) / 2
            if not torch.isfinite(loss.detach()):
                log["stopped"] = (f"non-finite training loss at epoch {epoch}, step {step + 1} (lr {cfg.lr} may be "
                                  f"too high); kept epoch {best['epoch']}, the best before it")
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total_steps, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_fn.after_step(step / total_steps)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", T=f"{loss_fn.temperature:.4f}")
        if log.get("stopped"):
            bar.write(f"stopped: {log['stopped']}") if progress else None
            break
        head.eval()
        cpu_head = head.cpu()
        r = dev.ranks(cpu_head) if has_dev else np.zeros(0, np.int64)
        metrics = rank_metrics(r) if has_dev else {}
        if has_dev and not all(math.isfinite(v) for v in metrics.values()):
            log["stopped"] = f"non-finite dev metric at epoch {epoch}; kept epoch {best['epoch']}"
            break
        epoch_ranks[epoch] = r
        out_spread = spread(cpu_head.encode_queries(source.spread_sample))
        canary_scores = {c.name: c.score(cpu_head) for c in canaries}
        head.to(cfg.device)
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)), "temperature": loss_fn.temperature,
                 "lr": _lr_at(step - 1, total_steps, cfg), "dev": metrics, "spread": out_spread,
                 "canaries": canary_scores, "seconds": time.perf_counter() - t0}
        log["epochs"].append(entry)
        score = metrics[cfg.select_metric] if has_dev else epoch  # no dev: the last epoch
        if progress:
            bar.write(f"epoch {epoch}: loss {entry['train_loss']:.4f}  T {entry['temperature']:.4f}  "
                      + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"  spread {out_spread:.3f}"
                      + "".join(f"  canary {k} nDCG@10 {v:.4f} (frozen {log['canaries_frozen'][k]:.4f})"
                                for k, v in canary_scores.items())
                      + f"  (frozen {cfg.select_metric} {frozen.get(cfg.select_metric, float('nan')):.4f})")
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "metrics": metrics,
                    "state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if ckpt is not None:
            opt_tensors, opt_json = _optimizer_tensors(opt)
            tensors = {**{f"head.{k}": v for k, v in head.state_dict().items()},
                       **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()},
                       **{f"best.{k}": v for k, v in (best["state"] or {}).items()},
                       **{f"ranks.{e}": torch.from_numpy(np.asarray(v, np.int64)) for e, v in epoch_ranks.items()},
                       **opt_tensors, **_rng_state(cfg.device)}
            _save_checkpoint(ckpt, job, {"epoch": epoch, "step": step, "bad_epochs": bad_epochs, "log": log,
                                         "numpy_rng": rng.bit_generator.state, **opt_json,
                                         "best": {k: v for k, v in best.items() if k != "state"}}, tensors)
        if bad_epochs >= cfg.patience:
            break
    bar.close()
    if isinstance(source, _StreamSource):
        source.f.close()
    head = head.cpu()
    # no epoch beat the frozen vectors: the step-0 weights (identity for identity-initialised heads)
    head.load_state_dict(best["state"] if best["state"] is not None else init_state)
    head.eval()
    log.update(best_epoch=best["epoch"], seconds=time.perf_counter() - t_start)
    return {"head": head, "log": log, "best": best, "epoch_ranks": epoch_ranks, "frozen": frozen, "cfg": cfg,
            "dev": dev}


def finish(head: Head, cfg: TrainConfig, dev: DevSet | None, frozen_ranks: np.ndarray | None, canaries=(),
           log: dict | None = None, ranks_now: np.ndarray | None = None, narrow: str | None = None) -> dict:
    """After selection: interpolate toward the frozen encoder (``cfg.alpha``, default
    ``ALPHA`` for heads that start at the frozen encoder), shrink
    further while a canary loses more than ``canary_tolerance``, then decide on the dev
    queries whether the head replaces the identity (``cfg.decision``). Returns what was
    decided; the head is changed in place (``passthrough`` when the identity is kept).
    ``narrow``: why the held-out queries cannot speak for other documents (``within_documents``);
    the bootstrap decision then keeps the identity."""
    log = log if log is not None else {}
    trained = {k: v.clone() for k, v in head.state_dict().items()}
    alpha = cfg.alpha if cfg.alpha is not None else (ALPHA if head.can_interpolate() else 1.0)
    alphas = [alpha] + [a for a in (0.75, 0.5, 0.25) if a < alpha]  # shrunk further only for canaries
    chosen, canary_now = None, {}
    for a in alphas:
        head.load_state_dict(trained)
        if a < 1.0:
            if not head.can_interpolate():
                break  # a randomly initialised head has no frozen end to move toward
            head.interpolate(a)
        canary_now = {c.name: c.score(head) for c in canaries}
        if all(c.frozen - canary_now[c.name] <= cfg.canary_tolerance for c in canaries):
            chosen = a
            break
    decision = {"alpha": chosen, "canaries": {c.name: {"frozen": c.frozen, "head": canary_now.get(c.name)}
                                              for c in canaries}}
    if chosen is None:
        decision["kept"] = "identity"
        decision["why"] = (f"every interpolation toward the frozen encoder lost more than {cfg.canary_tolerance} "
                           "nDCG@10 on a canary" if canaries else "the head cannot be interpolated")
    elif dev is not None and len(dev):
        r = dev.ranks(head) if (chosen != 1.0 or ranks_now is None) else ranks_now
        f = PER_QUERY[cfg.select_metric]
        boot = paired_bootstrap(f(r), f(frozen_ranks), seed=cfg.seed)
        decision.update(dev_gain=boot, dev_head=rank_metrics(r))
        keep = boot["low"] > 0 if cfg.decision == "bootstrap" else boot["gain"] > 0
        decision["kept"] = "head" if keep and not (cfg.decision == "bootstrap" and narrow) else "identity"
        if not keep:
            decision["why"] = (f"dev {cfg.select_metric} gain {boot['gain']:+.4f} (95% interval {boot['low']:+.4f} "
                               f"to {boot['high']:+.4f}) is not above 0")
        elif decision["kept"] == "identity":
            decision["why"] = narrow
    else:
        decision["kept"] = "head"  # nothing to decide on: the caller decided (model selection with folds)
    if decision["kept"] == "identity":
        head.reset_to_identity()
    log["decision"] = decision
    return decision


def train_head(cache: Cache | str | os.PathLike, head_config: HeadConfig | None = None,
               config: TrainConfig | None = None, out: str | os.PathLike | None = None,
               progress: bool = True, restart: bool = False) -> tuple[Head, dict]:
    """Train, select and (if ``out``) save a head; returns it and the training log.

    Settings left as None are sized to the data (``TrainConfig.sized``). The dev queries
    are ranked against every context of the cache; the best epoch is kept only if its gain
    over the frozen encoder is more than noise (``decision``), else the head is the identity.

    With ``out``, a checkpoint is written after every epoch to ``out/checkpoint.safetensors``;
    a run stopped in any way resumes from it when called again with the same settings and
    ends with the same head as an uninterrupted run (same seed). ``restart`` discards it."""
    cfg = config or TrainConfig()
    if not isinstance(cache, Cache):
        cache = open_cache(cache, load=not cfg.stream)
    # the cache decides the input dimension and the encoder the head will accept
    hcfg = replace(head_config or HeadConfig(), in_dim=cache.dim, encoder=cache.encoder,
                   encoder_weights_sha256=cache.encoder_info.get("weights_sha256", ""))
    if cfg.alpha is not None and cfg.alpha < 1 and not Head(hcfg).can_interpolate():
        raise TrainError(f"alpha {cfg.alpha} interpolates toward the frozen encoder, which only identity-initialised "
                         "linear and residual heads of the encoder's dimension contain")
    canaries = [Canary(c) for c in cfg.canaries]
    for c in canaries:
        Head(hcfg).check_cache(c.cache)
    ckpt = Path(out) / CHECKPOINT_NAME if out is not None else None
    job = {"train": asdict(cfg), "head": asdict(hcfg), "cache_fingerprint": cache.attrs["fingerprint"]}
    if ckpt is not None and restart and ckpt.exists():
        ckpt.unlink()
    run = fit(cache, hcfg, cfg, ckpt=ckpt, job=job, progress=progress, canaries=canaries)
    head, log = run["head"], run["log"]
    best = run["best"]
    if best["state"] is None:
        head.reset_to_identity()
        log["decision"] = {"kept": "identity", "why": "no epoch beat the frozen encoder on the dev queries"}
    else:
        finish(head, cfg, run["dev"], run["epoch_ranks"][0], canaries, log, run["epoch_ranks"][best["epoch"]],
               narrow=within_documents(cache) if not cfg.stream else None)
    return save_trained(head, log, cache, run["cfg"], run["frozen"], out, ckpt)


def save_trained(head: Head, log: dict, cache: Cache, cfg: TrainConfig, frozen: dict, out, ckpt=None,
          extra: dict | None = None) -> tuple[Head, dict]:
    """Record what was trained and decided in the head, and write the folder."""
    decision = log.get("decision", {})
    log.update(passthrough=head.config.passthrough)
    head_metrics = decision.get("dev_head") or (log["epochs"][log["best_epoch"] - 1]["dev"]
                                                 if log.get("best_epoch") else frozen)
    head.info = {
        "training": asdict(cfg),
        "encoder_build": cache.encoder_info.get("build", {}),
        "cache": {"path": str(cache.path), "fingerprint": cache.attrs["fingerprint"],
                  "dataset": cache.attrs["dataset"], "split": cache.attrs["split"],
                  "granularity": cache.attrs["granularity"], "n_queries": int(cache.attrs["n_queries"])},
        "metrics": {"frozen": frozen, "head": frozen if head.config.passthrough else head_metrics},
        "best_epoch": log.get("best_epoch", 0),
        "decision": _jsonable(decision),
        **(extra or {}),
    }
    if out is not None:
        out = Path(out)
        head.save(out)
        (out / "train_log.json").write_text(json.dumps(_jsonable(log), indent=1))
        from .report import plot_log

        plot_log(log, out / "training_curve.png", cfg.select_metric)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()  # the finished head replaces it
    return head, log


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
