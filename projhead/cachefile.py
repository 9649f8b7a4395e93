"""The cache file format: a header and named sections, each declaring its datasets.

Usage::

    from projhead.cachefile import Column, Section, register_section

    @register_section
    class Corpus(Section):                      # /corpus/vectors, /corpus/text
        name = "corpus"
        columns = (Column("vectors", ("n_corpus", "dim"), "vectors"),
                   Column("text", ("n_corpus",), "text"))

The header is the attributes on ``/`` (``FORMAT``, ``FORMAT_VERSION``, encoder, settings,
sizes, the data's fingerprint; ``cache_attrs`` builds them). Everything else is a section
instance: the group ``/NAME`` of a section (``named`` ones hold one group per instance,
``/NAME/INSTANCE``, as ``projhead mine`` does). A section declares its columns: where each
lives in the group, its shape in size names (``n_queries``, ``n_contexts`` and ``dim`` come
from the header; any other name is bound by the first column that uses it, and every later
column must agree), its kind, which indexes point into what, and which columns enter the
fingerprint. From that alone the one writer creates the datasets (``cache_writer``), the
reader checks shapes, finite values, index ranges and the fingerprint, chunk by chunk
(``check_values``), and the identity of a cache's work includes the fingerprints of the
sections marked ``identity``. A section with other rules adds them in ``check``.

Kinds: ``vectors`` (rows, dim) in the cache's dtype, checksummed per chunk; ``text`` UTF-8
strings, packed as checksummed bytes and offsets (``h5strings``; caches before format 3 hold
HDF5 variable-length strings, which no checksum covers: a section that has texts should
fingerprint them);
``index`` int64 rows of another size (``of``; ``missing`` is the value meaning none);
``float`` float32 (``finite``: NaN and Inf refused).
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass

import numpy as np

from ._version import __version__
from .h5strings import column, decode, one_span, read_attrs
from .hashing import columns_sha256

FORMAT = "projhead-cache"
FORMAT_VERSION = 3  # 2: the fingerprint covers groups too and is the read-time check of the texts;
# 3: texts and string attributes out of HDF5's unchecksummed global heap (h5strings)
HEADER_SIZES = ("n_queries", "n_contexts", "dim")
CHUNK = 65536  # rows read at a time by the checks


class CacheError(ValueError):
    """A cache that cannot be used, or may not be overwritten; the message says why."""


@dataclass(frozen=True)
class Column:
    """One dataset of a section (see module doc). ``shape``: size names, ints, or (name, +n)."""

    name: str
    shape: tuple
    kind: str  # "vectors", "text", "index", "float"
    of: str | tuple | None = None  # index: the size indexed, or one per last-axis column
    missing: int | None = None  # index: the value meaning "none" (e.g. -1)
    finite: bool = True  # float, vectors: NaN or Inf refused
    optional: bool = False
    fingerprint: bool | None = None  # enters the section's fingerprint (default: text columns)

    @property
    def fingerprinted(self) -> bool:
        return self.kind == "text" if self.fingerprint is None else self.fingerprint


class Section:
    """A named part of the cache file (see module doc). Subclasses set the class attributes
    and register with ``register_section``; ``check`` may add rules of their own."""

    name = ""
    columns: tuple = ()
    required = False  # every cache has it
    named = False  # one group per instance, /NAME/INSTANCE
    identity = False  # its fingerprint is part of the cache's identity (the work)
    root = None  # where it lives: /NAME by default; "" for the file's root

    def where(self, instance: str | None = None) -> str:
        base = self.name if self.root is None else self.root
        return f"{base}/{instance}" if self.named else base

    def key(self, where: str, column: Column) -> str:
        return f"{where}/{column.name}" if where else column.name

    def instances(self, f) -> list[str]:
        """The instances present in the open file ``f`` (group paths)."""
        if self.named:
            return [f"{self.name}/{k}" for k in sorted(f[self.name].keys())] if self.name in f else []
        where = self.where()
        present = [self.key(where, c) in f for c in self.columns if not c.optional]
        return [where] if any(present) or self.required else []

    def label(self, where: str) -> str:
        return f"section {where!r}" if where else "cache"

    def sizes(self, header_sizes: dict, shapes: dict) -> dict:
        """Header sizes plus the free size names, bound from ``shapes`` {column name: shape}."""
        sizes = dict(header_sizes)
        for c in self.columns:
            if c.name not in shapes:
                continue
            for term, have in zip(c.shape, shapes[c.name]):
                name, add = term if isinstance(term, tuple) else (term, 0)
                if isinstance(name, str) and name not in sizes:
                    sizes[name] = int(have) - add
        return sizes

    def shape(self, column: Column, sizes: dict) -> tuple:
        out = []
        for term in column.shape:
            name, add = term if isinstance(term, tuple) else (term, 0)
            out.append(int(sizes.get(name, -1)) + add if isinstance(name, str) else int(name))
        return tuple(out)

    def stored_fingerprint(self, f, where: str):
        return decode(f[where].attrs.get("fingerprint")) if where else None

    def check(self, path, where: str, data: dict, sizes: dict, header: dict) -> None:
        """Rules beyond the columns' own (``data``: column name -> array or dataset)."""


