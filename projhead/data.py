"""Question -> context pairs from SQuAD, QuAC and JSONL files.

Usage::

    from projhead.data import load_pairs
    pairs = load_pairs("squad-v1.1", split="dev", granularity="sentence")
    pairs.queries[0], pairs.contexts[pairs.q2c[0]]

Every loader returns a :class:`Pairs`: one row per query, the *distinct* contexts, and the
index ``q2c`` from query row to context row. Contexts are deduplicated here, so the encoder
sees each context once even though SQuAD repeats a paragraph for about five questions.

Where the file comes from: an explicit path (``data=``), else ``$PROJHEAD_DATA`` (a folder
holding the files under their usual names), else the official download address (only for
users with internet; nothing is downloaded in tests).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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

    def __len__(self) -> int:
        return len(self.queries)

    def fingerprint(self) -> str:
        """sha256 over every text and the index: two Pairs with the same fingerprint hold
        the same data in the same order."""
        h = hashlib.sha256()
        for name, texts in (("q", self.queries), ("i", self.query_ids), ("c", self.contexts)):
            h.update(name.encode())
            for t in texts:
                b = t.encode("utf-8")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        h.update(self.q2c.astype("<i8").tobytes())
        return h.hexdigest()


class _ContextTable:
    """Builds the distinct-context list while loaders add pairs."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.contexts: list[str] = []
        self.queries: list[str] = []
        self.ids: list[str] = []
        self.groups: list[str] = []
        self.q2c: list[int] = []

    def add(self, query: str, context: str, qid: str, group: str) -> None:
        row = self.index.get(context)
        if row is None:
            row = self.index[context] = len(self.contexts)
            self.contexts.append(context)
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


# ---------------------------------------------------------------------------------------
# Finding and reading files

