"""Hashes of texts: content checksums of columns, and short keys for set operations.

Usage::

    from projhead.hashing import columns_sha256, text_hashes
    columns_sha256([queries, ids], [q2c])      # sha256 hex of text columns, then integer arrays
    text_hashes(texts)                         # (N, 2) uint64: 128 bits per text
    text_hashes(texts, prefix="query\\0")       # the same of prefix + text

Both read their texts once, in order, from any iterable (a list, or a column of the cache
file read in chunks), so millions of texts are hashed without holding them.
"""
from __future__ import annotations

import hashlib
from itertools import islice

import numpy as np


def columns_sha256(texts=(), arrays=()) -> str:
    """sha256 over text columns (each length-prefixed, so no two layouts collide), then over
    integer arrays (as little-endian int64). The cache's fingerprint."""
    h = hashlib.sha256()
    for column in texts:
        h.update(len(column).to_bytes(8, "little"))
        for t in column:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    for a in arrays:
        h.update(np.asarray(a).astype("<i8").tobytes())
    return h.hexdigest()


def text_hashes(texts, prefix: str = "", chunk: int = 65536) -> np.ndarray:
    """(N, 2) uint64: the 128-bit blake2b of ``prefix + text`` for each text, a chunk of texts
    at a time. Collisions are beyond reach at any data size; nothing here is stored."""
    head = prefix.encode("utf-8")
    it, parts = iter(texts), []
    while True:
        block = b"".join(hashlib.blake2b(head + t.encode("utf-8"), digest_size=16).digest()
                         for t in islice(it, chunk))
        if not block:
            break
        parts.append(np.frombuffer(block, dtype="<u8").reshape(-1, 2))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)


def as_keys(hashes: np.ndarray) -> np.ndarray:
    """(N,) structured view of ``text_hashes`` output: one sortable key per text, for
    ``np.unique`` and friends."""
    return np.ascontiguousarray(hashes).view([("a", "<u8"), ("b", "<u8")]).reshape(-1)