SECTIONS: dict[str, Section] = {}


def register_section(cls):
    """Class decorator: make a ``Section`` subclass known to the writer, reader and checks."""
    if not cls.name or cls.name in SECTIONS and type(SECTIONS[cls.name]) is not cls:
        raise ValueError(f"section {cls.name!r}: needs a name of its own")
    SECTIONS[cls.name] = cls()
    return cls


def check_shapes(path, section: Section, where: str, f, header_sizes: dict) -> dict:
    """Each column of the instance at ``where`` is there (unless optional) with its declared
    shape; returns the instance's sizes."""
    shapes = {c.name: column(f, section.key(where, c)).shape for c in section.columns if section.key(where, c) in f}
    missing = [section.key(where, c) for c in section.columns if not c.optional and c.name not in shapes]
    if missing:
        raise CacheError(f"{path}: incomplete {section.label(where)}, missing {', '.join(missing)}")
    sizes = section.sizes(header_sizes, shapes)
    for c in section.columns:
        want = section.shape(c, sizes)
        if c.name in shapes and shapes[c.name] != want:
            raise CacheError(f"{path}: dataset {section.key(where, c)} has shape {shapes[c.name]}, expected {want}")
    return sizes


def _chunks(src, n: int):
    for a in range(0, n, CHUNK):
        yield a, np.asarray(src[a:a + CHUNK])


FLOAT16_MAX = 65504.0


AS_FLOAT32 = "cache as float32 (--dtype float32)"
REBUILD_AS_FLOAT32 = ("this cache stores float16: build it again as float32 (--dtype float32 --overwrite); nothing "
                      "of it was changed")


def check_float16(values, dtype: str, what: str, rows=0, then: str = AS_FLOAT32) -> None:
    """Refuse ``values`` that float16 storage would turn into Inf (finite values above 65504:
    unnormalised vectors), naming ``what`` and the first such row: ``rows`` is the number of
    the first value, or a function of a value's position giving its name (its text);
    ``then``: what to do instead."""
    if dtype != "float16" or not len(values):
        return
    big = (np.abs(np.asarray(values, np.float32)) > FLOAT16_MAX).reshape(len(values), -1).any(axis=1)
    if big.any():
        j = int(np.flatnonzero(big)[0])
        raise CacheError(f"{what} {rows(j) if callable(rows) else rows + j} does not fit float16 (|x| > 65504; "
                         f"unnormalised vectors?): {then}")


def check_float16_shard(shard, vecs, dtype: str, what: str, rows, then: str) -> None:
    """``check_float16`` of one shard of float32 vectors: ``vecs`` as just encoded, or None for
    a shard found on disk (a resumed run), read from ``shard``."""
    if dtype == "float16":
        check_float16(np.load(shard, mmap_mode="r", allow_pickle=False) if vecs is None else vecs, dtype, what, rows,
                      then)


def text_named(texts, rows=None) -> "callable":
    """``check_float16``'s ``rows`` for vectors of ``texts`` (of ``texts[rows]`` when given):
    position -> the text, cut short."""
    def name(j):
        t = texts[j] if rows is None else texts[rows[j]]
        return repr(t) if len(t) <= 60 else repr(t[:57] + "...")
    return name


def check_values(path, section: Section, where: str, data: dict, sizes: dict, header: dict,
                 stored_fingerprint=None, hint=lambda key: "") -> None:
    """Finite values, index ranges and the fingerprint of one instance, a chunk at a time
    (``data``: column name -> in-memory array or h5py dataset)."""
    if stored_fingerprint is not None and stored_fingerprint != fingerprint(section, data):
        raise CacheError(f"{path}: damaged {section.label(where)}, its texts or index do not match "
                         "their checksum (fingerprint)")
    for c in section.columns:
        if c.name not in data or c.kind not in ("vectors", "float", "index"):
            continue
        key, src = section.key(where, c), data[c.name]
        bad_rows, first = 0, None
        for a, x in _chunks(src, len(src)):
            if c.kind == "index":
                _check_index(path, section, where, c, x, sizes)
            elif c.finite:
                bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if bad.any():
                    first = a + int(np.flatnonzero(bad)[0]) if first is None else first
                    bad_rows += int(bad.sum())
        if bad_rows:
            raise CacheError(f"{path}: {key} holds NaN or Inf in {bad_rows} rows (first: row {first}){hint(key)}")
    section.check(path, where, data, sizes, header)


