"""The resumable encode job: pairs -> encoder -> cache file, whatever interrupts it.

Usage::

    from projhead.cache_build import build_cache
    build_cache(pairs, encoder, "cache/squad-dev.h5")   # resumable, idempotent

How it stays safe: work goes into a folder ``OUT.parts/`` of shards (``.npy``), each
written to a temporary name and renamed, so a shard is either whole or absent, whatever
kills the process. A rerun encodes only missing shards; shards cover fixed, deterministic
slices of the length-sorted texts, so the result is bit-identical to an uninterrupted run.
When all shards exist they are joined, block by block, by the one writer
(``cache_writer.CacheWriter``) into ``OUT.tmp.h5``, which is renamed to ``OUT``: a finished
cache is never half written, and an older file at ``OUT`` survives until then. The file's
layout is ``cachefile``'s.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache_reader import missing_shards, read_identity
from .cache_writer import CacheWriter, lock_output
from .cachefile import (AS_FLOAT32, REBUILD_AS_FLOAT32, SECTIONS, CacheError, cache_attrs, check_float16_shard,
                        describe_mismatch, job_identity, text_named)
from .corpus import corpus_sizes, encode_corpus, match_keys, seal_corpus, shard_vectors, write_corpus
from .data import Pairs
from .files import atomic_path, write_atomic
from .h5strings import column, decode

RAY_LAYOUT = "ray-h5"  # the manifest's layout where a finished cache links its shards (distributed.build_cache_ray)
WRITE_BLOCK = 65536  # rows of vectors gathered and written at a time: the most held in memory


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
                 bar, dtype: str = "float32") -> ShardedVectors:
    """Encode the distinct ``texts`` shard by shard, skipping shards already on disk; vectors
    that ``dtype`` cannot store are refused as soon as their shard is written (float32)."""
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
        check_float16_shard(shard, None if ok else vecs, dtype, f"encoder {encoder.name}: the {role} text",
                            text_named(texts, rows), resumable(parts))  # resumed shards too
        bar.update(len(rows))
    return stored


def resumable(parts: Path) -> str:
    """``check_float16``'s advice where the float32 shards are kept for the rerun."""
    return f"{AS_FLOAT32}; the shards encoded so far are kept in {parts}, and that run resumes from them"


def parts_job(want: dict, **how) -> dict:
    """The manifest of a job's shard folder: the work without the stored dtype (shards are
    float32 whatever the cache stores, so a float32 rerun resumes a float16 run's shards)."""
    return {**{k: v for k, v in want.items() if k != "dtype"}, **how}


@dataclass
class CacheResult:
    path: Path
    status: str  # "written", "already complete", "corpus added" or "turns added"
    seconds: float
    texts_encoded: int
    turns: dict | None = None  # the turns section written (turns.build_with_turns), when one was


def build_cache(pairs: Pairs, encoder, out: str | os.PathLike, dtype: str = "float32", batch_size: int = 64,
                shard_size: int = 2048, overwrite: bool = False, progress: bool = True, corpus=None) -> CacheResult:
    """Encode ``pairs`` with ``encoder`` into the HDF5 file ``out`` (see module doc).
    ``corpus``: a ``corpus.CorpusFile`` of texts without queries, stored in the cache's corpus
    section (deduplicated against the contexts); given for a finished cache of the same pairs
    without one, only the corpus is encoded and added to it."""
    if dtype not in ("float32", "float16"):
        raise CacheError(f"dtype must be float32 or float16, not {dtype!r}")
    out = Path(out)
    t0 = time.perf_counter()
    info = encoder.describe()
    if corpus is not None and corpus.vectors and not info["name"].startswith("vectors:"):
        raise CacheError(f"{corpus.path}: a file of vectors is a corpus only for a vectors:NAME encoder; {info['name']} "
                         "encodes texts: give them as .jsonl, .txt or Parquet (CorpusFile(path, vectors=False) "
                         "reads a Parquet file's 'text' column)")
    plan = corpus.plan(match_keys(pairs.contexts)) if corpus is not None else None
    want = job_identity(info, pairs.meta, pairs.fingerprint(), dtype,
                        {"corpus": plan.fingerprint} if plan is not None else None)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_output(out)
    except OSError as e:
        raise CacheError(f"{out}: cannot write in {out.parent} ({e.strerror or e})") from e
    try:
        if plan is not None and not overwrite and out.exists() and read_identity(out) == without_section(want, "corpus"):
            return _add_corpus(plan, encoder, out, want, batch_size, shard_size, progress, t0)
        return _build_locked(pairs, encoder, out, dtype, batch_size, shard_size, overwrite, progress, info, want, t0,
                             plan)
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


