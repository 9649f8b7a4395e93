"""A corpus in the cache: texts without queries, ranked beside the labelled contexts.

Usage::

    from projhead.corpus import CorpusFile, attach_corpus, with_corpus
    build_cache(pairs, encoder, "cache/x.h5", corpus=CorpusFile("passages.jsonl"))
    # projhead cache --dataset jsonl --data pairs.jsonl --corpus passages.jsonl
    c = open_cache("cache/x.h5")
    attach_corpus(c, sample=5000, seed=0)     # held-out queries (selection) rank against contexts + 5,000 of it
    with_corpus(c)                            # a Cache whose contexts are contexts + corpus (projhead eval)

A user's index holds the whole corpus, not just the texts that have a question; a head
judged against a few hundred labelled texts can look no better than the frozen encoder
while it helps against the corpus it will search. The corpus is the ``corpus`` section of
the cache (``cachefile.Corpus``): each distinct text once, none of them a context of the
pairs (a corpus text that is a gold context is stored there, once), with its vector.

Files (``CorpusFile``): JSONL with a ``text`` field (``.jsonl``, ``.jsonl.gz``), plain text,
one per line (``.txt``, ``.txt.gz``), Parquet with a ``text`` column; and, for
``vectors:NAME`` encoders, vector files keyed by text as ``vector_files.VectorFile`` reads
them (``.npy`` + ``.jsonl``, ``.h5``, Parquet with a ``vector`` column), whose vectors are
then looked up. The file is read a few times (hashes to find duplicates, the fingerprint,
then the texts a shard at a time): memory is 17 bytes a text and one shard, whatever its size.
"""
from __future__ import annotations

import gzip
import zlib
import itertools
import json
from pathlib import Path

import numpy as np

from .cachefile import AS_FLOAT32, SECTIONS, CacheError, check_float16_shard, fingerprint, read_rows, text_named
from .files import atomic_path
from .h5strings import column, decode, write_attrs
from .hashing import as_keys, columns_sha256, text_hashes
from .pairs import DataError, _text, jsonl_objects, parquet_columns, parquet_objects, storable

TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz", ".parquet")
VECTOR_SUFFIXES = (".npy", ".h5", ".hdf5", ".parquet")
# held-out queries are ranked against at most this many corpus rows unless told otherwise (a
# seeded sample): see the README for what selection decides with 1k, 5k and all of them
DEFAULT_SAMPLE = 100_000