def _check_index(path, section, where, c: Column, x: np.ndarray, sizes: dict) -> None:
    ofs = c.of if isinstance(c.of, tuple) else (c.of,) * (x.shape[-1] if x.ndim > 1 else 1)
    cols = x.reshape(len(x), -1)
    for j, of in enumerate(ofs):
        v = cols[:, j]
        if c.missing is not None:
            v = v[v != c.missing]
        if len(v) and (v.min() < 0 or v.max() >= sizes[of]):
            what = of[2:] if of.startswith("n_") else of
            raise CacheError(f"{path}: {section.key(where, c)} points outside the {sizes[of]} rows of {what}")


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


def fingerprint(section: Section, data: dict) -> str:
    """sha256 of the section's fingerprinted columns: texts first, then the others, each in
    declared order (for the pairs, the same as ``data.content_sha256``)."""
    def texts(src):
        return src if isinstance(src, list) else TextColumn(src)

    cols = [c for c in section.columns if c.fingerprinted and c.name in data]
    return columns_sha256([texts(data[c.name]) for c in cols if c.kind == "text"],
                          [np.asarray(data[c.name][()]) for c in cols if c.kind != "text"])


def read_rows(dset, rows: np.ndarray) -> np.ndarray:
    """dset[rows] as float32 for any row order: one contiguous read when the rows are close
    together (contexts follow their queries in a cache), else a sorted fancy read."""
    uniq, inv = np.unique(rows, return_inverse=True)
    if len(uniq) == 0:
        return np.zeros((0,) + dset.shape[1:], np.float32)
    if one_span(uniq):
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        vec = dset[lo:hi][uniq - lo]
    else:
        vec = dset[uniq]
    return vec.astype(np.float32, copy=False)[inv]


def job_identity(encoder_info: dict, meta: dict, fingerprint: str, dtype: str, sections: dict | None = None) -> dict:
    """What must match for two runs to be the same work: the encoder, the data (its metadata
    and fingerprint), the stored dtype, and the fingerprints of other ``identity`` sections."""
    out = {"encoder": encoder_info["name"], "weights_sha256": encoder_info["weights_sha256"],
           "settings": encoder_info["settings"], "fingerprint": fingerprint, "dataset": meta.get("dataset"),
           "split": meta.get("split"), "granularity": meta.get("granularity"), "dtype": dtype}
    if sections:
        out["sections"] = sections
    return out


def describe_mismatch(have: dict, want: dict) -> str:
    keys = list(want) + [k for k in have if k not in want]
    return "; ".join(f"{k}: file has {have.get(k)!r}, this run {want.get(k)!r}" for k in keys if have.get(k) != want.get(k))


def _versions(info: dict) -> dict:
    import h5py

    v = dict(info.get("versions", {}))
    v.update({"projhead": __version__, "h5py": h5py.__version__, "numpy": np.__version__,
              "python": sys.version.split()[0], "platform": platform.platform()})
    return v


def cache_attrs(pairs_meta: dict, info: dict, fingerprint: str, encode_seconds: float) -> dict:
    """The header every cache carries (attributes on /), but for the sizes, which
    ``CacheWriter.finish`` adds: format, encoder, settings, versions, data, fingerprint."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": info["name"],
            "encoder_json": json.dumps(info), "versions_json": json.dumps(_versions(info)),
            "dataset": str(pairs_meta.get("dataset", "")), "split": str(pairs_meta.get("split", "")),
            "granularity": str(pairs_meta.get("granularity", "")), "meta_json": json.dumps(pairs_meta),
            "fingerprint": fingerprint,
            "encode_seconds": encode_seconds}  # this run's share (a resumed run counts its own part)


HEADER = ["format", "format_version", "encoder", "encoder_json", "dim", "dtype", "normalized", "dataset",
          "split", "granularity", "fingerprint", "n_queries", "n_contexts"]


def read_header(path, f) -> dict:
    """The attributes on / of the open file ``f``, checked: a projhead cache this version reads."""
    attrs = read_attrs(f)  # its strings checked against their sha256
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path}: not a projhead cache (attribute 'format' is {attrs.get('format')!r})")
    if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
        raise CacheError(f"{path}: cache format version {attrs['format_version']} is newer than this "
                         f"projhead reads ({FORMAT_VERSION}); upgrade projhead")
    missing = [k for k in HEADER if k not in attrs]
    if missing:
        raise CacheError(f"{path}: incomplete cache, missing {', '.join(missing)}")
    return attrs


# ---------------------------------------------------------------------------------------
# The sections every projhead reads


@register_section
class Pairs(Section):
    """Question -> context pairs, in every cache: /queries (a row per query: its vector,
    text, id, group (article title, for leak-free splits) and the row of its gold context)
    and /contexts (each distinct context once). Their fingerprint is the header's."""

    name, root, required, identity = "pairs", "", True, True
    columns = (Column("queries/vectors", ("n_queries", "dim"), "vectors"),
               Column("queries/text", ("n_queries",), "text"),
               Column("queries/id", ("n_queries",), "text"),
               Column("queries/group", ("n_queries",), "text"),
               Column("queries/context", ("n_queries",), "index", of="n_contexts", fingerprint=True),
               Column("contexts/vectors", ("n_contexts", "dim"), "vectors"),
               Column("contexts/text", ("n_contexts",), "text"))

    def stored_fingerprint(self, f, where):
        return decode(f.attrs["fingerprint"]) if int(f.attrs["format_version"]) >= 2 else None

    def check(self, path, where, data, sizes, header):
        if int(header["format_version"]) < 2 and header.get("texts_sha256") not in (
                None, columns_sha256([d if isinstance(d, list) else TextColumn(d) for d in
                                      (data[k] for k in ("queries/text", "queries/id", "queries/group", "contexts/text"))])):
            # version 1 files: texts only, under their own attribute (absent in the oldest)
            raise CacheError(f"{path}: damaged cache, its texts or index do not match their checksum (texts_sha256)")