def without_section(identity: dict, name: str) -> dict:
    """The identity of the same work without the section ``name`` (a cache it can be added to)."""
    rest = {k: v for k, v in identity.get("sections", {}).items() if k != name}
    return {**{k: v for k, v in identity.items() if k != "sections"}, **({"sections": rest} if rest else {})}


def other_work(out: Path, have: dict, want: dict) -> CacheError:
    """The refusal of a cache at ``out`` whose work (``have``) is not this run's (``want``); when
    all that differs is a section of the file the run does not give (``--turns``, ``--corpus``),
    that option is named."""
    missing = sorted(set((have or {}).get("sections") or {}) - set((want or {}).get("sections") or {}))
    rest = have or {}
    for name in missing:
        rest = without_section(rest, name)
    hint = (f"; it was made with {' and '.join('--' + n for n in missing)} (give "
            f"{'it' if len(missing) == 1 else 'them'} again to use this cache)"
            if missing and set(missing) <= {"turns", "corpus"} and rest == want else "")
    return CacheError(f"{out}: exists and holds other work ({describe_mismatch(have, want)}){hint}; "
                      "refusing to overwrite: pass --overwrite or choose another path")


def _a_cache(path: Path) -> bool:
    """Whether ``path`` is a projhead cache, readable or not: an HDF5 file that says so, or one
    too damaged to say (an HDF5 signature); not a file of other data (an input given as ``--out``)."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return decode(f.attrs.get("format")) == "projhead-cache"
    except OSError:
        return True  # the signature of HDF5, too damaged to open: a cache cut short


def start_job(out: Path, want: dict, job: dict, overwrite: bool) -> tuple[bool, Path]:
    """What every cache builder checks before encoding (under the lock): a finished cache of
    the same work is kept (returns True), one of other work is refused; partial work of another
    job in ``OUT.parts/`` is refused unless ``overwrite``; the job's manifest is written."""
    if out.exists():
        try:
            have = read_identity(out)
        except CacheError:  # a damaged or newer cache may be replaced; anything else of the user's never
            if not _a_cache(out):
                raise CacheError(f"{out}: exists and is not a projhead cache; it is not replaced, even with "
                                 "--overwrite: choose another --out") from None
            if not overwrite:
                raise
            have = None
    if out.exists() and not overwrite:
        if have == want:
            gone = missing_shards(out)
            if gone:  # linked vectors (--ray) whose shard files went: not a cache, though its header says so
                raise CacheError(f"{out}: built with these settings, but {len(gone)} of the shard files its vectors "
                                 f"are linked from are gone (first: {gone[0]}, relative to it): put them back, or "
                                 "--overwrite builds it again")
            return True, Path(str(out) + ".parts")
        raise other_work(out, have, want)
    return False, open_parts(Path(str(out) + ".parts"), job, overwrite)


def open_parts(parts: Path, job: dict, overwrite: bool) -> Path:
    """The folder of a job's shards: kept when its manifest is this ``job``'s (resume), else
    refused unless ``overwrite`` (then emptied); created with the manifest."""
    manifest = parts / "manifest.json"
    if parts.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and "dtype" not in job:  # written before shard folders left the dtype out
            old.pop("dtype", None)
        if old != job:
            out = Path(str(parts)[:-len(".parts")])
            live = isinstance(old, dict) and old.get("layout") == RAY_LAYOUT and out.exists()
            # a streamed import keeps no shards: its manifest alone is no work to keep
            nothing = isinstance(old, dict) and old.get("layout") == "streamed" and \
                [q.name for q in parts.iterdir()] == ["manifest.json"]
            if not overwrite and not nothing:
                raise CacheError(f"{parts}: the vectors of the --ray cache {out} (linked, not copied), which this run "
                                 "cannot add to or resume; --overwrite discards that cache and builds it again"
                                 if live else f"{parts}: partial work from a different run "
                                 f"({describe_mismatch(old or {}, job) or 'unreadable manifest'}); "
                                 + (f"remove {parts} to discard it and add this run's {job['adding']} to the "
                                    f"finished {out} (--overwrite would build the whole cache again, every pair "
                                    "encoded and its other sections dropped)" if job.get("adding")
                                    else "pass --overwrite to discard it"))
            if live:  # its vectors are about to go: the file goes first, so no cache without vectors is left
                out.unlink()
            shutil.rmtree(parts)
    parts.mkdir(exist_ok=True)
    if not manifest.exists():
        write_atomic(manifest, json.dumps(job, indent=1))
    return parts