class CorpusFile:
    """A file of corpus texts (see module doc), read in one pass per use, never held."""

    def __init__(self, path, vectors: bool | None = None):
        """``vectors``: whether the encoder looks vectors up (``vectors:NAME``): then a file of
        vectors is one (a Parquet file with a ``vector`` or ``embedding`` column); False: the
        encoder encodes texts, so a Parquet file is read for its ``text`` column and other
        vector files are refused; None: a Parquet file with vectors is taken as a vector file."""
        self.path = path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such corpus file")
        name = path.name.lower()
        self.kind = next((s for s in TEXT_SUFFIXES + VECTOR_SUFFIXES if name.endswith(s)), None)
        if self.kind is None:
            raise DataError(f"{path}: a corpus is .jsonl(.gz) with a 'text' field, .txt(.gz) one text a line, "
                            f".parquet with a 'text' column, or vectors keyed by text ({', '.join(VECTOR_SUFFIXES)})")
        if self.kind == ".parquet":
            names = parquet_columns(path, need=["text"])
            self.kind = "vectors" if vectors is not False and {"vector", "embedding"} & set(names) else ".parquet"
        elif self.kind in (".npy", ".h5", ".hdf5"):
            if vectors is False:
                raise DataError(f"{path}: a file of vectors is a corpus only with --encoder vectors:NAME; this encoder "
                                "encodes texts: give them as .jsonl, .txt or .parquet with a 'text' column")
            self.kind = "vectors"

    @property
    def vectors(self) -> bool:
        """The file holds vectors (for ``vectors:NAME``: add it to the encoder's files)."""
        return self.kind == "vectors"

    def texts(self):
        """Every text of the file, in order; an empty or non-text entry is an error naming the place."""
        p = self.path
        if self.kind in (".jsonl", ".jsonl.gz"):
            for n, row in jsonl_objects(p):
                if "text" not in row:
                    raise DataError(f"{p}: line {n}: missing key 'text'")
                yield _text(row["text"], p, f"line {n} 'text'")
        elif self.kind in (".txt", ".txt.gz"):
            opener = gzip.open if self.kind.endswith(".gz") else open
            try:
                with opener(p, "rt", encoding="utf-8-sig") as f:
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            yield storable(line.rstrip("\r\n"), p, f"line {n}")
            except UnicodeDecodeError as e:
                raise DataError(f"{p}: not UTF-8 text ({e.reason})") from None
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated, or not gzip at all
                raise DataError(f"{p}: cannot read ({e})") from None
        elif self.kind == ".parquet":
            for n, row in parquet_objects(p, ["text"], need=["text"]):
                yield _text(row["text"], p, f"row {n} 'text'")
        else:
            from .vector_files import VectorFile

            # a .npy file's texts are in the .jsonl beside it, one a line (blank lines skipped): a text
            # is named by its vector's row, from 1; rows of role query (a projhead cache's queries,
            # say) are not corpus texts: skipped
            with VectorFile(p) as vf:
                n = 0
                for keys in vf.keys():
                    for kind, value, role in keys:
                        n += 1
                        if role == "query":
                            continue
                        if kind != "text":
                            raise DataError(f"{p}: a corpus vector is keyed by its text, not by a query id "
                                            f"({value!r:.80})")
                        yield _text(value, p, f"row {n} text")

    def plan(self, context_keys: np.ndarray) -> "CorpusPlan":
        """What goes into the cache: each distinct text once, none that is one of the pairs'
        contexts (``context_keys``: ``match_keys(contexts)``). Texts are compared as
        ``same_text`` has them: a copy that differs only in spacing is the same text (an encoder
        and BM25 read it alike), and a context's copy stored as a corpus row would tie with it."""
        keys = match_keys(self.texts())
        if not len(keys):
            raise DataError(f"{self.path}: no texts")
        _, first = np.unique(keys, return_index=True)
        keep = np.zeros(len(keys), bool)
        keep[first] = True
        duplicates = int(len(keys) - len(first))
        in_pairs = keep & np.isin(keys, np.unique(context_keys))
        keep &= ~in_pairs
        return CorpusPlan(self, keep, {"source": str(self.path), "texts_read": int(len(keys)),
                                       "duplicates": duplicates, "contexts_of_pairs": int(in_pairs.sum()),
                                       "stored": int(keep.sum())})


def same_text(text: str) -> str:
    """The form in which corpus texts are compared with each other and with the contexts:
    runs of whitespace as one space, none at either end."""
    return " ".join(text.split())


def same_text_ids(texts) -> np.ndarray:
    """One integer per text, the same for texts that are one text by ``same_text``."""
    forms = np.array([same_text(t) for t in texts], dtype=object)
    return np.unique(forms, return_inverse=True)[1].reshape(-1).astype(np.int64) if len(forms) else np.zeros(0, np.int64)


def match_keys(texts) -> np.ndarray:
    """``as_keys`` of the 128-bit hashes of ``same_text`` of each of ``texts`` (any iterable)."""
    return as_keys(text_hashes(same_text(t) for t in texts))


class CorpusPlan:
    """The texts of a ``CorpusFile`` that go into the cache, in file order: ``len``,
    iteration, ``blocks(size)``, the section's ``fingerprint`` and the counts (``stats``)."""

    def __init__(self, source: CorpusFile, keep: np.ndarray, stats: dict):
        self.source, self.keep, self.stats = source, keep, stats
        self._fingerprint = None

    def __len__(self) -> int:
        return int(self.stats["stored"])

    def __iter__(self):
        for keep, t in zip(self.keep, self.source.texts()):
            if keep:
                yield t

    def blocks(self, size: int):
        return in_blocks(self, size)

    @property
    def fingerprint(self) -> str:
        """The corpus section's fingerprint (``cachefile.fingerprint`` of what will be written)."""
        if self._fingerprint is None:
            self._fingerprint = columns_sha256([self])
        return self._fingerprint


