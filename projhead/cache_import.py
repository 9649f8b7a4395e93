"""A cache of a JSONL of pairs and vectors the user already has, without holding the texts.

Usage::

    from projhead.cache_import import cache_jsonl_vectors
    from projhead.encoders import get_encoder
    cache_jsonl_vectors("pairs.jsonl", get_encoder("vectors:my-api", files=["v.npy"]), "cache/mine.h5")
    # projhead cache --dataset jsonl --data pairs.jsonl --encoder vectors:my-api --vectors v.npy

The file written is the one ``build_cache`` writes from the same data (same fingerprint,
vectors and attributes); memory is a few hashes and indices a pair.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .cache_build import CacheResult, parts_job, start_job
from .cache_writer import CacheWriter, lock_output
from .cachefile import CacheError, cache_attrs, job_identity
from .corpus import corpus_sizes, in_blocks, match_keys, seal_corpus, write_corpus
from .hashing import as_keys, text_hashes


class _Lines:
    """One field of a JSONL of pairs as a column read on demand (``first``: only the rows
    marked, for the distinct contexts): iterated once per use, never held."""

    def __init__(self, path: Path, field: int, n: int, first: np.ndarray | None = None):
        self.path, self.field, self.n, self.first = path, field, n, first

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from .data import iter_jsonl

        for i, row in enumerate(iter_jsonl(self.path)):
            if self.first is None or self.first[i]:
                yield row[self.field]

    def blocks(self, size: int):
        return in_blocks(self, size)


def cache_jsonl_vectors(data: str | os.PathLike, encoder, out: str | os.PathLike, dtype: str = "float32",
                        overwrite: bool = False, block: int | None = None, corpus=None) -> CacheResult:
    """``build_cache`` of a JSONL of pairs (``data.load_jsonl``'s format) with an encoder that only
    looks vectors up (``vectors:NAME``), without holding the texts: the file is read several
    times (hashes for the distinct contexts and duplicate ids; each text column for the
    fingerprint, then again to be written with its vectors, a block at a time). Memory is a few
    hashes and indices a pair, whatever the text lengths; the cache is the one ``build_cache``
    writes from the same data (same fingerprint, vectors and attributes). ``corpus``: a
    ``corpus.CorpusFile`` whose vectors the encoder looks up too, stored in the corpus section."""
    from .data import JSONL_META, DataError, content_sha256, iter_jsonl

    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    block = block or 8192  # rows looked up and written at a time: (block, dim) float32 arrays, a few of them
    if dtype not in ("float32", "float16"):
        raise CacheError(f"dtype must be float32 or float16, not {dtype!r}")
    c_hash, i_hash, m_hash, q_buf, i_buf = [], [], [], [], []
    for _, context, qid, _ in iter_jsonl(data):
        q_buf.append(context)
        i_buf.append(qid)
        if len(q_buf) == block:
            c_hash.append(as_keys(text_hashes(q_buf)))
            i_hash.append(as_keys(text_hashes(i_buf)))
            if corpus is not None:  # the contexts as a corpus text is matched with them
                m_hash.append(np.unique(match_keys(q_buf)))
            q_buf, i_buf = [], []
    c_hash.append(as_keys(text_hashes(q_buf)))
    i_hash.append(as_keys(text_hashes(i_buf)))
    if corpus is not None:
        m_hash.append(np.unique(match_keys(q_buf)))
    c_hash, i_hash = np.concatenate(c_hash), np.concatenate(i_hash)
    n = len(c_hash)
    if n == 0:
        raise DataError(f"{data}: no question -> context pairs found")
    ids, counts = np.unique(i_hash, return_counts=True)
    if (counts > 1).any():
        twice = set(ids[counts > 1].tolist())
        dup = next(qid for _, _, qid, _ in iter_jsonl(data) if tuple(as_keys(text_hashes([qid]))[0].tolist()) in twice)
        raise DataError(f"{data}: duplicate query id {dup!r}")
    del i_hash, ids, counts
    _, first, inverse = np.unique(c_hash, return_index=True, return_inverse=True)
    plan = corpus.plan(np.concatenate(m_hash)) if corpus is not None else None
    del m_hash
    del c_hash
    order = np.argsort(first, kind="stable")  # distinct contexts in order of first appearance
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    q2c = rank[inverse.reshape(-1)]
    is_first = np.zeros(n, bool)
    is_first[first] = True
    del first, inverse, order, rank
    columns = {"queries/text": _Lines(data, 0, n), "queries/id": _Lines(data, 2, n),
               "queries/group": _Lines(data, 3, n), "contexts/text": _Lines(data, 1, int(is_first.sum()), is_first)}
    fingerprint = content_sha256(*columns.values(), q2c)
    meta = dict(JSONL_META, source=str(data))
    info = encoder.describe()
    want = job_identity(info, meta, fingerprint, dtype, {"corpus": plan.fingerprint} if plan is not None else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_output(out)
    try:
        done, parts = start_job(out, want, parts_job(want, layout="streamed"), overwrite)
        if done:
            return CacheResult(out, "already complete", time.perf_counter() - t0, 0)
        try:
            with CacheWriter(out, n, len(columns["contexts/text"]), encoder.dim, dtype, sections=corpus_sizes(plan)) as w:
                for key, col in columns.items():
                    role = {"queries/text": "query", "contexts/text": "context"}.get(key)
                    a = 0
                    for texts in col.blocks(block):
                        w.write(key, a, texts)
                        if role:
                            w.write(key.split("/")[0] + "/vectors", a, encoder.encode(texts, role=role))
                        a += len(texts)
                w.write("queries/context", 0, q2c)
                if plan is not None:
                    write_corpus(w.write, plan, lambda k, texts: encoder.encode(texts, role="context"), block)
                w.finish(cache_attrs(meta, info, fingerprint, time.perf_counter() - t0))
                if plan is not None:
                    seal_corpus(w.f, plan)
        except BaseException:  # nothing is kept to resume from: the folder would only block the next run
            shutil.rmtree(parts, ignore_errors=True)
            raise
        shutil.rmtree(parts, ignore_errors=True)
        return CacheResult(out, "written", time.perf_counter() - t0,
                           n + len(columns["contexts/text"]) + (len(plan) if plan is not None else 0))
    except OSError as e:
        raise CacheError(f"{out}: cannot write {e.filename or ''} ({e.strerror or e})"
                         + ("; the existing cache file is untouched" if out.exists() else "")) from e
    finally:
        lock.release()
