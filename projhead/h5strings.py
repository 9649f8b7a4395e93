"""Strings in a cache file, kept out of HDF5's unchecksummed global heap.

HDF5 stores variable-length strings (h5py's default for str datasets and attributes) in a
global heap that no checksum covers, and HDF5 2.0 can loop forever reading a damaged one. So
a text column is a group of two checksummed (fletcher32) datasets: its texts' UTF-8 bytes one
after another (``utf8``) and where each text ends (``ends``, int64); and a string attribute is
a fixed-length UTF-8 string. HDF5 checksums such attributes (``libver="latest"``) up to about
4 KiB, not longer ones (HDF5's "huge" heap objects), so ``write_attrs`` also stores the sha256
of an object's string attributes (``STRINGS_SHA256``), and ``read_attrs`` checks it. Damage
then fails to read, as it does for vectors.

Usage::

    col = create_text(f, "contexts/text", n)   # written in row order, in blocks
    col[0:2] = ["first text", "second"]
    col = column(f, "contexts/text")           # a PackedText; an older file's h5py dataset
    col[5:10], col[rows], col[()]              # object arrays of UTF-8 bytes, as h5py reads
    write_attrs(f["corpus"], {"fingerprint": "..."}); read_attrs(f["corpus"])
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

BYTES_CHUNK = 1 << 16  # bytes of text a chunk (and checksum) covers
ENDS_CHUNK = 65536
STRINGS_SHA256 = "strings_sha256"  # the attribute holding the sha256 of an object's string attributes
NEAR = 1024


def one_span(uniq: np.ndarray, near: int = NEAR) -> bool:
    """Whether the sorted distinct rows ``uniq`` are close enough together to read as the one
    span they cover (at most 4 rows per row asked for, plus ``near``) rather than row by row."""
    return int(uniq[-1]) + 1 - int(uniq[0]) <= 4 * len(uniq) + near


class PackedText:
    """A text column stored as ``utf8`` bytes and ``ends`` offsets in the group ``group``:
    read like an h5py string dataset (``len``, ``shape``, ``[i]``, ``[a:b]``, ``[rows]``, a
    boolean mask, ``[()]``: UTF-8 bytes, object arrays for many), written in row order
    (``[a:b] = texts``, each block starting where the last one ended; rows never written read
    as empty texts, as h5py's do)."""

    dtype = np.dtype(object)
    is_virtual = False
    near = NEAR  # ``one_span``'s slack: rows close enough together are read in one span

    def __init__(self, group):
        self.group, self.file, self.name = group, group.file, group.name
        self.utf8, self.ends = group["utf8"], group["ends"]
        if self.utf8.ndim != 1 or self.ends.ndim != 1:
            raise ValueError(f"{self.name}: a text column holds 1-d utf8 and ends datasets")
        self.shape = self.ends.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        n = len(self)
        if isinstance(index, tuple) and len(index) == 1:
            index = index[0]
        elif isinstance(index, tuple) and index != ():
            raise TypeError(f"{self.name}: a text column has one axis, not {len(index)}")
        if index is Ellipsis or isinstance(index, tuple) and index == ():
            return self._span(0, n)
        if isinstance(index, np.ndarray) and index.ndim == 0:
            index = index.item()
        if isinstance(index, (bool, np.bool_)) or isinstance(index, (float, np.floating)):
            raise TypeError(f"{self.name}: rows are read by integers, slices or arrays of them, not {index!r}")
        if isinstance(index, (int, np.integer)):
            i = int(index) + n if index < 0 else int(index)
            if not 0 <= i < n:
                raise IndexError(f"{self.name}: row {index} of {n}")
            return self._span(i, i + 1)[0]
        if isinstance(index, slice):
            a, b, step = index.indices(n)
            return self._span(a, b) if step == 1 else self._rows(np.arange(a, b, step))
        rows = np.asarray(index)
        if rows.dtype == bool:  # a mask, as h5py reads one
            if rows.shape != (n,):
                raise IndexError(f"{self.name}: a mask of {rows.shape} for {n} rows")
            rows = np.flatnonzero(rows)
        elif len(rows) and rows.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: rows are read by integers, not {rows.dtype}")
        return self._rows(rows)

    def _bounds(self, a: int, b: int) -> np.ndarray:
        """Byte offsets of rows a..b: b - a + 1 of them, checked."""
        ends = np.asarray(self.ends[max(a - 1, 0):b], np.int64)
        bounds = np.concatenate([[0], ends]) if a == 0 else ends
        if len(bounds) and (bounds[0] < 0 or (np.diff(bounds) < 0).any() or bounds[-1] > self.utf8.shape[0]):
            raise ValueError(f"{self.name}: damaged text offsets (ends) in rows {a}..{b - 1}")
        return bounds

    def _span(self, a: int, b: int) -> np.ndarray:
        out = np.empty(max(b - a, 0), object)
        if b <= a:
            return out
        bounds = self._bounds(a, b)
        buf = self.utf8[int(bounds[0]):int(bounds[-1])].tobytes()
        rel = bounds - bounds[0]
        for j in range(b - a):
            out[j] = buf[rel[j]:rel[j + 1]]
        return out

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        n = len(self)
        rows = rows.astype(np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + n, rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"{self.name}: rows outside 0..{n - 1}")
        out = np.empty(len(rows), object)
        if not len(rows):
            return out
        uniq, inv = np.unique(rows, return_inverse=True)
        if one_span(uniq, self.near):  # close together: one read of the span
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            out[:] = self._span(lo, hi)[uniq - lo][inv.reshape(-1)]
            return out
        # far apart: their offsets (two sorted reads), then their bytes, one read per run of
        # rows whose texts lie less than a chunk apart
        ends = np.asarray(self.ends[uniq], np.int64)
        starts = np.zeros(len(uniq), np.int64)
        starts[uniq > 0] = self.ends[uniq[uniq > 0] - 1]
        if (starts < 0).any() or (ends < starts).any() or ends.max() > self.utf8.shape[0]:
            raise ValueError(f"{self.name}: damaged text offsets (ends)")
        got = np.empty(len(uniq), object)
        cut = np.flatnonzero(starts[1:] - ends[:-1] > BYTES_CHUNK) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(uniq)]):
            base = int(starts[a])
            buf = self.utf8[base:int(ends[a:b].max())].tobytes()
            for j in range(a, b):
                got[j] = buf[starts[j] - base:ends[j] - base]
        out[:] = got[inv.reshape(-1)]
        return out

    def __setitem__(self, index, texts) -> None:
        if index is Ellipsis or isinstance(index, tuple) and index == ():
            a, b = 0, len(self)
        elif isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(len(self))
        else:
            raise TypeError(f"{self.name}: texts are written in row blocks (a slice)")
        data = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts]
        if len(data) != b - a:
            raise ValueError(f"{self.name}: {len(data)} texts for rows {a}..{b - 1}")
        if not data:
            return
        start = int(self.ends[a - 1]) if a else 0
        if start != self.utf8.shape[0]:
            raise ValueError(f"{self.name}: texts are written in row order; rows before {a} first")
        lengths = np.fromiter((len(t) for t in data), np.int64, len(data))
        self.utf8.resize((start + int(lengths.sum()),))
        if lengths.sum():
            self.utf8[start:] = np.frombuffer(b"".join(data), np.uint8)
        self.ends[a:b] = start + np.cumsum(lengths)