OFFICIAL_URLS = {
    ("squad-v1.1", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
    ("squad-v1.1", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
    ("squad-v2.0", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v2.0.json",
    ("squad-v2.0", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    ("quac", "train"): "https://s3.amazonaws.com/my89public/quac/train_v0.2.json",
    ("quac", "dev"): "https://s3.amazonaws.com/my89public/quac/val_v0.2.json",
}

# File names looked for inside a data folder, in order: the official names first, then the
# rebuilt `*.explorer.json.gz` files of the shared data folder.
_FILE_NAMES = {
    ("squad-v1.1", "train"): ["train-v1.1.json", "train-v1.1.json.gz", "train-v1.1.explorer.json.gz"],
    ("squad-v1.1", "dev"): ["dev-v1.1.json", "dev-v1.1.json.gz", "dev-v1.1.explorer.json.gz"],
    ("squad-v2.0", "train"): ["train-v2.0.json", "train-v2.0.json.gz", "train-v2.0.explorer.json.gz"],
    ("squad-v2.0", "dev"): ["dev-v2.0.json", "dev-v2.0.json.gz", "dev-v2.0.explorer.json.gz"],
    ("quac", "train"): ["train_v0.2.json", "train_v0.2.json.gz"],
    ("quac", "dev"): ["val_v0.2.json", "val_v0.2.json.gz"],
}

DATASETS = ("squad-v1.1", "squad-v2.0", "quac", "jsonl")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROJHEAD_HOME", Path.home() / ".cache" / "projhead"))


def resolve_data_file(dataset: str, split: str, data: str | os.PathLike | None = None,
                      download: bool = True) -> Path:
    """Find the file for (dataset, split): ``data`` may be a file or a folder; without it,
    ``$PROJHEAD_DATA`` is searched, then the official file is downloaded (if allowed)."""
    key = (dataset, split)
    if key not in _FILE_NAMES:
        raise DataError(f"unknown dataset/split {dataset!r}/{split!r}; datasets: {', '.join(DATASETS)}; "
                        "splits: train, dev")
    candidates = []
    if data is not None:
        p = Path(data)
        if p.is_file():
            return p
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        candidates.append(p)
    elif os.environ.get("PROJHEAD_DATA"):
        candidates.append(Path(os.environ["PROJHEAD_DATA"]))
    for folder in candidates:
        for name in _FILE_NAMES[key]:
            if (folder / name).is_file():
                return folder / name
    where = ", ".join(str(c) for c in candidates) or "(no --data and no PROJHEAD_DATA)"
    if not download:
        raise DataError(f"{dataset} {split}: none of {_FILE_NAMES[key]} found in {where}")
    url = OFFICIAL_URLS[key]
    target = default_cache_dir() / "data" / url.rsplit("/", 1)[1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        raise DataError(f"{dataset} {split}: not found in {where} and the download of {url} "
                        f"failed ({e}); pass --data or set PROJHEAD_DATA") from e
    os.replace(tmp, target)
    return target


def read_json(path: Path):
    """JSON from a plain or gzip file, with errors that name the file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
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
    return value


# ---------------------------------------------------------------------------------------
# Sentences

def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (BlingFire's sentence breaker)."""
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    spans = [(int(s), int(e)) for s, e in offsets if e > s]
    return spans or [(0, len(text))]


def answer_sentence(context: str, answers: list[str], spans: list[tuple[int, int]]) -> str:
    """The sentence that holds the answer. Without ``answer_start`` each answer text is
    located in the context; the sentence that holds most of the reference answers wins
    (first occurrence breaks ties). An answer that crosses a sentence boundary gets the
    sentences it covers, joined."""
    votes: dict[tuple[int, int], int] = {}
    order: dict[tuple[int, int], int] = {}
    for k, ans in enumerate(answers):
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


# ---------------------------------------------------------------------------------------
# Loaders

def _paragraphs(path: Path, kind: str, granularity: str):
    """Validated (title, where, context, qas) of a SQuAD-layout file (SQuAD and QuAC)."""
    if granularity not in ("sentence", "paragraph"):
        raise DataError(f"granularity must be 'sentence' or 'paragraph', not {granularity!r}")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not {kind} JSON (expected an object with a 'data' list)")
    for a, article in enumerate(doc["data"]):
        try:
            title = str(article.get("title", a))
            paragraphs = article["paragraphs"]
        except (AttributeError, KeyError, TypeError):
            raise DataError(f"{path}: data[{a}] has no 'paragraphs' list") from None
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            try:
                context, qas = para["context"], para["qas"]
            except (KeyError, TypeError):
                raise DataError(f"{path}: {where} lacks 'context' or 'qas'") from None
            yield title, where, _text(context, path, f"{where}.context"), qas


def load_squad(path: Path, granularity: str = "sentence", dataset: str = "squad", split: str = "") -> Pairs:
    """Answerable SQuAD questions. ``granularity``: ``sentence`` (the sentence holding the
    answer) or ``paragraph``."""
    table = _ContextTable()
    skipped = 0
    for title, where, context, qas in _paragraphs(path, "SQuAD", granularity):
        spans = split_sentences(context) if granularity == "sentence" else None
        for q, qa in enumerate(qas):
            try:
                qid, question = str(qa["id"]), qa["question"]
                answers = [x["text"] for x in qa.get("answers", [])]
            except (KeyError, TypeError):
                raise DataError(f"{path}: {where}.qas[{q}] lacks 'id', 'question' or answer 'text'") from None
            if qa.get("is_impossible") or not answers:
                continue  # SQuAD 2.0 unanswerable: no gold context
            question = _text(question, path, f"{where}.qas[{q}].question")
            if granularity == "paragraph":
                table.add(question, context, qid, title)
                continue
            sent = answer_sentence(context, answers, spans)
            if not sent:
                skipped += 1  # no answer text found in the context
                continue
            table.add(question, sent, qid, title)
    meta = {"dataset": dataset, "split": split, "granularity": granularity, "source": str(path),
            "skipped_no_answer_in_context": skipped}
    return table.build(meta, str(path))


def load_quac(path: Path, history: int = 0, split: str = "", granularity: str = "paragraph") -> Pairs:
    """QuAC v0.2 (SQuAD-like layout, one dialogue per paragraph). Context: the section text
    (``paragraph``) or the sentences that hold the answer span (``sentence``). ``history``: how
    many earlier turns (question + answer) of the dialogue are prepended to each question,
    since QuAC questions depend on them ("what did he do next?"). Unanswerable turns
    (answer ``CANNOTANSWER``) have no gold context and are left out as queries but still
    count as history."""
    table = _ContextTable()
    for title, where, context, qas in _paragraphs(path, "QuAC", granularity):
        # QuAC appends the sentinel "CANNOTANSWER" to every context: it is no content.
        context = re.sub(r"\s*CANNOTANSWER\s*$", "", context)
        spans = split_sentences(context) if granularity == "sentence" else None
        turns: list[str] = []
        for q, qa in enumerate(qas):
            try:
                qid, question = str(qa["id"]), qa["question"]
                answer = (qa.get("orig_answer") or (qa.get("answers") or [{}])[0]).get("text", "")
            except (KeyError, TypeError, AttributeError):
                raise DataError(f"{path}: {where}.qas[{q}] lacks 'id' or 'question'") from None
            question = _text(question, path, f"{where}.qas[{q}].question")
            text = " ".join(turns[-2 * history:] + [question]) if history else question
            answerable = bool(answer) and answer != "CANNOTANSWER"
            if answerable:
                gold = context if spans is None else answer_sentence(context, [answer], spans)
                if gold:
                    table.add(text, gold, qid, title)
            turns += [question, answer if answerable else "no answer"]
    meta = {"dataset": "quac", "split": split, "granularity": granularity, "history": history,
            "source": str(path)}
    return table.build(meta, str(path))


def load_jsonl(path: Path, query_key: str = "query", context_key: str = "context",
               id_key: str = "id", group_key: str = "group") -> Pairs:
    """One JSON object per line with at least ``query`` and ``context``; ``id`` and
    ``group`` are optional (default: the line number and the context)."""
    path = Path(path)
    table = _ContextTable()
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: malformed JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {n}: expected a JSON object")
                for key in (query_key, context_key):
                    if key not in row:
                        raise DataError(f"{path}: line {n}: missing key {key!r}")
                query = _text(row[query_key], path, f"line {n} {query_key!r}")
                context = _text(row[context_key], path, f"line {n} {context_key!r}")
                table.add(query, context, str(row.get(id_key, n)), str(row.get(group_key, context)))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    meta = {"dataset": "jsonl", "split": "", "granularity": "as-given", "source": str(path)}
    return table.build(meta, str(path))


def load_pairs(dataset: str, split: str = "dev", granularity: str = "sentence",
               data: str | os.PathLike | None = None, quac_history: int = 0,
               download: bool = True) -> Pairs:
    """Load a dataset by name: ``squad-v1.1``, ``squad-v2.0``, ``quac`` or ``jsonl``
    (``data`` is then the file)."""
    if dataset == "jsonl":
        if data is None:
            raise DataError("dataset 'jsonl' needs a file: pass --data FILE.jsonl")
        return load_jsonl(Path(data))
    path = resolve_data_file(dataset, split, data, download=download)
    if dataset.startswith("squad"):
        return load_squad(path, granularity, dataset=dataset, split=split)
    if dataset == "quac":
        return load_quac(path, history=quac_history, split=split, granularity=granularity)
    raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
