"""The one writer of cache files, and the one way to add to a finished cache.

Usage::

    from projhead.cache_writer import CacheWriter, add_section
    with CacheWriter(path, n_queries, n_contexts, dim, "float16") as w:
        w.write("queries/vectors", 0, block)          # (rows, dim), any dtype, in row blocks
        w.write("queries/text", 0, texts)             # also queries/id, queries/group,
        w.write("queries/context", 0, q2c)            # contexts/text, contexts/vectors
        w.finish(cachefile.cache_attrs(...))          # the header
    add_section(path, "mined", arrays, {"settings_json": "..."}, instance="semantic")

The datasets come from the sections' declarations (``cachefile``): the pairs always, other
sections when named in ``sections=`` (with their sizes). Whatever fails, a reader finds the
old file or the whole new one: new files are written to a temporary name and renamed
(``files.atomic_path``), additions are made on a copy that then replaces the file.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .cache_reader import open_cache
from .cachefile import (CHUNK, FORMAT_VERSION, HEADER_SIZES, SECTIONS, CacheError, Column, Section,
                        check_float16, check_values, fingerprint)
from .files import atomic_path, plain_name
from .h5strings import column, create_text, read_attrs, write_attrs


def create_dataset(g, name: str, shape: tuple, col: Column, dtype: str, block: int):
    """One dataset of a section, with its final shape: vectors and numbers checksummed per
    chunk (fletcher32), so damage fails to read instead of coming back as other numbers;
    texts as checksummed UTF-8 bytes (``h5strings.PackedText``), written in row order."""
    n = shape[0]
    if col.kind == "text":
        return create_text(g, name, n)
    rows = block if col.kind == "vectors" else 65536
    kind = {"vectors": dtype, "index": "int64", "float": "float32"}[col.kind]
    return g.create_dataset(name, shape, kind, fletcher32=n > 0,
                            chunks=(max(1, min(rows, n)),) + tuple(shape[1:]) if n and all(shape) else None)


class CacheWriter:
    """The one writer of cache files: datasets are created with their final shapes, vectors
    are written in row blocks as they come (memory: one block), the attributes last; then
    the file is synced and renamed into place (``files.atomic_path``), so a reader sees the
    old file or the whole new one. Used by ``build_cache`` (blocks gathered from its shards),
    the Ray builder (``vectors=False``: ``distributed.link_shards`` makes them virtual datasets),
    ``cache_jsonl_vectors`` and ``bench/bench_out_of_core.py`` (5M rows). ``sections``: other
    sections to write, {name: their sizes} (e.g. ``{"corpus": {"n_corpus": 1000}}``); their
    fingerprints are computed from what was written, in ``finish``.

    A failed write (disk full, file size limit) raises OSError naming the file, and the
    temporary file is removed.
    """

    def __init__(self, path: str | os.PathLike, n_queries: int, n_contexts: int, dim: int, dtype: str,
                 vectors: bool = True, block: int = 4096, sections: dict[str, dict] | None = None):
        self.path = Path(path)
        self.shape = {"queries": n_queries, "contexts": n_contexts}
        self.dim, self.dtype, self.vectors, self.block = dim, dtype, vectors, block
        self.sizes = {"n_queries": n_queries, "n_contexts": n_contexts, "dim": dim}
        self.extra = {}  # other sections: where -> (section, sizes)
        for name, sizes in (sections or {}).items():
            if name not in SECTIONS:
                raise CacheError(f"{self.path}: no section {name!r} is registered (known: {', '.join(SECTIONS)})")
            section, sizes = SECTIONS[name], dict(sizes)
            instance = sizes.pop("instance", None) if section.named else None
            if section.named and not instance:
                raise CacheError(f"{self.path}: section {name!r} is one of many: give its name as \"instance\"")
            self.extra[section.where(instance)] = (section, dict(self.sizes, **sizes))
        self.pending = {}  # optional columns of other sections: created when first written
        self.columns = {}  # the datasets written to, kept open (a text column flushes its chunk on closing)
        self.first: dict[str, np.ndarray] = {}  # the first rows of the pairs' vectors: are they unit length
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
            for where, (section, sizes) in [("", (SECTIONS["pairs"], self.sizes)), *self.extra.items()]:
                for c in section.columns:
                    if where and c.optional:
                        self.pending[section.key(where, c)] = (section, c, sizes)
                    elif c.kind != "vectors" or self.vectors:
                        self._create(section, c, sizes, where)
        except BaseException:
            self._abort()
            raise
        return self

    def _create(self, section, c, sizes: dict, where: str) -> None:
        names = [t[0] if isinstance(t, tuple) else t for t in c.shape]
        missing = [n for n in names if isinstance(n, str) and n not in sizes]
        if missing:
            raise CacheError(f"{self.path}: section {section.name!r} needs the size {missing[0]!r} for "
                             f"{section.key(where, c)}")
        shape = section.shape(c, sizes)
        create_dataset(self.f, section.key(where, c), shape, c, self.dtype, self.block)

    def write(self, key: str, start: int, values) -> None:
        """Rows ``start ..`` of dataset ``key`` (e.g. ``queries/vectors``, ``contexts/text``);
        an optional column of another section exists once it is written."""
        self.raw.check()
        if key in self.pending:
            section, c, sizes = self.pending.pop(key)
            self._create(section, c, sizes, key.rsplit("/", 1)[0])
        if key.endswith("/vectors"):
            values = np.asarray(values)
            group = key.rsplit("/", 1)[0]
            if group in ("queries", "contexts") and group not in self.first and start == 0:
                self.first[group] = values[:1000].astype(np.float32)
            check_float16(values, self.dtype, f"{self.path}: {key} row", start)
            values = values.astype(self.dtype, copy=False)
        elif not len(values):
            return
        if key not in self.columns:
            self.columns[key] = column(self.f, key)
        self.columns[key][start:start + len(values)] = values

    def finish(self, attrs: dict) -> None:
        """The header (``cachefile.cache_attrs``); ``normalized`` is measured here, and the
        other sections get their sizes and fingerprints."""
        first = [v for v in self.first.values() if len(v)]
        norms = np.linalg.norm(np.concatenate(first), axis=1) if first else np.ones(1)
        write_attrs(self.f, {**attrs, "dim": self.dim, "dtype": self.dtype,
                             "normalized": bool(np.allclose(norms, 1.0, atol=1e-3)),
                             "n_queries": self.shape["queries"], "n_contexts": self.shape["contexts"],
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        for where, (section, sizes) in self.extra.items():
            _seal(self.f[where], section, where, {c.name: column(self.f, section.key(where, c)) for c in section.columns
                                                  if section.key(where, c) in self.f})

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
        self._f = open(path, mode, buffering=0)  # unbuffered: a failed write fails there, never in a later seek
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
        view = memoryview(b).cast("B")
        n, done = len(view), 0
        if self.error is None:
            try:
                while done < n:  # an unbuffered write may take fewer bytes (a disk filling up)
                    k = self._f.write(view[done:])
                    if not k:
                        raise OSError(errno.ENOSPC, f"wrote {done} of {n} bytes", self.name)
                    done += k
                return n
            except OSError as e:
                self.error = e
        self._f.seek(n - done, 1)
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


def lock_output(out: Path):
    """The cache's write lock (``OUT.lock``), held; a killed writer's temporary copy of the
    cache (``OUT.tmpPID`` whose process is gone) is removed then. projhead's writers hold this
    lock while they write; a ``CacheWriter`` used alone does not, so a copy is removed only
    when no process of its number runs."""
    from filelock import FileLock, Timeout

    out = Path(out)
    lock = FileLock(str(out) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheError(f"{out}: another projhead process is writing this cache (lock {out}.lock held)") from None
    for stale in out.parent.glob(glob.escape(out.name) + ".tmp*"):
        pid = stale.name[len(out.name) + 4:]
        if pid.isdigit() and stale.is_file() and _gone(pid):
            stale.unlink(missing_ok=True)
    return lock


def _gone(pid: str) -> bool:
    """Whether no process numbered ``pid`` (digits) runs on this machine: this one's own runs;
    a number no process can have is gone; on Windows, where signal 0 would end a process,
    every copy is taken to run (kept)."""
    if os.name == "nt":
        return False
    try:
        number = int(pid)
        if number == os.getpid():
            return False
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except (OverflowError, ValueError):  # beyond any process number (or digits int() does not read)
        return True
    except OSError:  # another user's: it runs
        return False
    return False


def extend_cache(path: str | os.PathLike, fill, what: str, locked: bool = False) -> None:
    """Add to the cache at ``path``: ``fill(h5py_file)`` runs on a copy opened for writing,
    which then replaces the file (``files.atomic_path``), so the cache is whole before and
    after whatever happens; memory stays bounded (the copy streams on disk). ``what`` names
    the addition in errors; ``locked``: the caller holds the cache's lock (``lock_output``).
    ``projhead mine`` stores its sets this way, ``projhead cache --corpus`` a corpus. A format 2
    cache is checked whole against its fingerprints, then copied in today's format
    (``copy_as_current``), so what is added and what was there are alike; a format 1 cache is
    copied as it is (its fingerprint means something else)."""
    import h5py

    path = Path(path)
    cache = open_cache(path, load=False)  # a valid cache, or a clear error
    version = int(cache.attrs["format_version"])
    lock = None if locked else lock_output(path)
    try:
        with atomic_path(path) as tmp:
            if version == 2:  # rewritten under fresh checksums: a damage the fingerprint sees must not be sealed
                _check_whole(cache)
                copy_as_current(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)  # the file keeps its permissions
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
        if lock is not None:
            lock.release()


def copy_as_current(src: Path, dst: Path) -> None:
    """Write the format 2 cache ``src`` to the new file ``dst`` in today's format: its text
    datasets packed, its string attributes fixed-length with their sha256 (``h5strings``), the
    rest copied as HDF5 stores it (chunks, checksums, virtual datasets); nothing is encoded."""
    import h5py

    raw = _GuardedFile(dst, "w+b")
    try:
        with h5py.File(src, "r") as f, h5py.File(raw, "w", libver="latest") as g:
            _copy_packed(f, g)
            write_attrs(g, {"format_version": FORMAT_VERSION})
        raw.close()
        raw.check()
    finally:
        raw.close()


def _copy_packed(src, dst) -> None:
    import h5py

    if len(src.attrs):  # a group without attributes gets none, as the writer leaves it
        write_attrs(dst, read_attrs(src))
    for name, obj in src.items():
        if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype):
            col = create_text(dst, name, obj.shape[0])
            for a in range(0, obj.shape[0], CHUNK):
                col[a:a + CHUNK] = obj[a:a + CHUNK]
        elif isinstance(obj, h5py.Group):
            _copy_packed(obj, dst.create_group(name))
        else:
            src.copy(obj, dst, name)


def upgrade_cache(path: str | os.PathLike) -> int:
    """Rewrite the cache at ``path`` in today's format without encoding anything; returns the
    format it had (nothing is written when it is today's). Format 1 caches are refused: their
    fingerprint leaves out the groups, so they are other work (``projhead cache --overwrite``).
    A symbolic link's target is rewritten, and the link kept."""
    path = Path(path).resolve()
    version = int(open_cache(path, load=False).attrs["format_version"])
    if version == 1:
        raise CacheError(f"{path}: a cache of format 1, whose fingerprint leaves out the groups: build it again "
                         "(projhead cache ... --overwrite)")
    if version < FORMAT_VERSION:
        extend_cache(path, lambda f: None, f"the cache in format {FORMAT_VERSION}")
    return version


def _check_whole(cache) -> None:
    """Every section of ``cache`` checked against its fingerprint, values and ranges, a chunk at a
    time (a CacheError naming the file if not)."""
    for name, instances in cache.sections.items():
        for where in instances:
            with cache.section_data(name, where.split("/", 1)[1] if SECTIONS[name].named else None):
                pass


def _seal(group, section: Section, where: str, data: dict) -> None:
    """The attributes a section instance carries: its fingerprint (of what was written)."""
    if any(c.fingerprinted for c in section.columns):
        write_attrs(group, {"fingerprint": fingerprint(section, data)})


def add_section(path: str | os.PathLike, name: str, arrays: dict, attrs: dict | None = None,
                instance: str | None = None) -> None:
    """Store ``arrays`` ({column name: array}) as an instance of the registered section
    ``name`` in the finished cache at ``path`` (replacing one of that name), with ``attrs`` on
    its group. The arrays are checked as a reader checks them before anything is written;
    the cache is whole before and after (``extend_cache``)."""
    path = Path(path)
    section = SECTIONS[name]
    if section.named and not plain_name(instance or ""):
        raise CacheError(f"{path}: a {name} section needs a plain name (not empty, '.' or '..', no '/'), "
                         f"not {instance!r}")
    where = section.where(instance)
    cache = open_cache(path, load=False)
    header = {k: int(cache.attrs[k]) for k in HEADER_SIZES}
    unknown = sorted(set(arrays) - {c.name for c in section.columns})
    if unknown:
        raise CacheError(f"{path}: section {name!r} has no column {', '.join(unknown)}")
    arrays = {k: (list(v) if any(c.name == k and c.kind == "text" for c in section.columns) else np.asarray(v))
              for k, v in arrays.items()}
    sizes = section.sizes(header, {k: np.shape(v) for k, v in arrays.items()})
    _check_new(path, section, where, arrays, sizes, cache.attrs)
    label = f"{name} section {instance or where!r}" if name != "mined" else f"mined set {instance!r}"

    def fill(f):
        parent, leaf = (where.rsplit("/", 1) if "/" in where else ("", where))
        g = f.require_group(parent) if parent else f
        if leaf in g:
            del g[leaf]
        g.create_group(leaf)
        for c in section.columns:
            if c.name in arrays:
                value = arrays[c.name]
                d = create_dataset(f, section.key(where, c), section.shape(c, sizes), c, cache.attrs["dtype"], 4096)
                if len(value):
                    d[...] = value
        write_attrs(f[where], attrs or {})
        _seal(f[where], section, where, arrays)

    extend_cache(path, fill, label)


def _check_new(path, section, where, arrays, sizes, header) -> None:
    for c in section.columns:
        want = section.shape(c, sizes)
        if c.name in arrays and np.shape(arrays[c.name]) != want:
            raise CacheError(f"{path}: {section.key(where, c)} has shape {np.shape(arrays[c.name])}, expected {want}")
        if c.name not in arrays and not c.optional:
            raise CacheError(f"{path}: incomplete {section.label(where)}, missing {section.key(where, c)}")
    check_values(path, section, where, arrays, sizes, header)
