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
import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_path
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


class _ContextTable:
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


# ---------------------------------------------------------------------------------------
# Finding and reading files

OFFICIAL_URLS = {
    ("squad-v1.1", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
    ("squad-v1.1", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
    ("squad-v2.0", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v2.0.json",
    ("squad-v2.0", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    ("quac", "train"): "https://s3.amazonaws.com/my89public/quac/train_v0.2.json",
    ("quac", "dev"): "https://s3.amazonaws.com/my89public/quac/val_v0.2.json",
    ("quora", "train"): "http://qim.fs.quoracdn.net/quora_duplicate_questions.tsv",
    ("quora", "dev"): "http://qim.fs.quoracdn.net/quora_duplicate_questions.tsv",
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
    ("quora", "train"): ["quora_duplicate_questions.tsv", "quora/questions_sampled.csv.gz",
                         "questions_sampled.csv.gz"],
    ("quora", "dev"): ["quora_duplicate_questions.tsv", "quora/questions_sampled.csv.gz",
                       "questions_sampled.csv.gz"],
}

DATASETS = ("squad-v1.1", "squad-v2.0", "quac", "quora", "jsonl")


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
    try:
        with atomic_path(target) as tmp:
            urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        raise DataError(f"{dataset} {split}: not found in {where} and the download of {url} "
                        f"failed ({e}); pass --data or set PROJHEAD_DATA") from e
    return target


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
    return value


# ---------------------------------------------------------------------------------------
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
                starts = [x.get("answer_start") if isinstance(x.get("answer_start"), int) else None
                          for x in qa.get("answers", [])]
            except (KeyError, TypeError, AttributeError):
                raise DataError(f"{path}: {where}.qas[{q}] lacks 'id', 'question' or answer 'text'") from None
            if qa.get("is_impossible") or not answers:
                continue  # SQuAD 2.0 unanswerable: no gold context
            question = _text(question, path, f"{where}.qas[{q}].question")
            if granularity == "paragraph":
                table.add(question, context, qid, title)
                continue
            sent = answer_sentence(context, answers, spans, starts)
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


def iter_jsonl(path: Path, query_key: str = "query", context_key: str = "context", id_key: str = "id",
               group_key: str = "group"):
    """(query, context, id, group) of each line, read one line at a time: ``load_jsonl`` and the
    streaming import read through here, with the same errors naming the file and line."""
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
                for key in (query_key, context_key):
                    if key not in row:
                        raise DataError(f"{path}: line {n}: missing key {key!r}")
                query = _text(row[query_key], path, f"line {n} {query_key!r}")
                context = _text(row[context_key], path, f"line {n} {context_key!r}")
                yield query, context, str(row.get(id_key, n)), str(row.get(group_key, context))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


JSONL_META = {"dataset": "jsonl", "split": "", "granularity": "as-given"}


def load_jsonl(path: Path, query_key: str = "query", context_key: str = "context",
               id_key: str = "id", group_key: str = "group") -> Pairs:
    """One JSON object per line with at least ``query`` and ``context``; ``id`` and
    ``group`` are optional (default: the line number and the context)."""
    table = _ContextTable()
    for query, context, qid, group in iter_jsonl(path, query_key, context_key, id_key, group_key):
        table.add(query, context, qid, group)
    return table.build(dict(JSONL_META, source=str(path)), str(path))


QUORA_COLUMNS = ("qid1", "qid2", "question1", "question2", "is_duplicate")


def load_quora(path: Path, split: str = "dev", test_fraction: float = 0.2, seed: int = 0) -> Pairs:
    """Quora Question Pairs as duplicate-question retrieval: questions on both sides (train
    one shared tower). The duplicate pairs are split by pair with a fixed ``seed``;
    ``test_fraction`` of them form ``dev`` (the test split), and a training pair that shares
    a question with any test pair is dropped, so no test question is seen in training.

    ``train``: query = question1, gold context = question2 of each training pair.
    ``dev``: query = question1 of each test pair, gold = its question2, candidates = every
    distinct question of the file (non-duplicate rows too). A query's own text is in that
    corpus; evaluation never counts it as a candidate (``evaluate.self_matches``).
    Reads the official TSV or the CSV sample (same columns), plain or gzip."""
    import csv

    if split not in ("train", "dev"):
        raise DataError(f"quora: split must be 'train' or 'dev' (the test pairs), not {split!r}")
    opener = gzip.open if str(path).endswith(".gz") else open
    delimiter = "\t" if ".tsv" in Path(path).name else ","
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in QUORA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a Quora question-pairs file: missing column(s) {', '.join(missing)} "
                                f"(header: {reader.fieldnames})")
            for n, row in enumerate(reader, 2):
                flag = (row.get("is_duplicate") or "").strip()
                if flag not in ("0", "1"):
                    raise DataError(f"{path}: line {n}: is_duplicate must be 0 or 1, not {flag!r:.40}")
                q1, q2 = (row["question1"] or "").strip(), (row["question2"] or "").strip()
                rows.append((row.get("id") or str(n), q1, q2, flag == "1"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (EOFError, gzip.BadGzipFile, csv.Error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    # a duplicate pair whose two questions are the same text has no other question to find
    dup = [(pid, q1, q2) for pid, q1, q2, is_dup in rows if is_dup and q1 and q2 and q1 != q2]
    if not dup:
        raise DataError(f"{path}: no duplicate pairs (is_duplicate = 1 with two different questions)")
    order = np.random.default_rng(seed).permutation(len(dup))
    n_test = max(1, int(round(test_fraction * len(dup))))
    test = [dup[i] for i in sorted(order[:n_test])]
    table = _ContextTable()
    if split == "dev":
        for pid, q1, q2 in test:
            table.add(q1, q2, pid, pid)
        for _, q1, q2, _ in rows:  # the rest of the corpus: every question is a candidate
            for q in (q1, q2):
                if q:
                    table.add_context(q)
    else:
        held = {q for _, q1, q2 in test for q in (q1, q2)}
        for i in sorted(order[n_test:]):
            pid, q1, q2 = dup[i]
            if q1 not in held and q2 not in held:
                table.add(q1, q2, pid, pid)
    meta = {"dataset": "quora", "split": split, "granularity": "question", "source": str(path),
            "test_fraction": test_fraction, "split_seed": seed, "duplicate_pairs": len(dup), "test_pairs": n_test}
    return table.build(meta, str(path))


def load_pairs(dataset: str, split: str = "dev", granularity: str = "sentence",
               data: str | os.PathLike | None = None, quac_history: int = 0,
               download: bool = True) -> Pairs:
    """Load a dataset by name: ``squad-v1.1``, ``squad-v2.0``, ``quac``, ``quora`` or
    ``jsonl`` (``data`` is then the file). ``granularity`` applies to SQuAD and QuAC."""
    if dataset == "jsonl":
        if data is None:
            raise DataError("dataset 'jsonl' needs a file: pass --data FILE.jsonl")
        return load_jsonl(Path(data))
    path = resolve_data_file(dataset, split, data, download=download)
    if dataset.startswith("squad"):
        return load_squad(path, granularity, dataset=dataset, split=split)
    if dataset == "quac":
        return load_quac(path, history=quac_history, split=split, granularity=granularity)
    if dataset == "quora":
        return load_quora(path, split=split)
    raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
