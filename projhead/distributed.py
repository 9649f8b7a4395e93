"""``projhead cache --ray``: encode on a Ray cluster, one encoder per actor.

Usage::

    from projhead.distributed import build_cache_ray
    build_cache_ray(pairs, "st:all-MiniLM-L6-v2", "cache/big.h5", address="local", actors=2)
    # projhead cache --dataset jsonl --data big.jsonl --ray local --ray-actors 2
    # projhead cache ... --ray ray://head-node:10001 --ray-actors 16 --device cuda

The rows of the cache are cut into shards of ``shard_size`` (in cache order: query rows, then
context rows). Ray Data runs ``map_batches`` over the shards with a pool of actors, each
holding one encoder built from the encoder's name and settings (its weights are loaded once
per actor, not per shard); an actor encodes a shard's distinct texts, longest first, and
writes ``OUT.parts/{queries,contexts}-JOB-NNNNNN.h5`` under a temporary name renamed when whole
(JOB: 12 hex digits of the job's settings, so a copy of a cache built with other settings
never reads this job's shards as its own).
A rerun skips the shards already on disk (resumable per shard). The cache ``OUT`` is then
written with the single-process format and metadata, except that ``/queries/vectors`` and
``/contexts/vectors`` are HDF5 virtual datasets joining the shard files (kept in
``OUT.parts/``, found relative to ``OUT``): no vector is copied. Every worker must see the
output folder (a shared file system on a multi-node cluster).

The vectors equal the single-process cache's up to float rounding: batches are formed
within a shard instead of across the whole sorted list, so padding differs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from .cache_build import RAY_LAYOUT, CacheResult, start_job, write_texts
from .cache_writer import CacheWriter, lock_output
from .cachefile import AS_FLOAT32, CacheError, cache_attrs, check_float16, job_identity, text_named
from .files import write_atomic
from .data import Pairs


class ShardEncoder:
    """A Ray actor: builds the encoder once, then encodes and writes whole shards."""

    def __init__(self, encoder: str, settings: dict, batch_size: int, dtype: str, threads: int = 0):
        import torch

        from .encoders import get_encoder

        if threads:
            torch.set_num_threads(threads)
        self.encoder = get_encoder(encoder, **settings)
        self.batch_size, self.dtype = batch_size, dtype

    def __call__(self, batch: dict) -> dict:
        import h5py

        done = []
        for path, role, texts in zip(batch["path"], batch["role"], batch["texts"]):
            texts = list(texts)
            uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
            order = np.argsort([-len(t) for t in uniq], kind="stable")  # longest first, as the single process
            vecs = np.empty((len(uniq), self.encoder.dim), np.float32)
            vecs[order] = self.encoder.encode([uniq[i] for i in order], batch_size=self.batch_size,
                                              role="query" if role == "queries" else "context")
            vecs = vecs[inverse]
            if not np.isfinite(vecs).all():
                raise CacheError(f"encoder {self.encoder.name} returned NaN or Inf for shard {path}")
            check_float16(vecs, self.dtype, f"encoder {self.encoder.name}: the text", text_named(texts),
                          then=f"{AS_FLOAT32} with --overwrite: the shards of a Ray run hold the cache's dtype")
            buf = io.BytesIO()  # built in memory, written with plain I/O, as the single-process cache
            with h5py.File(buf, "w", libver="latest") as f:
                f.create_dataset("vectors", data=vecs.astype(self.dtype), chunks=True, fletcher32=True)
            write_atomic(path, buf.getbuffer())
            done.append(path)
        return {"path": np.array(done, dtype=object)}


def link_shards(w: CacheWriter, role: str, rows: list) -> None:
    """``role/vectors`` of the cache being written as a virtual dataset over shard files
    [(path relative to the cache, start, stop)], each holding a dataset ``vectors``: no vector
    is copied; HDF5 finds the files relative to the cache file, a missing one reads as NaN."""
    import h5py

    layout = h5py.VirtualLayout(shape=(w.shape[role], w.dim), dtype=w.dtype)
    for rel, a, b in rows:
        layout[a:b] = h5py.VirtualSource(rel, "vectors", shape=(b - a, w.dim))
    w.f[role].create_virtual_dataset("vectors", layout, fillvalue=np.nan)
    with h5py.File(w.path.parent / rows[0][0], "r") as shard:
        w.first[role] = shard["vectors"][:1000].astype(np.float32)


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _complete(path: Path, rows: int, dim: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f["vectors"].shape == (rows, dim)
    except (OSError, KeyError):
        return False


def build_cache_ray(pairs: Pairs, encoder: str, out: str | os.PathLike, settings: dict | None = None,
                    address: str = "local", actors: int = 2, dtype: str = "float32", batch_size: int = 64,
                    shard_size: int = 2048, overwrite: bool = False, cpus_per_actor: float = 1,
                    gpus_per_actor: float = 0, progress: bool = True) -> CacheResult:
    """Encode ``pairs`` on Ray into the cache ``out`` (see module doc)."""
    import ray

    from .encoders import get_encoder

    if dtype not in ("float32", "float16"):
        raise CacheError(f"dtype must be float32 or float16, not {dtype!r}")
    settings = dict(settings or {})
    out = Path(out).absolute()
    t0 = time.perf_counter()
    probe = get_encoder(encoder, **settings)  # the identity the cache records (and a clear error if it fails)
    info, dim = probe.describe(), probe.dim
    del probe
    want = job_identity(info, pairs.meta, pairs.fingerprint(), dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_output(out)
    try:
        job = dict(want, shard_size=shard_size, batch_size=batch_size, layout=RAY_LAYOUT)
        done, parts = start_job(out, want, job, overwrite)
        if done:
            return CacheResult(out, "already complete", time.perf_counter() - t0, 0)
        work, layout = [], {"queries": [], "contexts": []}
        # the job in the shards' names: a copy of an earlier cache never links to another job's shards
        tag = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:12]
        for role, texts in (("queries", pairs.queries), ("contexts", pairs.contexts)):
            for k, (a, b) in enumerate(_shards(len(texts), shard_size)):
                path = parts / f"{role}-{tag}-{k:06d}.h5"
                layout[role].append((path, a, b))
                if not _complete(path, b - a, dim):
                    work.append({"path": str(path), "role": role, "texts": list(texts[a:b])})
        if work:
            if not ray.is_initialized():
                if address == "local":
                    # one CPU more than the actors hold, for Ray Data's own small tasks
                    ray.init(num_cpus=max(1, int(actors * cpus_per_actor)) + 1, include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = progress
            ds = ray.data.from_items(work, override_num_blocks=len(work))  # one block per shard
            threads = max(1, int(cpus_per_actor)) if not gpus_per_actor else 0
            build = {k: v for k, v in info.get("build", {}).items()}
            build.update({k: v for k, v in settings.items() if k == "device"})
            done = ds.map_batches(ShardEncoder, batch_size=1, concurrency=actors, num_cpus=cpus_per_actor,
                                  num_gpus=gpus_per_actor or None,
                                  fn_constructor_kwargs={"encoder": encoder, "settings": build,
                                                         "batch_size": batch_size, "dtype": dtype,
                                                         "threads": threads}).take_all()
            missing = [w["path"] for w in work if not _complete(Path(w["path"]), len(w["texts"]), dim)]
            if missing or len(done) != len(work):
                raise CacheError(f"{out}: Ray finished without writing {len(missing)} shards "
                                 f"(first: {missing[:1]}); rerun to redo only those")
        with CacheWriter(out, len(pairs), len(pairs.contexts), dim, dtype, vectors=False) as w:
            for role, rows in layout.items():  # the shards, linked where they lie: no vector is copied
                link_shards(w, role, [(os.path.relpath(p, out.parent), a, b) for p, a, b in rows])
            write_texts(w, pairs)
            w.finish(cache_attrs(pairs.meta, info, want["fingerprint"], time.perf_counter() - t0))
        return CacheResult(out, "written", time.perf_counter() - t0, sum(len(w["texts"]) for w in work))
    finally:
        lock.release()
