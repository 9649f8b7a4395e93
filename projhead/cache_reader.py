"""Reading a finished cache: ``open_cache`` checks it and returns a ``Cache``.

Usage::

    from projhead.cache_reader import open_cache
    c = open_cache("cache/squad-dev.h5")              # pairs in memory, every check run
    c.queries, c.contexts, c.q2c, c.attrs["encoder"]
    c.sections                                        # {"pairs": [""], "mined": ["mined/semantic"]}
    c.read("mined", "semantic")                       # any section's arrays, checked
    with c.section_data("mined", "semantic") as d:    # or its datasets, checked in chunks,
        d["negatives"][:100]                          # then read lazily
    open_cache(path, load=False)                      # header and shapes only, nothing loaded

What is checked is what each section declares (``cachefile``): this module knows no
section but the pairs, which it holds in memory.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from .cachefile import (HEADER_SIZES, SECTIONS, CacheError, TextColumn, check_shapes, check_values, fingerprint,
                        read_header, read_rows)
from .h5strings import column, decode, read_attrs

__all__ = ["Cache", "CacheError", "TextColumn", "missing_shards", "open_cache", "shards_said", "read_identity", "read_rows"]

_DAMAGE = (KeyError, OSError, ValueError, RuntimeError, TypeError, UnicodeDecodeError)


class Cache:
    """A finished cache, its pairs read into memory (vectors as float32)."""

    def __init__(self, path: Path, attrs: dict, arrays: dict | None, sections: dict | None = None):
        self.path = path
        self.attrs = attrs
        self._arrays = arrays
        self.sections = sections or {"pairs": [""]}  # section name -> instances (group paths) in the file
        self.distractors = None  # (vectors, texts) ranked beside the contexts: corpus.attach_corpus
        # who attached them: None (nobody yet), "given" (by hand: attach_distractors or corpus.attach_corpus;
        # training and selection leave them as they are), or ("corpus", sample, seed) (a training run's)
        self.distractors_source = None
        self._ranked = None

    @property
    def mined_sets(self) -> list[str]:
        """Names of the mined sets stored in the file."""
        return [w.split("/", 1)[1] for w in self.sections.get("mined", [])]

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

    @property
    def n_distractors(self) -> int:
        return 0 if self.distractors is None else len(self.distractors[1])

    def attach_distractors(self, vectors: np.ndarray | None, texts: list[str] | None, source="given") -> None:
        """Rows ranked after the contexts when held-out queries are ranked (``corpus.attach_corpus``):
        never queries, gold contexts or training rows; ``None``: the contexts alone. Attached
        here by a user, training and model selection rank against them as they are."""
        self.distractors = None if texts is None or not len(texts) else (np.asarray(vectors, np.float32), list(texts))
        self.distractors_source = source
        self._ranked = None
        self.__dict__.pop("_ranked_lexical", None)  # lexical.held_out_bm25's index of the ranked texts

    def ranked_contexts(self) -> tuple[np.ndarray, list[str]]:
        """What held-out queries are ranked against: every context, then the distractors
        (vectors, texts); the gold rows are the contexts' own."""
        if self.distractors is None:
            return self.contexts, self.context_texts
        if self._ranked is None:
            v, t = self.distractors
            self._ranked = (np.concatenate([self.contexts, v]), list(self.context_texts) + t)
        return self._ranked

    def query_rows(self, rows) -> np.ndarray:
        """``rows`` of the queries as int64: integers (negative ones from the end, as numpy's) or a
        boolean mask of every query; anything else, or a row beyond the queries, is refused."""
        a = np.asarray(rows)
        n = len(self.q2c)
        if a.dtype == bool:
            if a.shape != (n,):
                raise CacheError(f"{self.path}: a boolean mask of rows has one value per query ({n}), not shape {a.shape}")
            return np.flatnonzero(a)
        if a.size and a.dtype.kind not in "iu" or a.ndim != 1:
            raise CacheError(f"{self.path}: query rows are a list of integers or a boolean mask, not {a.dtype} of "
                             f"shape {a.shape}")
        a = a.astype(np.int64)
        if a.size and (a.max() >= n or a.min() < -n):
            raise CacheError(f"{self.path}: query row {int(a.max() if a.max() >= n else a.min())} is beyond its "
                             f"{n} queries")
        return a

    def subset(self, rows) -> "Cache":
        """The queries ``rows`` (in that order) with only their gold contexts, in memory: a
        smaller training set without encoding anything again (learning curves, a slice of
        the data). Its fingerprint is of its own content; other sections are not carried."""
        rows = self.query_rows(rows)
        ctx, local = np.unique(self.q2c[rows], return_inverse=True)
        arrays = {"queries/vectors": self.queries[rows], "contexts/vectors": self.contexts[ctx],
                  "queries/context": local.reshape(-1).astype(np.int64),
                  "queries/text": [self.query_texts[i] for i in rows],
                  "queries/id": [self.query_ids[i] for i in rows],
                  "queries/group": [self.groups[i] for i in rows],
                  "contexts/text": [self.context_texts[i] for i in ctx]}
        fp = fingerprint(SECTIONS["pairs"], arrays)
        attrs = dict(self.attrs, n_queries=len(rows), n_contexts=len(ctx), split=f"{self.attrs['split']}[subset]",
                     fingerprint=fp, n_distractors=0)  # a with_corpus cache's corpus rows are not carried
        return Cache(self.path, attrs, arrays)

    def describe(self) -> dict:
        """Everything worth printing about the cache."""
        a = self.attrs
        d = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items() if not k.endswith("_json")}
        d["encoder_info"] = self.encoder_info
        d["versions"] = json.loads(a.get("versions_json", "{}"))
        d["meta"] = json.loads(a.get("meta_json", "{}"))
        d["file_bytes"] = self.path.stat().st_size
        d["sections"] = {w or name: self.section_attrs(name, w) for name, ws in self.sections.items() for w in ws}
        d["mined"] = {name: self.mined_settings(name) for name in self.mined_sets}
        return d

    def section_attrs(self, name: str, where: str) -> dict:
        """The sizes and attributes of one section instance (what ``projhead info`` lists)."""
        import h5py

        section = SECTIONS[name]
        with h5py.File(self.path, "r") as f:
            shapes = {c.name: column(f, section.key(where, c)).shape for c in section.columns
                      if section.key(where, c) in f}
            attrs = {k: (json.loads(v) if k.endswith("_json") else v.item() if hasattr(v, "item") else v)
                     for k, v in (read_attrs(f[where]).items() if where else ())}
        sizes = section.sizes({}, shapes)
        return {"section": name, "sizes": {k: v for k, v in sizes.items() if k not in HEADER_SIZES}, **attrs}

    def mined_settings(self, name: str) -> dict:
        """The settings a mined set was made with (what ``projhead info`` shows)."""
        return self.section_attrs("mined", f"mined/{name}").get("settings_json", {})

    @contextlib.contextmanager
    def section_data(self, name: str, instance: str | None = None, check: bool = True):
        """The columns of a section instance as h5py datasets, {column name: dataset}, for
        lazy reads (slices, ``read_rows``, ``TextColumn``) while the block lasts; ``check``:
        its values, index ranges and fingerprint are checked first, a chunk at a time, so
        nothing is held whole. ``instance``: for named sections (a mined set's name)."""
        import h5py

        section = SECTIONS[name]
        where = section.where(instance)
        if where not in self.sections.get(name, []):
            have = ", ".join(w.split("/", 1)[-1] for w in self.sections.get(name, [])) or "none"
            raise CacheError(f"{self.path}: no {name} section {instance or ''!r} (it has: {have})")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise CacheError(f"{self.path}: not a readable HDF5 file ({e})") from e
        with f:
            try:
                sizes = check_shapes(self.path, section, where, f, _header_sizes(self.attrs))
                data = {c.name: column(f, section.key(where, c)) for c in section.columns if section.key(where, c) in f}
                if check:
                    check_values(self.path, section, where, data, sizes, self.attrs,
                                 section.stored_fingerprint(f, where))
            except CacheError:
                raise
            except _DAMAGE as e:
                raise CacheError(f"{self.path}: damaged {section.label(where)}, cannot read it ({e})") from e
            yield data

    def read(self, name: str, instance: str | None = None) -> dict:
        """The arrays of a section instance, whole (texts as lists), every check of the section
        run; its group's attributes under "attrs". See ``section_data`` to read lazily."""
        with self.section_data(name, instance) as data:
            try:
                out = {k: d[()] for k, d in data.items()}
                where = SECTIONS[name].where(instance)
                attrs = read_attrs(next(iter(data.values())).file[where]) if where and data else {}
            except _DAMAGE as e:
                raise CacheError(f"{self.path}: damaged section {name!r}, cannot read it ({e})") from e
        out = {k: ([s.decode("utf-8") for s in v] if v.dtype == object else v) for k, v in out.items()}
        out["attrs"] = attrs
        return out

    def mined(self, name: str) -> dict:
        """The mined set ``name`` (see ``cachefile.Mined``): its arrays and "settings", checked
        against this cache; a clear CacheError when absent or damaged."""
        if name not in self.mined_sets:
            have = ", ".join(self.mined_sets) or "none"
            raise CacheError(f"{self.path}: no mined set {name!r} (it has: {have}); "
                             f"make one with: projhead mine {self.path} --name {name}")
        out = self.read("mined", name)
        out.setdefault("silver", np.zeros((0, 2), np.int64))
        out["settings"] = json.loads(out.pop("attrs")["settings_json"])
        return out