@register_section
class Mined(Section):
    """Sets made by ``projhead mine``, /mined/NAME: negatives (Nq, k) context rows, -1 for
    none; negative_scores (Nq, k); teacher (Nq, 1 + k) scores of [gold, negatives], NaN where
    none; silver (S, 2) extra (query, context) pairs and silver_score (S,); the settings as the
    attribute settings_json. Derived from the pairs, so not part of the cache's identity."""

    name, named = "mined", True
    columns = (Column("negatives", ("n_queries", "k"), "index", of="n_contexts", missing=-1),
               Column("negative_scores", ("n_queries", "k"), "float", finite=False, optional=True),
               Column("teacher", ("n_queries", ("k", 1)), "float", finite=False, optional=True),
               Column("silver", ("silver", 2), "index", of=("n_queries", "n_contexts"), optional=True),
               Column("silver_score", ("silver",), "float", optional=True))


@register_section
class Corpus(Section):
    """Texts without queries (``projhead cache --corpus``), /corpus: each distinct text once,
    none of them a context of the pairs (those are stored there, once), and its vector. Held-out
    queries are ranked against the contexts and these rows (selection, ``projhead eval``); they
    are never queries, gold contexts or in-batch positives. Part of the cache's identity: a
    changed corpus is other work, as changed pairs are."""

    name, identity = "corpus", True
    columns = (Column("vectors", ("n_corpus", "dim"), "vectors"),
               Column("text", ("n_corpus",), "text"))


@register_section
class BM25Section(Section):
    """BM25 of the pairs as sparse matrices, /bm25 (``lexical.py`` makes and reads it): terms
    (n_terms,); context_rows, context_terms, context_weights (n_context_terms,): W as
    coordinates; query_rows, query_terms, query_counts (n_query_terms,): C as coordinates;
    query_stats (n_queries, 2): each query's BM25 mean and standard deviation over the contexts.
    Derived from the pairs, so not part of the cache's identity."""

    name = "bm25"
    columns = (Column("terms", ("n_terms",), "text"),
               Column("context_rows", ("n_context_terms",), "index", of="n_contexts", fingerprint=True),
               Column("context_terms", ("n_context_terms",), "index", of="n_terms", fingerprint=True),
               Column("context_weights", ("n_context_terms",), "float"),
               Column("query_rows", ("n_query_terms",), "index", of="n_queries", fingerprint=True),
               Column("query_terms", ("n_query_terms",), "index", of="n_terms", fingerprint=True),
               Column("query_counts", ("n_query_terms",), "float"),
               Column("query_stats", ("n_queries", 2), "float"))


@register_section
class Turns(Section):
    """Per-turn vectors of dialog queries, /turns (``turns.py`` makes and reads it; its module
    doc has the layout): each distinct turn text once with its vector, each query's slots (its
    question, then earlier questions and answers), each context's neighbours. Part of the
    cache's identity: other turns are other work."""

    name, identity = "turns", True
    columns = (Column("vectors", ("n_texts", "dim"), "vectors"),
               Column("text", ("n_texts",), "text"),
               Column("slots", ("n_queries", "slots"), "index", of="n_texts", missing=-1, fingerprint=True),
               Column("neighbours", ("n_contexts", 2), "index", of="n_texts", missing=-1, fingerprint=True,
                      optional=True),
               Column("section", ("n_contexts",), "index", of="n_texts", missing=-1, fingerprint=True, optional=True))

    def check(self, path, where, data, sizes, header):
        first = np.asarray(data["slots"][:, 0])
        if (first < 0).any():
            raise CacheError(f"{path}: {where}/slots: query row {int(np.flatnonzero(first < 0)[0])} has no current "
                             "question (slot 0 must always point at a text)")