def in_blocks(items, size: int):
    """Lists of ``size`` consecutive items of an iterable (the last one shorter), one at a time."""
    it = iter(items)
    while block := list(itertools.islice(it, size)):
        yield block


def _shard(parts: Path, k: int) -> Path:
    return parts / f"corpus-{k:06d}.npy"


def encode_corpus(plan: CorpusPlan, encoder, parts: Path, shard_size: int, batch_size: int, bar=None,
                  dtype: str = "float32", then: str = AS_FLOAT32) -> None:
    """The corpus vectors as shard files in ``parts`` (rows ``k * shard_size ..`` of the plan
    in shard k), skipping shards already there: an interrupted run resumes. Vectors ``dtype``
    cannot store are refused once their shard is written (or found), advising ``then``."""
    dim = encoder.dim
    for k, texts in enumerate(plan.blocks(shard_size)):
        shard = _shard(parts, k)
        try:
            ok = shard.exists() and np.load(shard, mmap_mode="r", allow_pickle=False).shape == (len(texts), dim)
        except (ValueError, OSError):
            ok = False  # a damaged shard is redone
        if not ok:
            vecs = encoder.encode(texts, batch_size=batch_size, role="context")
            if not np.isfinite(vecs).all():
                raise CacheError(f"encoder {encoder.name} returned NaN or Inf for corpus texts (shard {k}); "
                                 "nothing was written for this shard")
            with atomic_path(shard) as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(vecs, np.float32), allow_pickle=False)
        check_float16_shard(shard, None if ok else vecs, dtype, f"encoder {encoder.name}: the corpus text",
                            text_named(texts), then)  # resumed shards too
        if bar is not None:
            bar.update(len(texts))


def shard_vectors(parts: Path):
    """``vectors(k, texts)`` for ``write_corpus``: shard k of ``encode_corpus``."""
    return lambda k, texts: np.load(_shard(parts, k), allow_pickle=False)


def write_corpus(write, plan: CorpusPlan, vectors, block: int) -> None:
    """Rows of the corpus section, ``block`` at a time: ``write(key, start, values)`` (a
    ``CacheWriter``'s ``write``, or datasets of a file being extended), ``vectors(k, texts)``
    the vectors of block k (``shard_vectors``, or an encoder that looks them up)."""
    a = 0
    for k, texts in enumerate(plan.blocks(block)):
        v = np.asarray(vectors(k, texts))
        if v.shape[0] != len(texts):
            raise CacheError(f"corpus block {k}: {v.shape[0]} vectors for {len(texts)} texts")
        write("corpus/text", a, texts)
        write("corpus/vectors", a, v)
        a += len(texts)


def corpus_sizes(plan: CorpusPlan | None) -> dict:
    """``CacheWriter``'s ``sections=`` for a corpus (none: {})."""
    return {"corpus": {"n_corpus": len(plan)}} if plan is not None else {}


def seal_corpus(f, plan: CorpusPlan) -> None:
    """The corpus group's attributes: what was read and kept, and its fingerprint, checked
    against the plan's (the identity the job was started with)."""
    g = f["corpus"]
    written = decode(g.attrs.get("fingerprint")) or fingerprint(SECTIONS["corpus"], {"text": column(g, "text")})  # the writer's
    if written != plan.fingerprint:
        raise CacheError(f"{plan.source.path}: changed while it was being cached; run again")
    write_attrs(g, {"fingerprint": written, "stats_json": json.dumps(plan.stats)})


# ---------------------------------------------------------------------------------------
# Ranking against it


def load_corpus(cache, sample: int | None = None, seed: int = 0) -> tuple[np.ndarray, list[str], int]:
    """Corpus rows of ``cache`` as (float32 vectors, texts, rows in the cache): all of them,
    or a seeded sample of ``sample`` rows (in file order) when it holds more. The section is
    checked (fingerprint, finite vectors) a chunk at a time; only the rows returned are held."""
    if "corpus" not in cache.sections:
        return np.zeros((0, cache.dim), np.float32), [], 0
    with cache.section_data("corpus") as d:
        n = d["text"].shape[0]
        rows = sample_rows(n, sample, seed)
        vectors = read_rows(d["vectors"], rows)
        texts = [t.decode("utf-8") for t in (d["text"][()] if len(rows) == n else d["text"][rows])]
    return vectors, texts, int(n)