def _header_sizes(attrs: dict) -> dict:
    return {k: int(attrs[k]) for k in HEADER_SIZES}


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
            return _read(path, f, check_finite, load)
    except CacheError:
        raise
    except _DAMAGE as e:
        # checksummed metadata (libver "latest") turns damage into errors like these
        raise CacheError(f"{path}: damaged cache, cannot read it ({e})") from e


def _read(path: Path, f, check_finite: bool, load: bool) -> Cache:
    attrs = read_header(path, f)
    sections = {name: s.instances(f) for name, s in SECTIONS.items()}
    sections = {k: v for k, v in sections.items() if v}
    pairs = SECTIONS["pairs"]
    sizes = check_shapes(path, pairs, "", f, _header_sizes(attrs))
    arrays = None
    if load:
        arrays = {c.name: column(f, c.name)[()] for c in pairs.columns}
        for c in pairs.columns:
            if c.kind == "text":
                arrays[c.name] = [s.decode("utf-8") for s in arrays[c.name]]
            elif c.kind == "vectors":
                arrays[c.name] = arrays[c.name].astype(np.float32, copy=False)
            else:
                arrays[c.name] = arrays[c.name].astype(np.int64)
        checked = arrays if check_finite else {k: v for k, v in arrays.items() if not k.endswith("/vectors")}

        def hint(key):
            if not f[key].is_virtual:
                return ""
            gone = missing_shards(path, f)
            return (f" (a virtual dataset over shard files: {len(gone)} missing, first {gone[0]}, found relative to "
                    f"the cache)" if gone else " (a virtual dataset over shard files, which are there)")
        # the content hash, recomputed from what was read: the check of the texts and index as
        # a whole (and the only one of the texts in caches before format 3, whose strings live
        # in a heap that no checksum covers)
        check_values(path, pairs, "", checked, sizes, attrs, pairs.stored_fingerprint(f, ""), hint)
    return Cache(path, attrs, arrays, sections)