def create_text(parent, key: str, n: int) -> PackedText:
    """An empty text column of ``n`` rows at ``key`` under ``parent`` (file or group)."""
    g = parent.create_group(key)
    # gzip: a chunk is stored at its compressed size, so a column of a few texts stays small
    g.create_dataset("utf8", (0,), np.uint8, maxshape=(None,), chunks=(BYTES_CHUNK,), compression="gzip",
                     compression_opts=1, fletcher32=True)
    g.create_dataset("ends", (n,), np.int64, fletcher32=n > 0, chunks=(min(n, ENDS_CHUNK),) if n else None)
    return PackedText(g)


def column(parent, key: str):
    """The dataset at ``key``: a ``PackedText`` for a text column of this format, else the
    h5py dataset (vectors, numbers, and the string datasets of caches before it)."""
    import h5py

    obj = parent[key]
    return PackedText(obj) if isinstance(obj, h5py.Group) else obj


def write_attrs(obj, attrs: dict) -> None:
    """Set ``attrs`` on an h5py object, strings as fixed-length UTF-8 (not h5py's
    variable-length strings, in the global heap), then the sha256 of all its string attributes."""
    import h5py

    for k, v in attrs.items():
        v = v.decode("utf-8") if isinstance(v, bytes) else v  # bytes too: never h5py's variable-length
        if isinstance(v, str):
            if v.endswith("\x00"):
                raise ValueError(f"{obj.name}: attribute {k!r} ends with a NUL character, which HDF5 strings drop")
            raw = v.encode("utf-8")
            v = np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))
        obj.attrs[k] = v
    obj.attrs[STRINGS_SHA256] = np.array(_strings_sha256(obj).encode(), dtype=h5py.string_dtype("utf-8", 64))


def _strings_sha256(obj, values: dict | None = None) -> str:
    values = {k: decode(v) for k, v in obj.attrs.items()} if values is None else values
    strings = {k: v for k, v in values.items() if isinstance(v, str) and k != STRINGS_SHA256}
    return hashlib.sha256(json.dumps(strings, sort_keys=True).encode("utf-8")).hexdigest()


def read_attrs(obj) -> dict:
    """The attributes of an h5py object, byte strings decoded (either storage), checked against
    their sha256 where ``write_attrs`` stored one (ValueError when they do not match)."""
    out = {k: decode(v) for k, v in obj.attrs.items()}
    want = out.pop(STRINGS_SHA256, None)
    if want is not None and want != _strings_sha256(obj, out):
        raise ValueError(f"{obj.name}: damaged attributes, their strings do not match their sha256")
    return out


def decode(v):
    """An attribute's value as written: bytes as str."""
    return v.decode("utf-8") if isinstance(v, bytes) else v
