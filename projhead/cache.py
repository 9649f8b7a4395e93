"""Encode once, store in HDF5: the cache every later step reads.

Usage::

    from projhead.cache import build_cache, open_cache
    build_cache(pairs, encoder, "cache/squad-dev.h5")   # resumable, idempotent
    c = open_cache("cache/squad-dev.h5")
    c.queries, c.contexts, c.q2c, c.attrs["encoder"]

File layout (format ``projhead-cache`` version 2)::

    /queries/vectors   (Nq, D) float32 or float16, one row per query
    /queries/text      (Nq,)   UTF-8 strings
    /queries/id        (Nq,)   UTF-8 strings
    /queries/group     (Nq,)   UTF-8 strings (article title), for leak-free splits
    /queries/context   (Nq,)   int64, row of the gold context in /contexts
    /contexts/vectors  (Nc, D) distinct contexts, each encoded once
    /contexts/text     (Nc,)   UTF-8 strings
    /mined/NAME/...    optional, written by ``projhead mine`` (see ``mine.write_mined``): hard
                       negatives, teacher scores and silver pairs, with their settings
    attributes on /: format, format_version, encoder, encoder_json (name, resolved path,
    settings, weights sha256), versions_json, dim, dtype, normalized, dataset, split,
    granularity, meta_json, fingerprint (sha256 of every text, id, group and the index,
    checked on every read), n_queries, n_contexts

How it stays safe: work goes into a folder ``OUT.parts/`` of shards (``.npy``), each
written to a temporary name and renamed, so a shard is either whole or absent, whatever
kills the process. A rerun encodes only missing shards; shards cover fixed, deterministic
slices of the length-sorted texts, so the result is bit-identical to an uninterrupted run.
When all shards exist they are joined into ``OUT.tmp.h5``, which is renamed to ``OUT``:
a finished cache is never half written, and an older file at ``OUT`` survives until then.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .data import Pairs, content_sha256
from .files import atomic_path, write_atomic

FORMAT = "projhead-cache"
FORMAT_VERSION = 2  # 2: the fingerprint covers groups too and is the read-time check of the texts


WRITE_BLOCK = 65536  # rows of vectors gathered and written at a time: the most held in memory


class CacheError(ValueError):
    """A cache that cannot be used, or may not be overwritten; the message says why."""


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def job_identity(encoder_info: dict, meta: dict, fingerprint: str, dtype: str) -> dict:
    """What must match for two runs to be the same work: the encoder, the data (its metadata
    and fingerprint) and the stored dtype."""
    return {"encoder": encoder_info["name"], "weights_sha256": encoder_info["weights_sha256"],
            "settings": encoder_info["settings"], "fingerprint": fingerprint, "dataset": meta.get("dataset"),
            "split": meta.get("split"), "granularity": meta.get("granularity"), "dtype": dtype}


def _describe_mismatch(have: dict, want: dict) -> str:
    diffs = [f"{k}: file has {have.get(k)!r}, this run {want[k]!r}" for k in want if have.get(k) != want[k]]
    return "; ".join(diffs)


def _plan(texts: list[str]) -> np.ndarray:
    """Order of encoding: longest first (stable), so each batch pads little and the first
    batches show the slowest rate."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.argsort(-lengths, kind="stable")


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