def missing_shards(path: Path, f=None) -> list[str]:
    """The shard files a cache's vectors are linked from (``cache --ray``: HDF5 virtual
    datasets, found relative to the cache) that are not there, as the paths they are linked by."""
    import h5py

    if f is None:
        with h5py.File(path, "r") as f:
            return missing_shards(path, f)
    gone = []
    for role in ("queries", "contexts"):
        d = f.get(f"{role}/vectors")
        if d is not None and d.is_virtual:
            for src in d.virtual_sources():
                if not (Path(path).parent / src.file_name).is_file() and src.file_name not in gone:
                    gone.append(src.file_name)
    return gone


def shards_said(path: Path) -> str:
    """For a message about vectors that read as NaN: the shard files gone, if the cache's vectors
    are linked from some (a linked file that is missing reads as NaN), else nothing."""
    try:
        gone = missing_shards(path)
    except OSError:  # the file itself unreadable: its own error says so
        return ""
    return (f"; {len(gone)} of the shard files its vectors are linked from are gone (first: {gone[0]}, relative "
            "to the cache)" if gone else "")


def read_identity(path: Path) -> dict:
    """The identity of the work in the cache at ``path`` (``cachefile.job_identity``)."""
    import h5py

    c = open_cache(path, check_finite=False, load=False)
    enc = c.encoder_info
    out = {"encoder": enc["name"], "weights_sha256": enc.get("weights_sha256"), "settings": enc.get("settings"),
           "fingerprint": c.attrs["fingerprint"], "dataset": c.attrs["dataset"], "split": c.attrs["split"],
           "granularity": c.attrs["granularity"], "dtype": c.attrs["dtype"]}
    with h5py.File(path, "r") as f:
        more = {w: decode(f[w].attrs.get("fingerprint")) for name, ws in c.sections.items() for w in ws
                if SECTIONS[name].identity and w}
    if more:
        out["sections"] = more
    return out