def sample_rows(n: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """Which of ``n`` corpus rows are ranked: all (``sample`` None or >= n), else a seeded
    sample of ``sample`` rows, in file order."""
    if sample is None or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def attach_corpus(cache, sample: int | None = None, seed: int = 0) -> dict:
    """Rank the held-out queries of ``cache`` against its contexts and its corpus rows (all,
    or a seeded sample of ``sample``; ``None``: at most ``DEFAULT_SAMPLE``; 0: none), as model
    selection and ``projhead train`` do. Returns what was attached: {"distractors", "corpus"}.
    Attached here, training and model selection rank against them whatever their own
    ``corpus_sample`` (they attach the corpus as that asks when nothing was attached by hand)."""
    return _attach(cache, sample, seed, "given")


def _attach(cache, sample: int | None, seed: int, source, strict: bool = True) -> dict:
    if sample and "corpus" not in cache.sections and strict:
        raise DataError(f"{cache.path}: a corpus sample of {sample} asked for, but the cache has no corpus section "
                        "(projhead cache --corpus FILE adds one)")
    if sample == 0 or "corpus" not in cache.sections:
        cache.attach_distractors(None, None, source)
        return {"distractors": 0, "corpus": 0}
    vectors, texts, n = load_corpus(cache, DEFAULT_SAMPLE if sample is None else sample, seed)
    cache.attach_distractors(vectors, texts, source)
    return {"distractors": len(texts), "corpus": n}


def corpus_for_training(cache, sample: int | None, seed: int, strict: bool = True) -> None:
    """``attach_corpus`` as a training run asks (its ``corpus_sample`` and seed), unless that is
    attached already or a user attached distractors of their own (``Cache.attach_distractors``):
    a cache object used for several runs ranks each run's held-out queries as that run asks.
    A sample of a cache without a corpus is refused (``strict``), else none is attached."""
    if int(cache.attrs.get("n_distractors") or 0):  # with_corpus's: the corpus is among its contexts already
        sample = 0
    if cache.distractors_source != "given" and cache.distractors_source != ("corpus", sample, seed):
        _attach(cache, sample, seed, ("corpus", sample, seed), strict)


def with_corpus(cache, sample: int | None = None, seed: int = 0):
    """A ``Cache`` whose contexts are ``cache``'s, then its corpus rows (all, a seeded
    sample of ``sample``, or none for 0): every system of ``evaluate_cache`` ranks against both; gold rows are unchanged.
    ``attrs["n_distractors"]`` says how many were added (0: the cache has no corpus)."""
    from .cache_reader import Cache

    vectors, texts, _ = load_corpus(cache, sample, seed) if sample != 0 else (None, [], 0)
    if not texts:
        return Cache(cache.path, dict(cache.attrs, n_distractors=0), cache._arrays, cache.sections)
    arrays = dict(cache._arrays)
    arrays["contexts/vectors"] = np.concatenate([cache.contexts, vectors])
    arrays["contexts/text"] = list(cache.context_texts) + texts
    return Cache(cache.path, dict(cache.attrs, n_distractors=len(texts)), arrays, cache.sections)


def labelled_only(cache):
    """The ``Cache`` of ``with_corpus(cache)`` without its corpus rows (itself when it has none):
    what the out-of-500 protocol's BM25 and fused rows are computed on, so that they are the same
    with and without a corpus (BM25's statistics and the fusion's normalisation over the labelled
    contexts), as the dense rows are."""
    from .cache_reader import Cache

    nd = int(cache.attrs.get("n_distractors") or 0)
    if not nd:
        return cache
    n = len(cache.contexts) - nd
    arrays = dict(cache._arrays)
    arrays["contexts/vectors"] = cache.contexts[:n]
    arrays["contexts/text"] = list(cache.context_texts)[:n]
    return Cache(cache.path, dict(cache.attrs, n_distractors=0), arrays, cache.sections)
