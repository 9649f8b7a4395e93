"""Vectors a user already has: vector files, and the ``vectors:NAME`` encoder that looks them up.

Usage::

    from projhead.vector_files import VectorsEncoder, read_vector_file
    enc = VectorsEncoder("my-api", files=["q.npy", "c.parquet"])   # get_encoder("vectors:my-api", files=...)
    enc.encode(texts, role="query")                                 # (N, D) float32, looked up by text
    read_vector_file("small.npy")                                   # a small file whole

A head trained on ``vectors:NAME`` accepts only caches of the same NAME (``encoders``
registers this adapter beside the models it runs).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .config import EncoderError
from .h5strings import column, decode
from .hashing import text_hashes


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class VectorFile:
    """A file of vectors a user already has, opened without reading its vectors: ``dim``,
    ``len()``, ``keys(chunk)`` (lists of (kind "text" or "id", value, role or None), chunk by
    chunk) and ``rows(idx)`` ((len(idx), dim) float32, read on demand). Formats:

    - ``.parquet``: columns ``vector`` (or ``embedding``), ``text`` or ``id``, optional ``role``
      (the vector column is read whole when first needed);
    - ``.npy``: an (N, D) array (rows read by position), with ``SAME_NAME.jsonl`` beside it: one line per
      row, a JSON string (the text) or an object with ``text`` or ``id`` and optional ``role``;
    - ``.h5`` / ``.hdf5``: datasets ``vectors``, ``text`` or ``id``, optional ``role``; or a
      projhead cache (its queries and contexts, with their roles).
    """

    def __init__(self, path):
        from pathlib import Path

        self.path = path = Path(path)
        if not path.is_file():
            raise EncoderError(f"{path}: no such vector file")
        self.suffix = path.suffix.lower()
        self._h5 = None
        try:
            self._open()
            if len(self.shape) != 2 or self.shape[0] == 0 or self.shape[1] == 0:
                raise EncoderError(f"{path}: expected a non-empty (N, D) table of vectors (N, D > 0), got shape "
                                   f"{self.shape}")
        except BaseException as e:
            self.close()  # a refused file is not left open
            if isinstance(e, EncoderError) or not isinstance(e, Exception):
                raise
            # malformed files come in many classes: name the file
            raise EncoderError(f"{path}: cannot read vectors ({type(e).__name__}: {e})") from None
        self.dim = int(self.shape[1])

    def __len__(self) -> int:
        return int(self.shape[0])

    def close(self) -> None:
        """Close the HDF5 file this opened (other formats hold no open file)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "VectorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        path = self.path
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._pq = pq.ParquetFile(path)
            names = self._pq.schema_arrow.names
            self._col = "vector" if "vector" in names else "embedding"
            if self._col not in names:
                raise EncoderError(f"{path}: no 'vector' or 'embedding' column (has {names})")
            self._key_cols = [k for k in ("text", "id", "role") if k in names]
            import pyarrow as pa

            kind = self._pq.schema_arrow.field(self._col).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
                    or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
                raise EncoderError(f"{path}: column {self._col!r} must hold lists of numbers, not {kind}")
            n = self._pq.metadata.num_rows
            first = next(self._pq.iter_batches(batch_size=1, columns=[self._col])).column(0)[0].as_py() if n else []
            if first is None:
                raise EncoderError(f"{path}: row 1 of column {self._col!r} is null: every row needs a vector")
            self.shape = (n, len(first))
            self._vectors = None
        elif self.suffix == ".npy":
            import json

            with open(path, "rb") as f:  # the header only: rows are read on demand (see rows)
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                self._offset = f.tell()
            if fortran or dtype.hasobject:
                raise EncoderError(f"{path}: a C-order numeric array is needed (got {dtype}, fortran order {fortran})")
            self.shape, self._dtype = shape, dtype
            self._vectors = None
            side = path.with_suffix(".jsonl")
            if not side.is_file():
                raise EncoderError(f"{path}: a .npy file needs {side.name} beside it (one text or id per row)")
            self._side = side
            n = 0
            with open(side, encoding="utf-8-sig") as f:  # a byte-order mark is read, as in the other JSONL files
                for k, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            r = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise EncoderError(f"{side}: line {k}: malformed JSON ({e.msg})") from None
                        if not isinstance(r, str) and (not isinstance(r, dict) or ("text" not in r and "id" not in r)):
                            raise EncoderError(f"{side}: line {k}: every line must be a JSON string or an object "
                                               "with 'text' or 'id'")
                        n += 1
            if n != shape[0]:
                raise EncoderError(f"{side}: {n} rows for the {shape[0]} vectors of {path.name}")
        elif self.suffix in (".h5", ".hdf5"):
            import h5py

            self._h5 = f = h5py.File(path, "r")
            if decode(f.attrs.get("format")) == "projhead-cache":
                self._parts = [("query", column(f, "queries/text"), f["queries/vectors"]),
                               ("context", column(f, "contexts/text"), f["contexts/vectors"])]
                self.shape = (sum(len(p[2]) for p in self._parts), f["queries/vectors"].shape[1])
            else:
                if "vectors" not in f:
                    raise EncoderError(f"{path}: no 'vectors' dataset (has {sorted(f)})")
                self._parts = None
                self.shape = f["vectors"].shape
                self._key_cols = [k for k in ("text", "id", "role") if k in f]
        else:
            raise EncoderError(f"{path}: unknown vector file type {self.suffix!r} (use .parquet, .npy + .jsonl, .h5)")
        if self.suffix in (".parquet", ".h5", ".hdf5") and getattr(self, "_parts", None) is None:
            if "text" not in self._key_cols and "id" not in self._key_cols:
                raise EncoderError(f"{path}: no 'text' or 'id' for the vectors: cannot tell which text each belongs to")

    ROLES = ("query", "context", "document")

    def keys(self, chunk: int = 65536):
        """(kind, value, role) of every row, a list per chunk, in row order; a role other than
        ``ROLES`` (or none) is refused, naming the file and the row (or line), counted from 1."""
        yield from self._keys(chunk)

    def _keys(self, chunk: int):
        path = self.path

        def key(kind, v, where):  # a text must be a non-empty string; an id a string or an integer
            if isinstance(v, bytes):
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise EncoderError(f"{where}: {kind} is not UTF-8 ({e.reason})") from None
            if isinstance(v, str):  # an empty text is a key like any other (a role is checked by keys())
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate: JSON's "\ud800" is valid JSON, not UTF-8 text
                    raise EncoderError(f"{where}: {kind} is not UTF-8 text ({e.reason}: {v[e.start:e.end]!r})") \
                        from None
                return v
            if kind == "id" and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                return str(v)
            need = {"id": "a string or an integer"}.get(kind, "a string")
            raise EncoderError(f"{where}: {kind} must be {need}, not {v!r:.60}")

        def role(v, where):
            if v is None:
                return None
            v = key("role", v, where)
            if v not in self.ROLES:
                raise EncoderError(f"{where} has role {v!r}; roles are {', '.join(self.ROLES)} "
                                   "(document is context), or none for both")
            return v

        if self.suffix == ".npy":
            import json

            out = []
            with open(self._side, encoding="utf-8-sig") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    r = json.loads(line)
                    r = {"text": r} if isinstance(r, str) else r
                    kind = "text" if "text" in r else "id"
                    where = f"{self._side}: line {n}"
                    out.append((kind, key(kind, r[kind], where), role(r.get("role"), where)))
                    if len(out) == chunk:
                        yield out
                        out = []
            if out:
                yield out
        elif self.suffix == ".parquet":
            a = 0
            for g in range(self._pq.num_row_groups):
                t = self._pq.read_row_group(g, columns=self._key_cols)
                cols = {k: t.column(k).to_pylist() for k in self._key_cols}
                kind = "text" if "text" in cols else "id"
                roles = cols.get("role") or [None] * t.num_rows
                yield [(kind, key(kind, v, f"{path}: row {a + i + 1}"), role(r, f"{path}: row {a + i + 1}"))
                       for i, (v, r) in enumerate(zip(cols[kind], roles))]
                a += t.num_rows
        elif self._parts is not None:  # a projhead cache
            for part, texts, _ in self._parts:
                for a in range(0, len(texts), chunk):
                    yield [("text", key("text", v, f"{path}: {part} {a + i + 1}"), part)
                           for i, v in enumerate(texts[a:a + chunk])]
        else:
            f, kind = self._h5, "text" if "text" in self._key_cols else "id"
            if f[kind].dtype.kind not in ("SUO" if kind == "text" else "SUOiu"):
                need = "strings" if kind == "text" else "strings or integers"
                raise EncoderError(f"{path}: dataset {kind!r} must hold {need}, not {f[kind].dtype}")
            for a in range(0, len(self), chunk):
                vals = f[kind][a:a + chunk]
                roles = f["role"][a:a + chunk] if "role" in f else [None] * len(vals)
                yield [(kind, key(kind, v, f"{path}: row {a + i + 1}"), role(r, f"{path}: row {a + i + 1}"))
                       for i, (v, r) in enumerate(zip(vals, roles))]

    def _npy_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the .npy file by positioned reads, one per run of consecutive rows: no
        memory map, so reading every vector once never adds the file to this process's memory."""
        import os

        uniq, inv = np.unique(idx, return_inverse=True)
        row_bytes = int(np.prod(self.shape[1:])) * self._dtype.itemsize
        out = np.empty((len(uniq),) + tuple(self.shape[1:]), self._dtype)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)  # where a run of consecutive rows begins
        ends = np.append(starts[1:], len(uniq))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in zip(starts, ends):
                n = (b - a) * row_bytes
                buf = os.pread(fd, n, self._offset + int(uniq[a]) * row_bytes)
                if len(buf) != n:
                    raise EncoderError(f"{self.path}: truncated file (rows {uniq[a]}..{uniq[b - 1]} are missing)")
                out[a:b] = np.frombuffer(buf, self._dtype).reshape((b - a,) + tuple(self.shape[1:]))
        finally:
            os.close(fd)
        return out.astype(np.float32, copy=False)[inv]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The vectors of rows ``idx`` (any order), float32."""
        from .cachefile import read_rows

        idx = np.asarray(idx, dtype=np.int64)
        if self.suffix == ".parquet":
            if self._vectors is None:
                import pyarrow.compute as pc

                # batch by batch into one float32 array: no Python objects, no whole Arrow column
                out, row = np.empty((len(self), self.dim), np.float32), 0
                for batch in self._pq.iter_batches(batch_size=8192, columns=[self._col]):
                    col = batch.column(0)
                    bad = np.flatnonzero(np.asarray(pc.fill_null(pc.list_value_length(col), -1)) != self.dim)
                    if len(bad):
                        raise EncoderError(f"{self.path}: row {row + int(bad[0]) + 1} of column {self._col!r} is "
                                           f"{'null' if col[int(bad[0])].as_py() is None else 'of another length'}: "
                                           f"every vector must have {self.dim} numbers")
                    # a null number is NaN, refused when read
                    out[row:row + len(col)] = pc.list_flatten(col).to_numpy(zero_copy_only=False).reshape(-1, self.dim)
                    row += len(col)
                self._vectors = out
            return self._vectors[idx]
        if self.suffix == ".npy":
            return self._npy_rows(idx)
        if self._parts is None:
            return read_rows(self._h5["vectors"], idx)
        nq = len(self._parts[0][2])
        out = np.empty((len(idx), self.dim), np.float32)
        for k, (_, _, dset) in enumerate(self._parts):
            sel = np.flatnonzero(idx < nq) if k == 0 else np.flatnonzero(idx >= nq)
            if len(sel):
                out[sel] = read_rows(dset, idx[sel] - (0 if k == 0 else nq))
        return out


def read_vector_file(path) -> dict:
    """A small vector file whole: {"vectors": (N, D) float32, "keys": N pairs ("text" or "id",
    value), "role": N strings or None}; NaN or Inf vectors are refused (see ``VectorFile``)."""
    with VectorFile(path) as vf:
        rows = [k for chunk in vf.keys() for k in chunk]
        if len(rows) != len(vf):
            raise EncoderError(f"{path}: {len(rows)} keys for {len(vf)} vectors")
        vectors = vf.rows(np.arange(len(vf)))
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise EncoderError(f"{path}: {int(bad.sum())} vectors hold NaN or Inf (first: row {int(np.flatnonzero(bad)[0]) + 1})")
    roles = [r for _, _, r in rows]
    return {"vectors": vectors, "keys": [(k, v) for k, v, _ in rows],
            "role": roles if all(r is not None for r in roles) else None}


def _one_vector_a_text(sources: list, shared: dict) -> None:
    """Refuse ids of one query text whose vectors differ: a cache keys queries by text, so one
    of them would silently stand for all (vectors made from more than the text, a dialog's
    history say, need texts that differ). Equal vectors are one vector given twice."""
    for text, by_id in shared.items():
        rows = [(k, r, i) for i, (k, r) in by_id.items() if i is not None]
        if None in by_id and by_id[None] > max((k, r) for k, r, _ in rows):  # a later row of the text: one vector
            continue
        if len(rows) < 2:
            continue
        v = np.stack([sources[k].rows(np.array([r]))[0] for k, r, _ in rows])
        differ = np.flatnonzero(~np.isclose(v, v[0], rtol=0, atol=1e-6).all(axis=1))
        if len(differ):
            (k0, r0, a), (k1, r1, b) = rows[0], rows[int(differ[0])]
            raise EncoderError(f"{sources[k1].path}: ids {a!r} (row {r0 + 1} of {sources[k0].path.name}) and {b!r} "
                               f"(row {r1 + 1}) ask the same query text, {text[:60]!r}, with other vectors: a cache "
                               "keys queries by text, so one would stand for both; make the texts differ (a "
                               "dialog's history in the text, say) or give one vector")


def _key_hashes(keyed) -> np.ndarray:
    """(N, 2) uint64: 128 bits of each (text, role), role first: collisions are beyond reach
    at any file size."""
    out = np.zeros((len(keyed), 2), np.uint64)
    roles = np.array([r for _, r in keyed], dtype=object)
    for role in set(roles.tolist()):
        sel = np.flatnonzero(roles == role)
        out[sel] = text_hashes((keyed[i][0] for i in sel), prefix=role + "\0")
    return out


def _contents_sha256(files: list[VectorFile]) -> dict:
    """What the encoder's output depends on, for the cache's identity: each file's sha256 (a
    .npy's and the texts beside it) keyed by its name and place in the list, not by the path as
    spelled, so the same files given by another path, or copied, are the same work."""
    out = {}
    for k, vf in enumerate(files):
        for path in (vf.path, *((vf._side,) if vf.suffix == ".npy" else ())):
            out[f"{k}:{path.name}"] = _file_sha256(path)
    return out


class VectorsEncoder:
    """``vectors:NAME``: vectors a user already has (an embedding API, another pipeline),
    read from ``files`` (see ``VectorFile``) and looked up by text, so a head can be trained on
    them without re-encoding. NAME labels the model that made them; a head trained on
    ``vectors:NAME`` accepts only caches of the same NAME. ``ids``: a mapping from query id to
    query text, or a function that makes one, for files keyed by id (``projhead cache`` passes
    the data's, made only if a file is keyed by id).

    Memory: a 128-bit hash, a file number and a row per vector (about 32 bytes); the vectors
    stay in their files (.npy and HDF5 read by rows) until a shard asks for them."""

    prefix = "vectors"

    def __init__(self, spec: str, files=(), ids: dict | None = None, normalize: bool = False, device=None):
        if not files:
            raise EncoderError(f"encoder 'vectors:{spec}' reads vectors from files: pass --vectors FILE (in Python, "
                               f"get_encoder('vectors:{spec}', files=[...])); it encodes no new texts: call your API, "
                               "then head.encode_queries")
        self.name = f"vectors:{spec}"
        self.files = [str(f) for f in files]
        self.normalize = normalize
        self.dim = None
        self.sources: list[VectorFile] = []
        resolved: dict = {}

        def id_table() -> dict:  # built on the first id-keyed row only: files keyed by text never pay for it
            if not resolved:
                resolved["ids"] = (ids() if callable(ids) else ids) or {}
            return resolved["ids"]

        shared: dict = {}  # query text of several ids -> {id: (file, row)} of its id-keyed rows, the last of each
        hashes, src, row = [], [], []  # per chunk: (n, 2) uint64, so Python holds one chunk of keys at a time
        try:  # a refused file closes the ones already opened
            for k, f in enumerate(self.files):
                vf = VectorFile(f)
                self.sources.append(vf)
                if self.dim is not None and vf.dim != self.dim:
                    raise EncoderError(f"{f}: vectors of dim {vf.dim}, other files have {self.dim}")
                self.dim = vf.dim
                n = 0
                for chunk in vf.keys():
                    missing = [v for kind, v, _ in chunk if kind == "id" and v not in id_table()]
                    if missing:
                        raise EncoderError(f"{f}: {len(missing)} ids are not query ids of the data "
                                           f"(first: {missing[0]!r}); contexts must be keyed by text")
                    keyed = [(id_table()[key], "query") if kind == "id" else (key, role) for kind, key, role in chunk]
                    if any(kind == "id" for kind, _, _ in chunk):
                        if "shared" not in resolved:  # texts asked by more than one id (QuAC's "What happened next?")
                            seen: dict = {}
                            for i, t in id_table().items():
                                seen.setdefault(t, []).append(i)
                            resolved["shared"] = {t for t, i in seen.items() if len(i) > 1}
                        for r, (kind, key, _) in enumerate(chunk):
                            if kind == "id" and id_table()[key] in resolved["shared"]:
                                shared.setdefault(id_table()[key], {})[key] = (k, n + r)  # the last row of an id wins
                    for r, (kind, key, role_) in enumerate(chunk):  # the text itself, keyed later, wins over its ids
                        if kind != "id" and role_ == "query" and key in shared:
                            shared[key][None] = (k, n + r)
                    # a query id is the vector of that query's text; "document" is the context role
                    hashes.append(_key_hashes([(key, "context" if r == "document" else (r or "*")) for key, r in keyed]))
                    n += len(chunk)
                if n != len(vf):
                    raise EncoderError(f"{f}: {n} keys for {len(vf)} vectors")
                src.append(np.full(n, k, np.int32))
                row.append(np.arange(n, dtype=np.int64))
            _one_vector_a_text(self.sources, shared)
        except BaseException:
            self.close()
            raise
        h = np.concatenate(hashes)
        hi, lo = h[:, 0].copy(), h[:, 1].copy()
        del h, hashes
        src, row = np.concatenate(src), np.concatenate(row)
        order = np.lexsort((np.arange(len(hi)), lo, hi))  # by key, then file order: the last one wins
        hi, lo, src, row = hi[order], lo[order], src[order], row[order]
        last = np.ones(len(hi), bool)
        last[:-1] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        self._hi, self._lo, self._src, self._row = hi[last], lo[last], src[last], row[last]
        self.sha256 = _contents_sha256(self.sources)

    def close(self) -> None:
        """Close the vector files (HDF5 files stay open for ``encode`` until then)."""
        for vf in self.sources:
            vf.close()

    def _find(self, role: str, texts: list[str]) -> np.ndarray:
        """Index into the key table of each (role, text), -1 where absent."""
        h = text_hashes(texts, prefix=role + "\0")
        pos = np.searchsorted(self._hi, h[:, 0], side="left")
        out = np.full(len(texts), -1, np.int64)
        for i, (p, (a, b)) in enumerate(zip(pos, h)):  # equal high halves are rare: a short scan
            while p < len(self._hi) and self._hi[p] == a:
                if self._lo[p] == b:
                    out[i] = p
                    break
                p += 1
        return out

    def encode(self, texts: list[str], batch_size: int = 64, role: str = "query") -> np.ndarray:
        texts = list(texts)
        at = self._find(role, texts)
        if (at < 0).any():
            gap = np.flatnonzero(at < 0)
            at[gap] = self._find("*", [texts[i] for i in gap])
        if (at < 0).any():
            missing = [texts[i] for i in np.flatnonzero(at < 0)]
            raise EncoderError(f"{role} texts have no vector in {', '.join(self.files)} ({len(missing)} of a batch of "
                               f"{len(texts)}; first: {missing[0][:80]!r}); every text of the data needs one")
        x = np.empty((len(texts), self.dim), np.float32)
        for k in np.unique(self._src[at]):
            sel = np.flatnonzero(self._src[at] == k)
            rows = self._row[at[sel]]
            x[sel] = v = self.sources[k].rows(rows)
            bad = ~np.isfinite(v).all(axis=1)
            if bad.any():
                raise EncoderError(f"{self.files[k]}: row {int(rows[np.flatnonzero(bad)[0]]) + 1} holds NaN or Inf")
            zero = ~v.any(axis=1)  # no direction: not a text's vector, and cosine has nothing to compare
            if zero.any():
                raise EncoderError(f"{self.files[k]}: row {int(rows[np.flatnonzero(zero)[0]]) + 1} is all zeros "
                                   f"({int(zero.sum())} such rows among those read)")
        if self.normalize:
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        return x

    def describe(self) -> dict:
        return {"name": self.name, "resolved": self.files,
                "settings": {"normalize": self.normalize, "files_sha256": self.sha256},
                # no model weights to hash: heads check the NAME only
                "weights_sha256": "", "build": {"normalize": self.normalize}, "versions": {}}
