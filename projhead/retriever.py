"""A retriever for up to millions of texts on one machine: bm25s + FAISS, fused as a head's
saved fusion; saved to a folder and loaded again without re-indexing.

Usage::

    from projhead.retriever import HybridRetriever
    r = HybridRetriever(texts, vectors, head=head)   # bm25s + FAISS, the head's saved fusion
    ids, scores = r.search(query_texts, query_vectors, k=10)
    r.save("index/passages")                         # the FAISS index, bm25s's index, statistics
    r = HybridRetriever.load("index/passages", head=head)   # the same head (checked), no re-indexing

``HybridRetriever`` holds a FAISS index of the (head-encoded) context vectors, the vectors
themselves, and a bm25s index of the texts. A search takes each side's top ``depth``
contexts, and scores their union exactly on both sides, normalised with full-corpus
statistics: for z-scores the dense mean and standard deviation over every context come from
the contexts' mean vector and second-moment matrix (no scan), BM25's from bm25s's scores of
every text (which it computes anyway); min-max needs each query's dense scores of every
context (one matrix-vector product over the vectors). With ``depth`` >= the corpus size the
result is exactly the fused ranking of every context.

A saved retriever is a folder: ``retriever.json`` (format, counts, the fusion, the FAISS
description, the head's sha256), ``index.faiss`` (FAISS's own file), ``bm25/`` (bm25s's own
files, numpy arrays without pickle and JSON), ``mean.npy`` and ``second.npy`` (the
statistics above) and, for an index that does not keep the vectors readable (not ``Flat``),
``vectors.npy`` (memory-mapped when loaded). It is written into a temporary folder inside the
target; an earlier retriever's files then go aside and the new ones go in, the record last
(``_swap_in``; stopped, the earlier ones come back, after a kill at the next load or save).
Other files stay. The texts themselves are not kept: ids index the texts it was built on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .files import foreign_files, fsync_file, listed, remove_path, write_file
from .fusion import BM25Index, FusionError, FusionSpec, checked_weight, json_file, normalised_pair
from .search import build_index, search

RECORD = "retriever.json"
FORMAT = "projhead-retriever"
VERSION = 1
INDEX_FILE = "index.faiss"
BM25_FOLDER = "bm25"
OWN_FILES = (INDEX_FILE, BM25_FOLDER, "mean.npy", "second.npy", "vectors.npy")  # with RECORD: what save writes


class _Owned:
    """An array's memory with its owner: numpy keeps this object (and so the owner) alive as
    long as any array made from it."""

    def __init__(self, owner, view: np.ndarray):
        self.owner, self.__array_interface__ = owner, view.__array_interface__


def _keeps_vectors(index) -> bool:
    """Whether ``index`` holds the vectors as they were added, readable in place (a Flat index)."""
    return hasattr(index, "get_xb")


def _in_index(index, n: int, dim: int) -> np.ndarray:
    """The (n, dim) vectors ``index`` holds (``_keeps_vectors``), over its own memory: read-only,
    and keeping ``index`` alive."""
    import faiss

    out = np.asarray(_Owned(index, faiss.rev_swig_ptr(index.get_xb(), n * dim).reshape(n, dim)))
    out.flags.writeable = False
    return out


class HybridRetriever:
    """bm25s + FAISS over ``texts`` and their ``vectors`` (of the head's encoder), fused
    with ``spec`` (default: the head's saved fusion, else the defaults). ``factory``: a FAISS
    index-factory string (``Flat`` exact; ``HNSW32``, ``IVF4096,Flat`` approximate)."""

    def __init__(self, texts: list[str], vectors: np.ndarray, head=None, spec: FusionSpec | None = None,
                 factory: str = "Flat", chunk: int = 65536):
        if len(texts) != len(vectors):
            raise FusionError(f"{len(texts)} texts but {len(vectors)} vectors: one vector per text")
        if not len(texts):
            raise FusionError("no texts to search: a retriever needs at least one text and its vector")
        self.head, self.factory = head, factory
        self.spec = spec or (head.fusion if head is not None else None) or FusionSpec()
        self.bm25 = BM25Index(texts, self.spec.bm25)  # first: a corpus BM25 cannot index fails before any encoding
        # the vectors (through the head's context side) written chunk by chunk into one array, their
        # mean and second moment summed in float64 on the way: no float64 copy, no list of chunks
        n, self.vectors, total, self.second = len(vectors), None, None, None
        for a in range(0, n, chunk):
            x = _finite(np.asarray(vectors[a:a + chunk], np.float32), "context vectors", a)
            if head is not None:
                x = head.encode_contexts(x)
            if self.vectors is None:
                self.vectors = np.empty((n, x.shape[1]), np.float32)  # (N, D')
                total, self.second = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
            self.vectors[a:a + len(x)] = x
            x = x.astype(np.float64)
            total += x.sum(axis=0)
            self.second += x.T @ x
        self.mean = total / n  # (D',): the mean dense score of a query is q . mean
        self.second /= n  # (D', D'): its mean square is q' S q
        dim = self.vectors.shape[1]
        # a Flat index takes the vectors in one add (one allocation, not a buffer grown chunk by chunk)
        self.index = build_index(iter([self.vectors]) if factory == "Flat" else
                                 (self.vectors[a:a + chunk] for a in range(0, n, chunk)), dim, factory)
        if _keeps_vectors(self.index):  # a Flat index holds the same vectors: read them there, not twice
            self.vectors = _in_index(self.index, n, dim)

    def _dense_stats(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        how = self.spec.normalisation
        if how == "zscore":
            mu = q @ self.mean
            var = np.einsum("id,de,ie->i", q, self.second, q) - mu ** 2
            return mu, np.sqrt(np.maximum(var, 0.0))
        if how == "minmax":
            lo = np.empty(len(q))
            hi = np.empty(len(q))
            for i in range(len(q)):
                s = self.vectors @ q[i].astype(np.float32)
                lo[i], hi[i] = s.min(), s.max()
            return lo, hi
        return None

    def search(self, query_texts: list[str], query_vectors: np.ndarray, k: int = 10, depth: int = 100,
               weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` texts of each query: ids (Nq, k) int64 (-1 where fewer) and fused scores
        (Nq, k), from the union of each side's top ``depth`` (at least ``k``)."""
        if len(query_texts) != len(query_vectors):
            raise FusionError(f"{len(query_texts)} query texts but {len(query_vectors)} query vectors")
        q = _finite(np.asarray(query_vectors, np.float32), "query vectors")
        if self.head is not None:
            q = self.head.encode_queries(q)
        n = len(self.vectors)
        if q.ndim != 2 or q.shape[1] != self.vectors.shape[1]:
            raise FusionError(f"query vectors of shape {q.shape}: the retriever's vectors have dimension "
                              f"{self.vectors.shape[1]}" + ("" if self.head is None else " (after the head)"))
        if not isinstance(k, (int, np.integer)) or k < 0 or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise FusionError(f"k must be an integer >= 0 and depth one >= 1, not k={k!r}, depth={depth!r}")
        depth = min(max(depth, k), n)  # each side's top depth: never fewer than the k asked for
        w = self.spec.weight if weight is None else checked_weight(weight)
        how = self.spec.normalisation
        _, dense_ids = search(self.index, q, k=depth)
        stats = self._dense_stats(q.astype(np.float64))
        tokens = self.bm25.tokens(list(query_texts))
        ids = np.full((len(q), k), -1, np.int64)
        out = np.full((len(q), k), -np.inf, np.float32)
        for i in range(len(q)):
            b_all = self.bm25.scores_of(tokens, [i])[0].astype(np.float64)  # (N,)
            top_b = np.argpartition(-b_all, depth - 1)[:depth] if depth < n else np.arange(n)
            cand = np.union1d(dense_ids[i][dense_ids[i] >= 0], top_b)
            d = self.vectors[cand].astype(np.float64) @ q[i].astype(np.float64)
            b = b_all[cand]
            if how == "zscore":
                d = (d - stats[0][i]) / stats[1][i] if stats[1][i] > 0 else np.zeros_like(d)
                sd = b_all.std()
                b = (b - b_all.mean()) / sd if sd > 0 else np.zeros_like(b)
            elif how == "minmax":
                lo, hi = stats[0][i], stats[1][i]
                d = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
                blo, bhi = b_all.min(), b_all.max()
                b = (b - blo) / (bhi - blo) if bhi > blo else np.zeros_like(b)
            else:
                d, b = normalised_pair(d[None], b[None], how)
                d, b = d[0], b[0]
            s = w * d + (1 - w) * b
            order = np.lexsort((cand, -s))[:k]  # highest first, ties by id
            ids[i, :len(order)] = cand[order]
            out[i, :len(order)] = s[order]
        return ids, out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the retriever to folder ``path`` (see module doc): a new or empty folder, or
        one holding a retriever saved before, whose files this one's replace (other files of
        yours there stay)."""
        import faiss

        path = Path(path)
        _recover(path)
        foreign = foreign_files(path, lambda o: (o / RECORD).is_file())
        if foreign:
            raise FusionError(f"{path}: holds files that are not a saved retriever ({listed(foreign)}); "
                              "give a new or empty folder")
        flat = _keeps_vectors(self.index)
        record = {"format": FORMAT, "version": VERSION, "n": len(self.vectors), "dim": int(self.vectors.shape[1]),
                  "factory": self.factory, "vectors_in_index": flat, "spec": self.spec.to_dict(),
                  "head": None if self.head is None else {"sha256": head_digest(self.head)}}
        earlier = _written(path)
        clash = [n for n in OWN_FILES[:4] + (() if flat else ("vectors.npy",))
                 if n not in earlier and (path / n).exists()]
        if clash:  # a file of the user's where this retriever would write
            raise FusionError(f"{path}: holds {listed(clash)}, not the saved retriever's: move it, or give another folder")
        work = path / f".retriever.tmp{os.getpid()}"  # a name files.foreign_files passes over
        try:
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob(".retriever.tmp*"):  # a killed save's
                shutil.rmtree(stale, ignore_errors=True)
            work.mkdir()
            faiss.write_index(self.index, str(work / INDEX_FILE))
            self.bm25.save(work / BM25_FOLDER)
            np.save(work / "mean.npy", self.mean, allow_pickle=False)
            np.save(work / "second.npy", self.second, allow_pickle=False)
            if not flat:
                np.save(work / "vectors.npy", np.asarray(self.vectors), allow_pickle=False)
            write_file(work / RECORD, json.dumps(record, indent=2))
            for f in work.rglob("*"):
                if f.is_file():
                    fsync_file(f)
            _swap_in(path, work, earlier)
        except (OSError, RuntimeError) as e:
            raise FusionError(f"{path}: cannot save the retriever ({getattr(e, 'strerror', None) or e}); "
                              "a retriever saved there before is as it was") from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, head=None) -> "HybridRetriever":
        """A retriever saved by ``save``. ``head``: the head it was built with (its query side
        encodes the queries; checked by its weights' sha256), None if it was built without one."""
        import faiss

        path = Path(path)
        _recover(path)
        record = _record(path)
        saved = record.get("head")
        if saved is not None and head is None:
            raise FusionError(f"{path}: its vectors went through a head: give the same head "
                              "(HybridRetriever.load(path, head=load_head(...)))")
        if saved is None and head is not None:
            raise FusionError(f"{path}: built without a head (the encoder's vectors); a head given now would "
                              "encode the queries alone: build the retriever again with the head")
        if saved is not None and head_digest(head) != saved.get("sha256"):
            raise FusionError(f"{path}: built with another head than the one given (its weights' sha256 "
                              f"{str(saved.get('sha256'))[:12]}..., the head's {head_digest(head)[:12]}...)")
        n, dim = record["n"], record["dim"]
        self = cls.__new__(cls)
        self.head, self.factory = head, record["factory"]
        try:
            self.spec = FusionSpec.from_dict(record["spec"])
        except FusionError as e:
            raise FusionError(f"{path / RECORD}: {e}") from None
        file = path / INDEX_FILE
        try:
            self.index = faiss.read_index(str(file))
            file = path / BM25_FOLDER
            self.bm25 = BM25Index.load(file, self.spec.bm25)
            file = path / "mean.npy"
            self.mean = _array(file, (dim,))
            file = path / "second.npy"
            self.second = _array(file, (dim, dim))
            file = path / "vectors.npy"
            if record["vectors_in_index"] != _keeps_vectors(self.index):
                raise ValueError(f"{RECORD} says the vectors are {'' if record['vectors_in_index'] else 'not '}in "
                                 f"the FAISS index, which is a {type(self.index).__name__}")
            self.vectors = _in_index(self.index, n, dim) if record["vectors_in_index"] else \
                _array(file, (n, dim), mmap=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise FusionError(f"{file}: cannot read it as part of a saved retriever ({str(e).splitlines()[0]})") \
                from None
        for what, count in (("the FAISS index", self.index.ntotal), ("bm25s's index", self.bm25.n)):
            if count != n:
                raise FusionError(f"{path}: {what} holds {count} texts, {RECORD} says {n}: not one retriever's files")
        if self.index.d != dim:
            raise FusionError(f"{path}: the FAISS index has dimension {self.index.d}, {RECORD} says {dim}")
        return self


def _finite(x: np.ndarray, what: str, start: int = 0) -> np.ndarray:
    """``x`` if every number is finite, else a FusionError naming the first row that is not (a
    NaN would turn every query's dense statistics into NaN: BM25 alone, silently)."""
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1) if x.ndim else ~np.isfinite(x)[None]
    if bad.any():
        raise FusionError(f"{what}: row {start + int(np.flatnonzero(bad)[0])} holds NaN or Inf")
    return x


def head_digest(head) -> str:
    """sha256 of a head's settings and weights (what a saved retriever checks the head by)."""
    h = hashlib.sha256(json.dumps(asdict(head.config), sort_keys=True, default=str).encode())
    for name, t in sorted(head.tensors().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update((t.float() if t.is_floating_point() else t).numpy().tobytes())
    return h.hexdigest()


def _written(path: Path) -> list[str]:
    """The names a retriever saved in ``path`` wrote (none without one), its record first."""
    try:
        record = json.loads((path / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [RECORD] + [n for n in OWN_FILES if (path / n).exists()
                       and not (n == "vectors.npy" and isinstance(record, dict) and record.get("vectors_in_index"))]


def _swap_in(path: Path, work: Path, earlier: list[str]) -> None:
    """The files of ``work`` (a whole retriever) in place of ``earlier`` (a retriever's there):
    those go aside first, the new record comes last; anything that stops it puts them back
    (``_recover`` does, after a kill)."""
    aside = path / f".retriever.old.tmp{os.getpid()}"
    aside.mkdir()
    moved = []
    try:
        for name in earlier:  # the record first: from here until the new one lands, no retriever
            os.replace(path / name, aside / name)
        for p in sorted(work.iterdir(), key=lambda p: p.name == RECORD):
            os.replace(p, path / p.name)
            moved.append(p.name)
    except BaseException:
        for name in moved:
            remove_path(path / name)
        _restore(path, aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _restore(path: Path, aside: Path) -> None:
    for p in sorted(aside.iterdir(), key=lambda p: p.name == RECORD):  # the record last
        remove_path(path / p.name)
        os.replace(p, path / p.name)
    aside.rmdir()


def _recover(path: Path) -> None:
    """A save killed while swapping files in: its new record never landed, so the earlier
    retriever set aside comes back; once it had landed, the aside is only removed."""
    for aside in path.glob(".retriever.old.tmp*") if path.is_dir() else ():
        if (path / RECORD).is_file() or not (aside / RECORD).is_file():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            _restore(path, aside)


def _record(path: Path) -> dict:
    """retriever.json of ``path``, checked."""
    file = path / RECORD
    record = json_file(file, f"{path}: not a saved retriever (no {RECORD}; HybridRetriever.save writes it)")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise FusionError(f"{file}: not a saved retriever's record (format {FORMAT!r})")
    if record.get("version") != VERSION:
        raise FusionError(f"{file}: a retriever of format version {record.get('version')!r}; this projhead reads "
                          f"version {VERSION}")
    for key, kind in (("n", int), ("dim", int), ("factory", str), ("vectors_in_index", bool), ("spec", dict)):
        v = record.get(key)
        if not isinstance(v, kind) or (kind is int and (isinstance(v, bool) or v < 1)):
            raise FusionError(f"{file}: {key!r} must be {'a positive integer' if kind is int else kind.__name__}, "
                              f"not {v!r}")
    if record.get("head") is not None and not isinstance(record["head"], dict):
        raise FusionError(f"{file}: 'head' must be null or an object, not {record['head']!r}")
    return record


def _array(file: Path, shape: tuple, mmap: bool = False) -> np.ndarray:
    """A .npy file of float numbers of ``shape`` (no pickle)."""
    a = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    if a.shape != shape or a.dtype.kind != "f":
        raise ValueError(f"holds {a.dtype} {a.shape}, not numbers of shape {shape}")
    return a
