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
    /mined/NAME/...    optional, written by ``projhead mine`` (see ``write_mined``): hard
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

from .data import Pairs, content_sha256

FORMAT = "projhead-cache"
FORMAT_VERSION = 2  # 2: the fingerprint covers groups too and is the read-time check of the texts


class CacheError(ValueError):
    """A cache that cannot be used, or may not be overwritten; the message says why."""


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def _identity(encoder_info: dict, pairs: Pairs, dtype: str) -> dict:
    """What must match for two runs to be the same work."""
    return {"encoder": encoder_info["name"], "weights_sha256": encoder_info["weights_sha256"],
            "settings": encoder_info["settings"], "fingerprint": pairs.fingerprint(),
            "dataset": pairs.meta.get("dataset"), "split": pairs.meta.get("split"),
            "granularity": pairs.meta.get("granularity"), "dtype": dtype}


def _describe_mismatch(have: dict, want: dict) -> str:
    diffs = [f"{k}: file has {have.get(k)!r}, this run {want[k]!r}" for k in want if have.get(k) != want[k]]
    return "; ".join(diffs)


def _plan(texts: list[str]) -> np.ndarray:
    """Order of encoding: longest first (stable), so each batch pads little and the first
    batches show the slowest rate."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.argsort(-lengths, kind="stable")


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _encode_role(encoder, texts: list[str], role: str, parts: Path, shard_size: int, batch_size: int,
                 bar) -> np.ndarray:
    """Encode the distinct ``texts`` shard by shard, skipping shards already on disk."""
    order = _plan(texts)
    dim = encoder.dim
    out = np.empty((len(texts), dim), np.float32)
    for k, start in enumerate(range(0, len(texts), shard_size)):
        rows = order[start:start + shard_size]
        shard = parts / f"{role}-{k:06d}.npy"
        vecs = None
        if shard.exists():
            try:
                vecs = np.load(shard, allow_pickle=False)
                if vecs.shape != (len(rows), dim):
                    vecs = None
            except (ValueError, OSError):
                vecs = None  # a damaged shard is redone
        if vecs is None:
            vecs = encoder.encode([texts[i] for i in rows], batch_size=batch_size, role=role)
            if not np.isfinite(vecs).all():
                raise CacheError(f"encoder {encoder.name} returned NaN or Inf for {role} texts "
                                 f"(shard {k}); nothing was written for this shard")
            _write_npy_atomic(shard, vecs.astype(np.float32))
        out[rows] = vecs
        bar.update(len(rows))
    return out


def _lock(out: Path):
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
    want = _identity(info, pairs, dtype)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
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


def _start_job(out: Path, want: dict, job: dict, overwrite: bool) -> tuple[bool, Path]:
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
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(job, indent=1))
        os.replace(tmp, manifest)
    return False, parts


def _build_locked(pairs, encoder, out, dtype, batch_size, shard_size, overwrite, progress, info, want, t0):
    from tqdm.auto import tqdm

    done, parts = _start_job(out, want, dict(want, shard_size=shard_size, batch_size=batch_size), overwrite)
    if done:
        return CacheResult(out, "already complete", time.perf_counter() - t0, 0)

    # Encode distinct query texts once (a few questions repeat), and distinct contexts.
    uq, q_inverse = np.unique(np.array(pairs.queries, dtype=object), return_inverse=True)
    uq = list(uq)
    total = len(uq) + len(pairs.contexts)
    with tqdm(total=total, unit="texts", desc=f"encoding {out.name}", disable=not progress,
              smoothing=0.1) as bar:
        qv = _encode_role(encoder, uq, "query", parts, shard_size, batch_size, bar)[q_inverse]
        cv = _encode_role(encoder, pairs.contexts, "context", parts, shard_size, batch_size, bar)

    tmp = out.with_name(out.name + ".tmp.h5")
    _write_h5(tmp, pairs, qv, cv, info, dtype, encode_seconds=time.perf_counter() - t0)
    os.replace(tmp, out)
    shutil.rmtree(parts, ignore_errors=True)
    return CacheResult(out, "written", time.perf_counter() - t0, total)


def _versions(info: dict) -> dict:
    import h5py

    v = dict(info.get("versions", {}))
    v.update({"projhead": _own_version(), "h5py": h5py.__version__, "numpy": np.__version__,
              "python": sys.version.split()[0], "platform": platform.platform()})
    return v


def _own_version() -> str:
    from . import __version__

    return __version__


def _virtual_vectors(group, rows: list, n: int, dim: int, dtype: str) -> None:
    """``group/vectors`` as a virtual dataset over shard files [(relative path, start, stop)]
    (``projhead cache --ray``); HDF5 finds the files relative to the cache file."""
    import h5py

    layout = h5py.VirtualLayout(shape=(n, dim), dtype=dtype)
    for rel, a, b in rows:
        layout[a:b] = h5py.VirtualSource(rel, "vectors", shape=(b - a, dim))
    group.create_virtual_dataset("vectors", layout, fillvalue=np.nan)  # a missing shard reads as NaN


def _first_rows(path: Path, rows: list, k: int = 1000) -> np.ndarray:
    import h5py

    with h5py.File(path.parent / rows[0][0], "r") as f:
        return f["vectors"][:k].astype(np.float32)


def _write_h5(path: Path, pairs: Pairs, qv: np.ndarray | None, cv: np.ndarray | None, info: dict, dtype: str,
              encode_seconds: float, virtual: dict | None = None, dim: int | None = None) -> None:
    import h5py

    s = _str_dtype()
    # The file is built in memory, then written with plain file I/O. HDF5 turns a failed
    # write (disk full, file size limit) into a RuntimeError and can crash the process when
    # it later closes the file (seen here); a Python write fails with a clean OSError.
    buf = io.BytesIO()
    # libver "latest": checksummed metadata, so a damaged file fails to open instead of
    # feeding the reader garbage
    with h5py.File(buf, "w", libver="latest") as f:
        q = f.create_group("queries")
        # fletcher32: a checksum per chunk, so damaged vectors fail to read instead of
        # coming back as other numbers
        if virtual is None:
            q.create_dataset("vectors", data=qv.astype(dtype), chunks=True, fletcher32=True)
        else:
            _virtual_vectors(q, virtual["queries"], len(pairs), dim, dtype)
        q.create_dataset("text", data=pairs.queries, dtype=s)
        q.create_dataset("id", data=pairs.query_ids, dtype=s)
        q.create_dataset("group", data=pairs.groups, dtype=s)
        q.create_dataset("context", data=pairs.q2c, chunks=True, fletcher32=True)
        c = f.create_group("contexts")
        if virtual is None:
            c.create_dataset("vectors", data=cv.astype(dtype), chunks=True, fletcher32=True)
        else:
            _virtual_vectors(c, virtual["contexts"], len(pairs.contexts), dim, dtype)
            qv, cv = _first_rows(path, virtual["queries"]), _first_rows(path, virtual["contexts"])
        c.create_dataset("text", data=pairs.contexts, dtype=s)
        norms = np.linalg.norm(np.concatenate([qv[:1000], cv[:1000]]), axis=1)
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["encoder"] = info["name"]
        a["encoder_json"] = json.dumps(info)
        a["versions_json"] = json.dumps(_versions(info))
        a["dim"] = qv.shape[1]
        a["dtype"] = dtype
        a["normalized"] = bool(np.allclose(norms, 1.0, atol=1e-3))
        a["dataset"] = str(pairs.meta.get("dataset", ""))
        a["split"] = str(pairs.meta.get("split", ""))
        a["granularity"] = str(pairs.meta.get("granularity", ""))
        a["meta_json"] = json.dumps(pairs.meta)
        a["fingerprint"] = pairs.fingerprint()
        a["n_queries"] = len(pairs)
        a["n_contexts"] = len(pairs.contexts)
        a["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        a["encode_seconds"] = encode_seconds  # this run's share (a resumed run counts its own part)
    _write_buffer(path, buf)


def _write_buffer(path: Path, buf: io.BytesIO) -> None:
    """Write an in-memory HDF5 file with plain file I/O (fails with a clean OSError, see
    ``_write_h5``), synced to disk; a partial file is removed."""
    try:
        with open(path, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


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
        if isinstance(settings, dict) and "precision" not in settings and not info["name"].startswith("vectors:"):
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
        d["mined"] = {name: self.mined(name)["settings"] for name in self.mined_sets}
        return d

    def mined(self, name: str) -> dict:
        """The mined set ``name`` (see ``write_mined``): its arrays and settings."""
        import h5py

        if name not in self.mined_sets:
            have = ", ".join(self.mined_sets) or "none"
            raise CacheError(f"{self.path}: no mined set {name!r} (it has: {have}); "
                             f"make one with: projhead mine {self.path} --name {name}")
        nq, nc = int(self.attrs["n_queries"]), int(self.attrs["n_contexts"])
        try:
            with h5py.File(self.path, "r") as f:
                g = f["mined"][name]
                out = {k: g[k][()] for k in g}
                settings = json.loads(g.attrs["settings_json"])
        except (KeyError, OSError, ValueError, RuntimeError) as e:
            raise CacheError(f"{self.path}: damaged mined set {name!r} ({e})") from e
        neg = out.get("negatives")
        k = neg.shape[1] if neg is not None and neg.ndim == 2 else -1
        shapes = {"negatives": (nq, k), "negative_scores": (nq, k), "teacher": (nq, k + 1)}
        for key, shape in shapes.items():
            if key in out and out[key].shape != shape:
                raise CacheError(f"{self.path}: mined set {name!r}: {key} has shape {out[key].shape}, "
                                 f"expected {shape}")
        silver = out.get("silver", np.zeros((0, 2), np.int64))
        if neg is None or silver.ndim != 2 or silver.shape[1] != 2:
            raise CacheError(f"{self.path}: mined set {name!r} is incomplete")
        if (neg >= nc).any() or (neg < -1).any() or (len(silver) and (
                silver[:, 0].min() < 0 or silver[:, 0].max() >= nq or silver[:, 1].min() < 0
                or silver[:, 1].max() >= nc)):
            raise CacheError(f"{self.path}: mined set {name!r} points outside the cache's queries or contexts")
        out["silver"] = silver
        out["settings"] = settings
        return out


def write_mined(path: str | os.PathLike, name: str, arrays: dict[str, np.ndarray], settings: dict) -> None:
    """Store ``arrays`` as the mined set /mined/NAME of the cache at ``path`` (replacing a set of
    that name): negatives (Nq, k) int64, -1 for none; negative_scores (Nq, k); teacher
    (Nq, 1 + k) scores of [gold, negatives], NaN where none; silver (S, 2) rows (query,
    context); silver_score (S,). The file is read, extended in memory and written to a
    temporary name that replaces it: the cache is whole before and after, whatever happens."""
    import h5py

    path = Path(path)
    if not name or "/" in name:
        raise CacheError(f"{path}: a mined set needs a plain name, not {name!r}")
    open_cache(path, load=False)  # a valid cache, or a clear error
    lock = _lock(path)
    tmp = path.with_name(path.name + ".tmp.h5")
    try:
        buf = io.BytesIO(path.read_bytes())
        with h5py.File(buf, "r+", libver="latest") as f:
            g = f.require_group("mined")
            if name in g:
                del g[name]
            m = g.create_group(name)
            for key, value in arrays.items():
                m.create_dataset(key, data=value, chunks=True if np.asarray(value).size else None,
                                 fletcher32=bool(np.asarray(value).size))
            m.attrs["settings_json"] = json.dumps(settings)
        _write_buffer(tmp, buf)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CacheError(f"{path}: cannot store mined set {name!r} ({e.strerror or e}); "
                         "the cache file is untouched") from e
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


