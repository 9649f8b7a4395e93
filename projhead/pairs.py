"""The parts every loader shares: the :class:`Pairs` they return, the table that builds one,
file readers whose errors name the file (and line), sentence splitting and answer location,
and a reproducible held-out split by group.

Usage::

    from projhead.pairs import Pairs, PairTable, jsonl_objects, answer_sentence
    table = PairTable()
    for n, row in jsonl_objects(path):
        table.add(row["question"], row["passage"], str(n), row["title"])
    pairs = table.build({"dataset": "mine"}, str(path))
"""
from __future__ import annotations

import gzip
import zlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .hashing import columns_sha256


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass
class Pairs:
    """Query rows, distinct contexts and the query -> context index."""

    queries: list[str]  # one text per query row
    query_ids: list[str]  # stable id per query row (SQuAD id, QuAC turn id, JSONL line)
    groups: list[str]  # grouping key per query row (article title), for leak-free splits
    contexts: list[str]  # distinct context texts
    q2c: np.ndarray  # (Nq,) int64: context row of each query's gold context
    meta: dict = field(default_factory=dict)  # dataset, split, granularity, source

    def __post_init__(self):
        self.q2c = np.asarray(self.q2c, dtype=np.int64)
        n = len(self.queries)
        if not (len(self.query_ids) == len(self.groups) == len(self.q2c) == n):
            raise DataError("Pairs: queries, query_ids, groups and q2c differ in length")
        if n and (self.q2c.min() < 0 or self.q2c.max() >= len(self.contexts)):
            raise DataError("Pairs: q2c points outside the contexts")
        where = self.meta.get("source") or "Pairs"  # before any encoding: the cache must be able to hold every text
        for name in ("queries", "query_ids", "groups", "contexts"):
            for i, t in enumerate(getattr(self, name)):
                if isinstance(t, str):
                    storable(t, where, f"{name}[{i}]")

    def __len__(self) -> int:
        return len(self.queries)

    def fingerprint(self) -> str:
        """sha256 over every field (query texts, ids, groups, contexts and the index): two
        Pairs with the same fingerprint hold the same data in the same order. The cache uses
        it both as its identity (resume, refusals) and as the read-time check of its texts."""
        return content_sha256(self.queries, self.query_ids, self.groups, self.contexts, self.q2c)


def content_sha256(queries, query_ids, groups, contexts, q2c=None) -> str:
    """sha256 over text columns (each length-prefixed, so no two layouts collide) and, if
    given, the query -> context index (``hashing.columns_sha256``)."""
    return columns_sha256([queries, query_ids, groups, contexts], [] if q2c is None else [q2c])