class ShardedVectors:
    """The vectors of one role's distinct texts, as shard files on disk: ``rows(idx)`` gathers
    any of them (memory: the rows asked for), so the cache file is written block by block."""

    def __init__(self, parts: Path, role: str, order: np.ndarray, shard_size: int, dim: int):
        self.parts, self.role, self.size, self.dim = parts, role, shard_size, dim
        self.position = np.empty(len(order), np.int64)
        self.position[order] = np.arange(len(order))  # text -> place in the encoding order

    def shard(self, k: int) -> Path:
        return self.parts / f"{self.role}-{k:06d}.npy"

    def rows(self, idx: np.ndarray) -> np.ndarray:
        pos = self.position[np.asarray(idx, dtype=np.int64)]
        out = np.empty((len(pos), self.dim), np.float32)
        by_shard = np.argsort(pos // self.size, kind="stable")  # rows grouped by shard, one pass
        shards, starts = np.unique(pos[by_shard] // self.size, return_index=True)
        for k, sel in zip(shards, np.split(by_shard, starts[1:])):
            shard = np.load(self.shard(int(k)), mmap_mode="r", allow_pickle=False)
            out[sel] = shard[pos[sel] % self.size]
            del shard
        return out


def _encode_role(encoder, texts: list[str], role: str, parts: Path, shard_size: int, batch_size: int,
                 bar) -> ShardedVectors:
    """Encode the distinct ``texts`` shard by shard, skipping shards already on disk."""
    order = _plan(texts)
    dim = encoder.dim
    stored = ShardedVectors(parts, role, order, shard_size, dim)
    for k, start in enumerate(range(0, len(texts), shard_size)):
        rows = order[start:start + shard_size]
        shard = stored.shard(k)
        ok = False
        if shard.exists():
            try:
                ok = np.load(shard, mmap_mode="r", allow_pickle=False).shape == (len(rows), dim)
            except (ValueError, OSError):
                ok = False  # a damaged shard is redone
        if not ok:
            vecs = encoder.encode([texts[i] for i in rows], batch_size=batch_size, role=role)
            if not np.isfinite(vecs).all():
                raise CacheError(f"encoder {encoder.name} returned NaN or Inf for {role} texts "
                                 f"(shard {k}); nothing was written for this shard")
            _write_npy_atomic(shard, vecs.astype(np.float32))
        bar.update(len(rows))
    return stored


def lock_output(out: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(out) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheError(f"{out}: another projhead process is writing this cache (lock {out}.lock held)") from None
    return lock


@dataclass
class CacheResult:
    path: Path
    status: str  # "written" or "already complete"
    seconds: float
    texts_encoded: int


def build_cache(pairs: Pairs, encoder, out: str | os.PathLike, dtype: str = "float32", batch_size: int = 64,
                shard_size: int = 2048, overwrite: bool = False, progress: bool = True) -> CacheResult:
    """Encode ``pairs`` with ``encoder`` into the HDF5 file ``out`` (see module doc)."""
    if dtype not in ("float32", "float16"):
        raise CacheError(f"dtype must be float32 or float16, not {dtype!r}")
    out = Path(out)
    t0 = time.perf_counter()
    info = encoder.describe()
    want = job_identity(info, pairs.meta, pairs.fingerprint(), dtype)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_output(out)
    except OSError as e:
        raise CacheError(f"{out}: cannot write in {out.parent} ({e.strerror or e})") from e
    try:
        return _build_locked(pairs, encoder, out, dtype, batch_size, shard_size, overwrite, progress, info, want, t0)
    except OSError as e:  # disk full, read-only folder, quota...: name it, keep what is done
        parts = Path(str(out) + ".parts")
        kept = len(list(parts.glob("*.npy"))) if parts.is_dir() else 0
        raise CacheError(f"{out}: cannot write {e.filename or ''} ({e.strerror or e}); "
                         f"{kept} finished shards are kept in {parts}, and the same command resumes from them"
                         + ("; the existing cache file is untouched" if out.exists() else "")) from e
    finally:
        # the lock file stays: deleting it would let a third process lock a new file
        # while a second still holds the old one
        lock.release()


def start_job(out: Path, want: dict, job: dict, overwrite: bool) -> tuple[bool, Path]:
    """What every cache builder checks before encoding (under the lock): a finished cache of
    the same work is kept (returns True), one of other work is refused; partial work of another
    job in ``OUT.parts/`` is refused unless ``overwrite``; the job's manifest is written."""
    if out.exists() and not overwrite:
        have = _read_identity(out)
        if have == want:
            return True, Path(str(out) + ".parts")
        raise CacheError(f"{out}: exists and holds other work ({_describe_mismatch(have, want)}); "
                         "refusing to overwrite: pass --overwrite or choose another path")
    parts = Path(str(out) + ".parts")
    manifest = parts / "manifest.json"
    if parts.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if old != job:
            if not overwrite:
                raise CacheError(f"{parts}: partial work from a different run "
                                 f"({_describe_mismatch(old or {}, job) or 'unreadable manifest'}); "
                                 "pass --overwrite to discard it")
            shutil.rmtree(parts)
    parts.mkdir(exist_ok=True)
    if not manifest.exists():
        write_atomic(manifest, json.dumps(job, indent=1))
    return False, parts


def _build_locked(pairs, encoder, out, dtype, batch_size, shard_size, overwrite, progress, info, want, t0):
    from tqdm.auto import tqdm

    done, parts = start_job(out, want, dict(want, shard_size=shard_size, batch_size=batch_size), overwrite)
    if done:
        return CacheResult(out, "already complete", time.perf_counter() - t0, 0)

    # Encode distinct query texts once (a few questions repeat), and distinct contexts.
    uq, q_inverse = np.unique(np.array(pairs.queries, dtype=object), return_inverse=True)
    uq = list(uq)
    total = len(uq) + len(pairs.contexts)
    with tqdm(total=total, unit="texts", desc=f"encoding {out.name}", disable=not progress,
              smoothing=0.1) as bar:
        qv = _encode_role(encoder, uq, "query", parts, shard_size, batch_size, bar)
        cv = _encode_role(encoder, pairs.contexts, "context", parts, shard_size, batch_size, bar)

    step = WRITE_BLOCK
    with CacheWriter(out, len(pairs), len(pairs.contexts), encoder.dim, dtype) as w:
        for a in range(0, len(pairs), step):
            w.write("queries/vectors", a, qv.rows(q_inverse.reshape(-1)[a:a + step]))
        for a in range(0, len(pairs.contexts), step):
            w.write("contexts/vectors", a, cv.rows(np.arange(a, min(a + step, len(pairs.contexts)))))
        write_texts(w, pairs)
        w.finish(cache_attrs(pairs.meta, info, want["fingerprint"], time.perf_counter() - t0))
    shutil.rmtree(parts, ignore_errors=True)
    return CacheResult(out, "written", time.perf_counter() - t0, total)


def _versions(info: dict) -> dict:
    import h5py

    v = dict(info.get("versions", {}))
    v.update({"projhead": __version__, "h5py": h5py.__version__, "numpy": np.__version__,
              "python": sys.version.split()[0], "platform": platform.platform()})
    return v


class CacheWriter:
    """The one writer of cache files: datasets are created with their final shapes, vectors
    are written in row blocks as they come (memory: one block), the attributes last; then
    the file is synced and renamed into place (``files.atomic_path``), so a reader sees the
    old file or the whole new one. Used by ``build_cache`` (blocks gathered from its shards),
    the Ray builder (``vectors=False``: ``distributed.link_shards`` makes them virtual datasets) and
    ``bench/bench_out_of_core.py`` (5M rows)::

        with CacheWriter(path, n_queries, n_contexts, dim, "float16") as w:
            w.write("queries/vectors", 0, block)          # (rows, dim), any dtype
            w.write("queries/text", 0, texts)             # also queries/id, queries/group,
            w.write("queries/context", 0, q2c)            # contexts/text, contexts/vectors
            w.finish(attrs)                               # format, encoder, fingerprint...

    A failed write (disk full, file size limit) raises OSError naming the file, and the
    temporary file is removed.
    """

    def __init__(self, path: str | os.PathLike, n_queries: int, n_contexts: int, dim: int, dtype: str,
                 vectors: bool = True, block: int = 4096):
        self.path = Path(path)
        self.shape = {"queries": n_queries, "contexts": n_contexts}
        self.dim, self.dtype, self.vectors, self.block = dim, dtype, vectors, block
        self.first: dict[str, np.ndarray] = {}  # the first rows of each role: whether vectors are unit length
        self._atomic = atomic_path(self.path)
        self.f = None

    def __enter__(self) -> "CacheWriter":
        import h5py

        tmp = self._atomic.__enter__()
        try:
            self.raw = _GuardedFile(tmp)
            # libver "latest": checksummed metadata, so a damaged file fails to open instead of
            # feeding the reader garbage
            self.f = h5py.File(self.raw, "w", libver="latest")
            s = _str_dtype()
            for role, n in self.shape.items():
                g = self.f.create_group(role)
                if self.vectors:
                    # fletcher32: a checksum per chunk, so damaged vectors fail to read instead
                    # of coming back as other numbers
                    g.create_dataset("vectors", (n, self.dim), self.dtype, fletcher32=n > 0,
                                     chunks=(max(1, min(self.block, n)), self.dim) if n else None)
                g.create_dataset("text", (n,), s)
            for key in ("id", "group"):
                self.f["queries"].create_dataset(key, (self.shape["queries"],), s)
            nq = self.shape["queries"]
            self.f["queries"].create_dataset("context", (nq,), "int64", fletcher32=nq > 0,
                                             chunks=(max(1, min(65536, nq)),) if nq else None)
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, key: str, start: int, values) -> None:
        """Rows ``start ..`` of dataset ``key`` (e.g. ``queries/vectors``, ``contexts/text``)."""
        self.raw.check()
        if key.endswith("/vectors"):
            values = np.asarray(values)
            role = key.split("/")[0]
            if role not in self.first and start == 0:
                self.first[role] = values[:1000].astype(np.float32)
            values = values.astype(self.dtype, copy=False)
        elif not len(values):
            return
        self.f[key][start:start + len(values)] = values

    def finish(self, attrs: dict) -> None:
        """The file's attributes (see the module doc); ``normalized`` is measured here."""
        first = [v for v in self.first.values() if len(v)]
        norms = np.linalg.norm(np.concatenate(first), axis=1) if first else np.ones(1)
        self.f.attrs.update({**attrs, "dim": self.dim, "dtype": self.dtype,
                             "normalized": bool(np.allclose(norms, 1.0, atol=1e-3)),
                             "n_queries": self.shape["queries"], "n_contexts": self.shape["contexts"],
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def _abort(self) -> None:
        if self.f is not None:
            with contextlib.suppress(Exception):
                self.f.close()
            self.f = None
        with contextlib.suppress(Exception):
            self.raw.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __exit__(self, kind, err, tb) -> None:
        if kind is not None:
            self._abort()
            return
        try:
            self.f.close()  # HDF5 flushes here: a full disk fails here too
            self.f = None
            self.raw.close()
            self.raw.check()
        except BaseException:
            self._abort()
            raise
        self._atomic.__exit__(None, None, None)  # fsync, rename


class _GuardedFile(io.RawIOBase):
    """The file HDF5 writes through. HDF5 turns a failed write (disk full, file size limit)
    into an error and can then crash the process when it closes the file (seen here); so a
    failed write is recorded and reported to HDF5 as done, later writes are dropped, and
    ``check()`` raises the first failure as the clean OSError it was. The file is a temporary
    that is then removed."""

    def __init__(self, path: Path, mode: str = "w+b"):
        self._f = open(path, mode)
        self.name = str(path)
        self.error: OSError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def write(self, b) -> int:
        n = len(memoryview(b))
        if self.error is None:
            try:
                self._f.write(b)
                return n
            except OSError as e:
                self.error = e
        self._f.seek(n, 1)
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as e:
                self.error = e
        return size if size is not None else self.tell()

    def flush(self) -> None:
        if self.error is None and not self._f.closed:
            try:
                self._f.flush()
            except OSError as e:
                self.error = e

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()
        super().close()


def cache_attrs(pairs_meta: dict, info: dict, fingerprint: str, encode_seconds: float) -> dict:
    """The attributes every cache carries (the module doc lists them), but for the sizes,
    which ``CacheWriter.finish`` adds."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": info["name"],
            "encoder_json": json.dumps(info), "versions_json": json.dumps(_versions(info)),
            "dataset": str(pairs_meta.get("dataset", "")), "split": str(pairs_meta.get("split", "")),
            "granularity": str(pairs_meta.get("granularity", "")), "meta_json": json.dumps(pairs_meta),
            "fingerprint": fingerprint,
            "encode_seconds": encode_seconds}  # this run's share (a resumed run counts its own part)


def write_texts(w: CacheWriter, pairs: Pairs) -> None:
    w.write("queries/text", 0, pairs.queries)
    w.write("queries/id", 0, pairs.query_ids)
    w.write("queries/group", 0, pairs.groups)
    w.write("queries/context", 0, np.asarray(pairs.q2c, dtype=np.int64))
    w.write("contexts/text", 0, pairs.contexts)


def _read_identity(path: Path) -> dict:
    c = open_cache(path, check_finite=False, load=False)
    enc = c.encoder_info
    return {"encoder": enc["name"], "weights_sha256": enc.get("weights_sha256"), "settings": enc.get("settings"),
            "fingerprint": c.attrs["fingerprint"], "dataset": c.attrs["dataset"], "split": c.attrs["split"],
            "granularity": c.attrs["granularity"], "dtype": c.attrs["dtype"]}


# ---------------------------------------------------------------------------------------
# Reading

_REQUIRED = ["queries/vectors", "queries/text", "queries/id", "queries/group", "queries/context",
             "contexts/vectors", "contexts/text"]
_ATTRS = ["format", "format_version", "encoder", "encoder_json", "dim", "dtype", "normalized", "dataset",
          "split", "granularity", "fingerprint", "n_queries", "n_contexts"]


class Cache:
    """A finished cache, read into memory (vectors as float32)."""

    def __init__(self, path: Path, attrs: dict, arrays: dict | None, mined_sets: list[str] | None = None):
        self.path = path
        self.attrs = attrs
        self._arrays = arrays
        self.mined_sets = mined_sets or []  # names of the mined sets stored in the file

    def _get(self, key):
        if self._arrays is None:
            raise CacheError(f"{self.path}: opened without loading arrays")
        return self._arrays[key]

    @property
    def encoder(self) -> str:
        return self.attrs["encoder"]

    @property
    def encoder_info(self) -> dict:
        info = json.loads(self.attrs["encoder_json"])
        settings = info.get("settings")
        if isinstance(settings, dict) and "precision" not in settings and info["name"].startswith(("st:", "openclip:")):
            settings["precision"] = "fp32"  # written before the precision was recorded: it was always fp32
        return info

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    queries = property(lambda self: self._get("queries/vectors"))  # (Nq, D) float32
    contexts = property(lambda self: self._get("contexts/vectors"))  # (Nc, D) float32
    q2c = property(lambda self: self._get("queries/context"))  # (Nq,) int64
    query_texts = property(lambda self: self._get("queries/text"))
    query_ids = property(lambda self: self._get("queries/id"))
    groups = property(lambda self: self._get("queries/group"))
    context_texts = property(lambda self: self._get("contexts/text"))

    def subset(self, rows) -> "Cache":
        """The queries ``rows`` (in that order) with only their gold contexts, in memory: a
        smaller training set without encoding anything again (learning curves, a slice of
        the data). Its fingerprint is of its own content; mined sets are not carried."""
        rows = np.asarray(rows, dtype=np.int64)
        ctx, local = np.unique(self.q2c[rows], return_inverse=True)
        arrays = {"queries/vectors": self.queries[rows], "contexts/vectors": self.contexts[ctx],
                  "queries/context": local.reshape(-1).astype(np.int64),
                  "queries/text": [self.query_texts[i] for i in rows],
                  "queries/id": [self.query_ids[i] for i in rows],
                  "queries/group": [self.groups[i] for i in rows],
                  "contexts/text": [self.context_texts[i] for i in ctx]}
        columns = [arrays[k] for k in ("queries/text", "queries/id", "queries/group", "contexts/text")]
        attrs = dict(self.attrs, n_queries=len(rows), n_contexts=len(ctx), split=f"{self.attrs['split']}[subset]",
                     fingerprint=content_sha256(*columns, arrays["queries/context"]))
        return Cache(self.path, attrs, arrays)

    def describe(self) -> dict:
        """Everything worth printing about the cache."""
        a = self.attrs
        d = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items() if not k.endswith("_json")}
        d["encoder_info"] = self.encoder_info
        d["versions"] = json.loads(a.get("versions_json", "{}"))
        d["meta"] = json.loads(a.get("meta_json", "{}"))
        d["file_bytes"] = self.path.stat().st_size
        d["mined"] = {name: self.mined_settings(name) for name in self.mined_sets}
        return d

    def mined_settings(self, name: str) -> dict:
        """The settings a mined set was made with (what ``projhead info`` shows)."""
        import h5py

        with h5py.File(self.path, "r") as f:
            return json.loads(f["mined"][name].attrs["settings_json"])

    def mined(self, name: str) -> dict:
        """The mined set ``name``, checked against this cache (see ``mine.read_mined``)."""
        from .mine import read_mined

        return read_mined(self, name)


def extend_cache(path: str | os.PathLike, fill, what: str) -> None:
    """Add to the cache at ``path``: ``fill(h5py_file)`` runs on a copy opened for writing,
    which then replaces the file (``files.atomic_path``), so the cache is whole before and
    after whatever happens; memory stays bounded (the copy streams on disk). ``what`` names
    the addition in errors. ``projhead mine`` stores its sets this way."""
    import h5py

    path = Path(path)
    open_cache(path, load=False)  # a valid cache, or a clear error
    lock = lock_output(path)
    try:
        with atomic_path(path) as tmp:
            shutil.copyfile(path, tmp)
            raw = _GuardedFile(tmp, "r+b")
            try:
                with h5py.File(raw, "r+", libver="latest") as f:
                    fill(f)
                raw.close()
                raw.check()
            finally:
                raw.close()
    except OSError as e:
        raise CacheError(f"{path}: cannot store {what} ({e.strerror or e}); the cache file is untouched") from e
    finally:
        lock.release()


class _Lines:
    """One field of a JSONL of pairs as a column read on demand (``first``: only the rows
    marked, for the distinct contexts): iterated once per use, never held."""

    def __init__(self, path: Path, field: int, n: int, first: np.ndarray | None = None):
        self.path, self.field, self.n, self.first = path, field, n, first

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from .data import iter_jsonl

        for i, row in enumerate(iter_jsonl(self.path)):
            if self.first is None or self.first[i]:
                yield row[self.field]

    def blocks(self, size: int):
        block = []
        for t in self:
            block.append(t)
            if len(block) == size:
                yield block
                block = []
        if block:
            yield block


def _hash16(texts: list[str]) -> np.ndarray:
    import hashlib

    return np.frombuffer(b"".join(hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts),
                         dtype=[("a", "<u8"), ("b", "<u8")])


def cache_jsonl_vectors(data: str | os.PathLike, encoder, out: str | os.PathLike, dtype: str = "float32",
                        overwrite: bool = False, block: int | None = None) -> CacheResult:
    """``build_cache`` of a JSONL of pairs (``data.load_jsonl``'s format) with an encoder that only
    looks vectors up (``vectors:NAME``), without holding the texts: the file is read several
    times (hashes for the distinct contexts and duplicate ids; each text column for the
    fingerprint, then again to be written with its vectors, a block at a time). Memory is a few
    hashes and indices a pair, whatever the text lengths; the cache is the one ``build_cache``
    writes from the same data (same fingerprint, vectors and attributes)."""
    from .data import JSONL_META, DataError, content_sha256, iter_jsonl

    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    block = block or 8192  # rows looked up and written at a time: (block, dim) float32 arrays, a few of them
    if dtype not in ("float32", "float16"):
        raise CacheError(f"dtype must be float32 or float16, not {dtype!r}")
    c_hash, i_hash, q_buf, i_buf = [], [], [], []
    for _, context, qid, _ in iter_jsonl(data):
        q_buf.append(context)
        i_buf.append(qid)
        if len(q_buf) == block:
            c_hash.append(_hash16(q_buf))
            i_hash.append(_hash16(i_buf))
            q_buf, i_buf = [], []
    c_hash.append(_hash16(q_buf))
    i_hash.append(_hash16(i_buf))
    c_hash, i_hash = np.concatenate(c_hash), np.concatenate(i_hash)
    n = len(c_hash)
    if n == 0:
        raise DataError(f"{data}: no question -> context pairs found")
    ids, counts = np.unique(i_hash, return_counts=True)
    if (counts > 1).any():
        twice = set(ids[counts > 1].tolist())
        dup = next(qid for _, _, qid, _ in iter_jsonl(data) if tuple(_hash16([qid])[0].tolist()) in twice)
        raise DataError(f"{data}: duplicate query id {dup!r}")
    del i_hash, ids, counts
    _, first, inverse = np.unique(c_hash, return_index=True, return_inverse=True)
    del c_hash
    order = np.argsort(first, kind="stable")  # distinct contexts in order of first appearance
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    q2c = rank[inverse.reshape(-1)]
    is_first = np.zeros(n, bool)
    is_first[first] = True
    del first, inverse, order, rank
    columns = {"queries/text": _Lines(data, 0, n), "queries/id": _Lines(data, 2, n),
               "queries/group": _Lines(data, 3, n), "contexts/text": _Lines(data, 1, int(is_first.sum()), is_first)}
    fingerprint = content_sha256(*columns.values(), q2c)
    meta = dict(JSONL_META, source=str(data))
    info = encoder.describe()
    want = job_identity(info, meta, fingerprint, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_output(out)
    try:
        done, parts = start_job(out, want, dict(want, layout="streamed"), overwrite)
        if done:
            return CacheResult(out, "already complete", time.perf_counter() - t0, 0)
        with CacheWriter(out, n, len(columns["contexts/text"]), encoder.dim, dtype) as w:
            for key, col in columns.items():
                role = {"queries/text": "query", "contexts/text": "context"}.get(key)
                a = 0
                for texts in col.blocks(block):
                    w.write(key, a, texts)
                    if role:
                        w.write(key.split("/")[0] + "/vectors", a, encoder.encode(texts, role=role))
                    a += len(texts)
            w.write("queries/context", 0, q2c)
            w.finish(cache_attrs(meta, info, fingerprint, time.perf_counter() - t0))
        shutil.rmtree(parts, ignore_errors=True)
        return CacheResult(out, "written", time.perf_counter() - t0, n + len(columns["contexts/text"]))
    except OSError as e:
        raise CacheError(f"{out}: cannot write {e.filename or ''} ({e.strerror or e})"
                         + ("; the existing cache file is untouched" if out.exists() else "")) from e
    finally:
        lock.release()


def cache_name(dataset: str, split: str, granularity: str, encoder: str, data: str | os.PathLike | None = None) -> str:
    """The file name ``projhead cache`` gives a cache: DATASET-SPLIT-GRANULARITY-ENCODER.h5
    (a JSONL file's own name instead of dataset, split and granularity)."""
    import re

    enc = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder.split(":", 1)[-1]).strip("-")
    name = Path(data).stem.split(".")[0] if dataset == "jsonl" and data else f"{dataset}-{split}-{granularity}"
    return f"{name}-{enc}.h5"


def cache_dataset(dataset: str, split: str, granularity: str, encoder, folder: str | os.PathLike = "cache",
                  data: str | os.PathLike | None = None, **build_kw) -> Cache:
    """Load a dataset by name, cache it with ``encoder`` under its usual name in ``folder``
    (nothing to do when it is already there) and open it: ``projhead cache`` in one call."""
    from .data import load_pairs

    pairs = load_pairs(dataset, split, granularity, data=data)
    path = Path(folder) / cache_name(dataset, split, pairs.meta.get("granularity", granularity), encoder.name, data)
    build_cache(pairs, encoder, path, **{"progress": False, **build_kw})
    return open_cache(path)


def read_rows(dset, rows: np.ndarray) -> np.ndarray:
    """dset[rows] as float32 for any row order: one contiguous read when the rows are close
    together (contexts follow their queries in a cache), else a sorted fancy read."""
    uniq, inv = np.unique(rows, return_inverse=True)
    if len(uniq) == 0:
        return np.zeros((0,) + dset.shape[1:], np.float32)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * len(uniq) + 1024:
        vec = dset[lo:hi][uniq - lo]
    else:
        vec = dset[uniq]
    return vec.astype(np.float32, copy=False)[inv]


class TextColumn:
    """A text dataset of the file read in chunks: what ``content_sha256`` and other one-pass
    readers iterate without holding every string."""

    def __init__(self, dset, chunk: int = 65536):
        self.dset, self.chunk = dset, chunk

    def __len__(self) -> int:
        return self.dset.shape[0]

    def __iter__(self):
        for a in range(0, len(self), self.chunk):
            yield from (t.decode("utf-8") for t in self.dset[a:a + self.chunk])


def open_cache(path: str | os.PathLike, check_finite: bool = True, load: bool = True) -> Cache:
    """Open and validate a finished cache; errors name the file and the problem."""
    import h5py

    path = Path(path)
    if not path.is_file():
        hint = f" (an unfinished run left {path}.parts/: rerun projhead cache)" if Path(str(path) + ".parts").exists() else ""
        raise CacheError(f"{path}: no such cache file{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 file ({e})") from e
    try:
        with f:
            arrays, attrs = _read(path, f, check_finite, load)
            mined_sets = sorted(f["mined"].keys()) if "mined" in f else []
    except CacheError:
        raise
    except (KeyError, OSError, ValueError, RuntimeError, TypeError, UnicodeDecodeError) as e:
        # checksummed metadata (libver "latest") turns damage into errors like these
        raise CacheError(f"{path}: damaged cache, cannot read it ({e})") from e
    return Cache(path, attrs, arrays, mined_sets)


def _read(path: Path, f, check_finite: bool, load: bool):
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path}: not a projhead cache (attribute 'format' is {attrs.get('format')!r})")
    if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
        raise CacheError(f"{path}: cache format version {attrs['format_version']} is newer than this "
                         f"projhead reads ({FORMAT_VERSION}); upgrade projhead")
    missing = [k for k in _ATTRS if k not in attrs] + [k for k in _REQUIRED if k not in f]
    if missing:
        raise CacheError(f"{path}: incomplete cache, missing {', '.join(missing)}")
    nq, nc, dim = int(attrs["n_queries"]), int(attrs["n_contexts"]), int(attrs["dim"])
    shapes = {"queries/vectors": (nq, dim), "contexts/vectors": (nc, dim), "queries/context": (nq,),
              "queries/text": (nq,), "contexts/text": (nc,), "queries/id": (nq,), "queries/group": (nq,)}
    for k, shape in shapes.items():
        if f[k].shape != shape:
            raise CacheError(f"{path}: dataset {k} has shape {f[k].shape}, expected {shape}")
    arrays = None
    if load:
        arrays = {
            "queries/vectors": f["queries/vectors"][()].astype(np.float32, copy=False),
            "contexts/vectors": f["contexts/vectors"][()].astype(np.float32, copy=False),
            "queries/context": f["queries/context"][()].astype(np.int64),
            "queries/text": [s.decode("utf-8") for s in f["queries/text"][()]],
            "queries/id": [s.decode("utf-8") for s in f["queries/id"][()]],
            "queries/group": [s.decode("utf-8") for s in f["queries/group"][()]],
            "contexts/text": [s.decode("utf-8") for s in f["contexts/text"][()]],
        }
        # HDF5 cannot checksum variable-length strings (they live in a heap that fletcher32
        # does not cover), so the content hash is recomputed from what was read
        columns = [arrays[k] for k in ("queries/text", "queries/id", "queries/group", "contexts/text")]
        if int(attrs["format_version"]) >= 2:
            key, ok = "fingerprint", attrs["fingerprint"] == content_sha256(*columns, arrays["queries/context"])
        else:  # version 1 files: texts only, under their own attribute (absent in the oldest)
            key, ok = "texts_sha256", attrs.get("texts_sha256") in (None, content_sha256(*columns))
        if not ok:
            raise CacheError(f"{path}: damaged cache, its texts or index do not match their checksum ({key})")
        q2c = arrays["queries/context"]
        if nq and (q2c.min() < 0 or q2c.max() >= nc):
            raise CacheError(f"{path}: queries/context points outside the {nc} contexts")
        if check_finite:
            for k in ("queries/vectors", "contexts/vectors"):
                bad = ~np.isfinite(arrays[k]).all(axis=1)
                if bad.any():
                    hint = (" (a virtual dataset: are the shard files in " + f"{path.name}.parts/ beside it?)"
                            if f[k].is_virtual else "")
                    raise CacheError(f"{path}: {k} holds NaN or Inf in {int(bad.sum())} rows "
                                     f"(first: row {int(np.flatnonzero(bad)[0])}){hint}")
    return arrays, attrs