def info_lines(path, d: dict) -> list[str]:
    """What ``projhead info`` prints of ``Cache.describe()``'s ``d``: encoder, settings, sizes,
    fingerprint, versions, sections."""
    d = dict(d)
    out = []
    enc = d.pop("encoder_info")
    out.append(f"{path}")
    out.append(f"  encoder      {enc['name']}  ({enc.get('resolved')})")
    out.append(f"  settings     {json.dumps(enc.get('settings'))}")
    if "precision" in (enc.get("settings") or {}):
        out.append(f"  precision    {enc['settings']['precision']} (the encoder's arithmetic; vectors stored as {d['dtype']})")
    out.append(f"  weights      sha256 {enc.get('weights_sha256', '')[:16]}...")
    out.append(f"  data         {d['dataset']} {d['split']} ({d['granularity']}), source {d['meta'].get('source')}")
    out.append(f"  queries      {d['n_queries']}")
    out.append(f"  contexts     {d['n_contexts']} distinct")
    out.append(f"  vectors      dim {d['dim']}, {d['dtype']}, normalised: {bool(d['normalized'])}")
    out.append(f"  fingerprint  {d['fingerprint']}")
    took = f", encoded in {d['encode_seconds']:.0f}s" if "encode_seconds" in d else ""
    out.append(f"  created      {d.get('created')}{took}, format {d['format']} v{d['format_version']}, "
               f"{d['file_bytes'] / 1e6:.1f} MB")
    out.append("  versions     " + ", ".join(f"{k} {v}" for k, v in d["versions"].items() if k != "platform"))
    for where, s in d["sections"].items():  # the pairs, then any other section (mined sets...)
        sizes = ", ".join(f"{k} {v}" for k, v in s["sizes"].items())
        made = s.get("settings_json", {}).get("method")
        counts = {k: v for k, v in (s.get("stats_json") or {}).items() if k != "source"}  # a corpus: what was read
        out.append(f"  section      {where}" + (f" ({sizes})" if sizes else "") + (f", by {made}" if made else "")
                   + "".join(f", {k.replace('_', ' ')} {v}" for k, v in counts.items()))
    return out