def _build_locked(pairs, encoder, out, dtype, batch_size, shard_size, overwrite, progress, info, want, t0, plan):
    from tqdm.auto import tqdm

    done, parts = start_job(out, want, parts_job(want, shard_size=shard_size, batch_size=batch_size), overwrite)
    if done:
        return CacheResult(out, "already complete", time.perf_counter() - t0, 0)

    # Encode distinct query texts once (a few questions repeat), and distinct contexts.
    uq, q_inverse = np.unique(np.array(pairs.queries, dtype=object), return_inverse=True)
    uq = list(uq)
    total = len(uq) + len(pairs.contexts) + (len(plan) if plan is not None else 0)
    with tqdm(total=total, unit="texts", desc=f"encoding {out.name}", disable=not progress,
              smoothing=0.1) as bar:
        qv = _encode_role(encoder, uq, "query", parts, shard_size, batch_size, bar, dtype)
        cv = _encode_role(encoder, pairs.contexts, "context", parts, shard_size, batch_size, bar, dtype)
        if plan is not None:
            encode_corpus(plan, encoder, parts, shard_size, batch_size, bar, dtype, then=resumable(parts))

    step = WRITE_BLOCK
    with CacheWriter(out, len(pairs), len(pairs.contexts), encoder.dim, dtype, sections=corpus_sizes(plan)) as w:
        for a in range(0, len(pairs), step):
            w.write("queries/vectors", a, qv.rows(q_inverse.reshape(-1)[a:a + step]))
        for a in range(0, len(pairs.contexts), step):
            w.write("contexts/vectors", a, cv.rows(np.arange(a, min(a + step, len(pairs.contexts)))))
        write_texts(w, pairs)
        if plan is not None:
            write_corpus(w.write, plan, shard_vectors(parts), shard_size)
        w.finish(cache_attrs(pairs.meta, info, want["fingerprint"], time.perf_counter() - t0))
        if plan is not None:
            seal_corpus(w.f, plan)
    shutil.rmtree(parts, ignore_errors=True)
    return CacheResult(out, "written", time.perf_counter() - t0, total)


def _add_corpus(plan, encoder, out: Path, want: dict, batch_size: int, shard_size: int, progress: bool, t0: float):
    """The corpus of ``plan`` encoded (shards in ``OUT.parts/``: resumable) and added to the
    finished cache ``out`` of the same pairs (``cache_writer.extend_cache``: whole before and after)."""
    from tqdm.auto import tqdm

    from .cache_writer import create_dataset, extend_cache

    parts = open_parts(Path(str(out) + ".parts"), parts_job(want, adding="corpus", shard_size=shard_size), False)
    with tqdm(total=len(plan), unit="texts", desc=f"encoding the corpus of {out.name}", disable=not progress) as bar:
        encode_corpus(plan, encoder, parts, shard_size, batch_size, bar, want["dtype"], then=REBUILD_AS_FLOAT32)

    def fill(f):
        if "corpus" in f:
            del f["corpus"]
        f.create_group("corpus")
        section = SECTIONS["corpus"]
        sizes, dtype = {"n_corpus": len(plan), "dim": int(f.attrs["dim"])}, decode(f.attrs["dtype"])
        for c in section.columns:
            create_dataset(f, section.key("corpus", c), section.shape(c, sizes), c, dtype, shard_size)

        def write(key, a, values):  # the shards' values were checked against the dtype by encode_corpus
            column(f, key)[a:a + len(values)] = np.asarray(values).astype(dtype) if key.endswith("vectors") else values
        write_corpus(write, plan, shard_vectors(parts), shard_size)
        seal_corpus(f, plan)

    extend_cache(out, fill, "the corpus", locked=True)
    shutil.rmtree(parts, ignore_errors=True)
    return CacheResult(out, "corpus added", time.perf_counter() - t0, len(plan))


def write_texts(w: CacheWriter, pairs: Pairs) -> None:
    w.write("queries/text", 0, pairs.queries)
    w.write("queries/id", 0, pairs.query_ids)
    w.write("queries/group", 0, pairs.groups)
    w.write("queries/context", 0, np.asarray(pairs.q2c, dtype=np.int64))
    w.write("contexts/text", 0, pairs.contexts)