class PairTable:
    """Builds the distinct-context list while loaders add pairs."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.contexts: list[str] = []
        self.queries: list[str] = []
        self.ids: list[str] = []
        self.groups: list[str] = []
        self.q2c: list[int] = []

    def add_context(self, context: str) -> int:
        """Row of ``context``, added if new (a corpus text that is nobody's gold is a candidate too)."""
        row = self.index.get(context)
        if row is None:
            row = self.index[context] = len(self.contexts)
            self.contexts.append(context)
        return row

    def add(self, query: str, context: str, qid: str, group: str) -> None:
        row = self.add_context(context)
        self.queries.append(query)
        self.ids.append(qid)
        self.groups.append(group)
        self.q2c.append(row)

    def build(self, meta: dict, source: str) -> Pairs:
        if not self.queries:
            raise DataError(f"{source}: no question -> context pairs found")
        seen: set[str] = set()
        for qid in self.ids:
            if qid in seen:
                raise DataError(f"{source}: duplicate query id {qid!r}")
            seen.add(qid)
        return Pairs(self.queries, self.ids, self.groups, self.contexts, np.array(self.q2c), meta)


def read_json(path: Path):
    """JSON from a plain or gzip file, with errors that name the file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:  # utf-8-sig: files saved by spreadsheets and some editors start with a byte-order mark
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _text(value, path: Path, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: {what} is not a string: {value!r:.80}")
    if not value.strip():
        raise DataError(f"{path}: {what} is empty")
    return storable(value, path, what)


def storable(value: str, path, what: str) -> str:
    """``value``, refused when the cache cannot hold it as text: a NUL character (HDF5 strings
    end there) or an unpaired surrogate (not Unicode, so no UTF-8)."""
    if value.isascii() and "\x00" not in value:  # most texts: nothing more to look at
        return value
    if "\x00" in value:
        raise DataError(f"{path}: {what} holds a NUL character, which a cache cannot store: remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{path}: {what} holds an unpaired surrogate ({value[e.start]!r} at character {e.start}), "
                        "which is not Unicode text") from None
    return value


# Sentences

def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (BlingFire's sentence breaker)."""
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    spans = [(int(s), int(e)) for s, e in offsets if e > s]
    return spans or [(0, len(text))]


def answer_sentence(context: str, answers: list[str], spans: list[tuple[int, int]],
                    starts: list[int | None] | None = None) -> str:
    """The sentence that holds the answer. Each answer is placed at its ``answer_start``
    offset when the file gives one (the official files do) and the text is really there;
    otherwise at the first occurrence of its text in the context. The sentence that holds
    most of the reference answers wins (the first answer breaks ties). An answer that
    crosses a sentence boundary gets the sentences it covers, joined."""
    votes: dict[tuple[int, int], int] = {}
    order: dict[tuple[int, int], int] = {}
    for k, ans in enumerate(answers):
        start = starts[k] if starts is not None else None
        if start is None or context[start:start + len(ans)] != ans:
            start = context.find(ans)
        if start < 0:
            continue
        end = start + len(ans)
        first = next(i for i, (s, e) in enumerate(spans) if e > start or i == len(spans) - 1)
        last = first
        while last + 1 < len(spans) and spans[last][1] < end:
            last += 1
        key = (first, last)
        votes[key] = votes.get(key, 0) + 1
        order.setdefault(key, k)
    if not votes:
        return ""
    first, last = max(votes, key=lambda k: (votes[k], -order[k]))
    return context[spans[first][0]:spans[last][1]].strip()


def parquet_columns(path: Path, need=()) -> list[str]:
    """The column names of a Parquet file; a file that is not one, or lacks one of ``need``,
    is an error naming it."""
    return _parquet(path, need)[1]


def _parquet(path: Path, need):
    """(the opened ``pyarrow.parquet.ParquetFile``, its column names), checked as ``parquet_columns`` says."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:  # pyarrow raises several classes for a malformed file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(f"{path}: no {', '.join(map(repr, missing))} column (it has: {', '.join(names)})")
    return f, names


def parquet_objects(path: Path, columns: list[str], need=()):
    """(row number from 1, {column: value}) of each row of a Parquet file, read a batch at a
    time; only ``columns`` (those the file has) are read; ``need``: as ``parquet_columns``."""
    f, names = _parquet(path, need)
    try:
        n = 0
        for batch in f.iter_batches(columns=[c for c in columns if c in names], batch_size=8192):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except Exception as e:
        if isinstance(e, OSError) or type(e).__module__.startswith("pyarrow"):  # cut short, damaged
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        raise


def jsonl_objects(path: Path):
    """(line number, object) of each non-blank line of a JSONL file (plain or gzip), read one
    line at a time; a line that is not a JSON object is an error naming the file and line."""
    path = Path(path)
    opener = gzip.open if str(path).endswith(".gz") else open
    try:  # utf-8-sig: a byte-order mark (spreadsheet exports) is read, not taken for malformed JSON
        with opener(path, "rt", encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: malformed JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {n}: expected a JSON object")
                yield n, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a JSONL file") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def held_out_groups(groups: list[str], fraction: float = 0.2, seed: int = 0) -> set[str]:
    """A reproducible ``fraction`` of the distinct ``groups`` (at least one), drawn with
    ``seed`` from the groups in order of first appearance: the test side of a split by group,
    so no group (document) straddles train and test."""
    distinct = list(dict.fromkeys(groups))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = max(1, int(round(fraction * len(distinct))))
    return {distinct[i] for i in order[:n_test]}
