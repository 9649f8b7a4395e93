import gzip
import json

import numpy as np
import pytest

from conftest import FIXTURES
from projhead.data import DataError, answer_sentence, load_jsonl, load_pairs, load_quac, load_squad, split_sentences


def test_squad_sentence_level_finds_the_answer_sentence():
    p = load_squad(FIXTURES / "squad-v1.1-tiny.json", "sentence")
    assert p.queries[0] == "In what country is Normandy located?"
    assert p.contexts[p.q2c[0]] == "They gave their name to Normandy, a region in France."
    assert p.contexts[p.q2c[1]] == "Rollo was their first leader."
    # two questions on one sentence: it is stored once
    assert p.q2c[0] == p.q2c[2]
    assert len(p.contexts) == 4 and len(p) == 5
    assert p.groups[:3] == ["Normans"] * 3


def test_squad_paragraph_level_dedups_paragraphs():
    p = load_squad(FIXTURES / "squad-v1.1-tiny.json", "paragraph")
    assert len(p.contexts) == 2
    assert list(p.q2c) == [0, 0, 0, 1, 1]


def test_squad_v2_skips_unanswerable():
    p = load_squad(FIXTURES / "squad-v2.0-tiny.json", "sentence")
    assert "n4" not in p.query_ids and len(p) == 5


def test_answer_sentence_votes_and_spans():
    ctx = "Paris is big. Paris is old. The Seine runs through it."
    spans = split_sentences(ctx)
    assert len(spans) == 3
    # 'old' appears only in the second sentence; the majority of answers wins
    assert answer_sentence(ctx, ["Paris is old", "old", "Paris"], spans) == "Paris is old."
    # an answer that crosses a sentence boundary gets both sentences
    assert answer_sentence(ctx, ["old. The Seine"], spans) == "Paris is old. The Seine runs through it."
    assert answer_sentence(ctx, ["London"], spans) == ""


def test_quac_history_and_cannotanswer():
    p = load_quac(FIXTURES / "quac-tiny.json", history=0)
    assert p.query_ids == ["C_1_q#0", "C_1_q#1", "C_1_q#3"]  # CANNOTANSWER turn has no gold context
    assert not p.contexts[0].endswith("CANNOTANSWER")
    h = load_quac(FIXTURES / "quac-tiny.json", history=1)
    assert h.queries[1] == "What did she write? the first algorithm Who did she work with?"
    assert h.queries[2] == "Did she have children? no answer When did she die?"
    s = load_quac(FIXTURES / "quac-tiny.json", granularity="sentence")
    assert s.contexts[s.q2c[2]] == "She died in 1852."


def test_jsonl():
    p = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    assert len(p) == 3 and len(p.contexts) == 2 and list(p.q2c) == [0, 1, 0]


def test_a_null_or_empty_group_or_id_is_as_if_not_given(tmp_path):
    """Not one group "None" (which would make every such row one document)."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"query": "a", "context": "x", "group": null, "id": null}\n'
                 '{"query": "b", "context": "y", "group": "", "id": " "}\n{"query": "c", "context": "z"}\n')
    p = load_jsonl(f)
    assert p.groups == ["x", "y", "z"] and p.query_ids == ["1", "2", "3"]


def test_texts_a_cache_cannot_hold_are_refused_before_encoding():
    from projhead.pairs import Pairs

    for bad, said in (("a\x00b", "NUL character"), ("a\ud800", "unpaired surrogate")):
        with pytest.raises(DataError, match=f"my.jsonl: contexts\\[0\\] holds an? {said}"):
            Pairs(["q"], ["1"], ["g"], [bad], [0], {"source": "my.jsonl"})


def test_fingerprint_changes_with_any_text():
    a = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    b = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    assert a.fingerprint() == b.fingerprint()
    b.queries[1] = b.queries[1] + " "
    assert a.fingerprint() != b.fingerprint()
    c = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    c.groups[0] = c.groups[0] + " (another document)"
    assert a.fingerprint() != c.fingerprint()  # groups are data: they decide splits and batches


def _squad_file(tmp_path, answers):
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{
        "context": "The cat sat on a mat. Later the cat slept.",
        "qas": [{"id": "q1", "question": "Which animal slept?", "answers": answers}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    return tmp_path / "s.json"


def test_answer_start_places_an_answer_that_occurs_twice(tmp_path):
    # "cat" is in both sentences; the official files say where (offset 32), the text alone cannot
    p = load_squad(_squad_file(tmp_path, [{"text": "cat", "answer_start": 32}]), "sentence")
    assert p.contexts[p.q2c[0]] == "Later the cat slept."
    # without an offset (the shared rebuilt files), the first occurrence
    p = load_squad(_squad_file(tmp_path, [{"text": "cat"}]), "sentence")
    assert p.contexts[p.q2c[0]] == "The cat sat on a mat."
    # an offset that does not point at the text falls back to the text search
    p = load_squad(_squad_file(tmp_path, [{"text": "cat", "answer_start": 2}]), "sentence")
    assert p.contexts[p.q2c[0]] == "The cat sat on a mat."


def test_files_with_a_byte_order_mark_are_read(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"query": "q", "context": "c"}\n')
    assert load_jsonl(tmp_path / "bom.jsonl").queries == ["q"]
    _squad_file(tmp_path, [{"text": "cat"}])
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "s.json").read_bytes())
    assert len(load_squad(tmp_path / "bom.json", "paragraph")) == 1


def test_quora_shared_sample_splits_by_pair_and_keeps_test_questions_out(data_dir):
    train = load_pairs("quora", "train", data=data_dir)
    test = load_pairs("quora", "dev", data=data_dir)
    assert 3500 < test.meta["duplicate_pairs"] <= 3564  # the sample's duplicates, less any pair of one text twice
    test_questions = set(test.queries) | {test.contexts[i] for i in test.q2c}
    assert len(test) == test.meta["test_pairs"] == round(0.2 * test.meta["duplicate_pairs"])
    assert not test_questions & (set(train.queries) | set(train.contexts))  # no test question is trained on
    assert len(test.contexts) > 19000  # every question of the sample is a candidate
    assert all(q != test.contexts[c] for q, c in zip(test.queries, test.q2c))
    assert load_pairs("quora", "dev", data=data_dir).fingerprint() == test.fingerprint()  # a fixed split


@pytest.mark.parametrize("content, message", [
    ("id,qid1,qid2,question1,question2\n1,1,2,a,b\n", r"missing column\(s\) is_duplicate"),
    ("id,qid1,qid2,question1,question2,is_duplicate\n1,1,2,a,b,yes\n", "line 2: is_duplicate must be 0 or 1"),
    ("id,qid1,qid2,question1,question2,is_duplicate\n1,1,2,a,b,0\n", "no duplicate pairs"),
])
def test_quora_bad_input_names_file_and_problem(tmp_path, content, message):
    from projhead.data import load_quora

    (tmp_path / "q.csv").write_text(content)
    with pytest.raises(DataError, match=message) as e:
        load_quora(tmp_path / "q.csv")
    assert "q.csv" in str(e.value)


@pytest.mark.parametrize("content, message", [
    ('{"query": "a", "context": "b"}\n{"query": "a", ', "line 2: malformed JSON"),
    ('{"query": "a"}\n', "line 1: missing key 'context'"),
    ('{"query": "  ", "context": "b"}\n', "is empty"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('{"query": "a", "context": "b", "id": 1}\n{"query": "c", "context": "d", "id": 1}\n', "duplicate query id '1'"),
    ('', "no question -> context pairs"),
    ('{"query": "a\\u0000b", "context": "b"}\n', "line 1 'query' holds a NUL character"),
    ('{"query": "a", "context": "b\\ud800"}\n', "line 1 'context' holds an unpaired surrogate"),
])
def test_jsonl_bad_input_names_file_and_problem(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DataError) as e:
        load_jsonl(f)
    assert str(f) in str(e.value) and message in str(e.value)


def test_a_folder_given_as_the_jsonl_file(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: a folder, not a JSONL file"):
        load_jsonl(tmp_path)


def test_bad_squad_files(tmp_path):
    f = tmp_path / "dev-v1.1.json"
    f.write_text('{"data": [')
    with pytest.raises(DataError, match="malformed JSON"):
        load_pairs("squad-v1.1", "dev", data=f)
    own = tmp_path / "pairs.jsonl"  # the user's own pairs, --dataset left at SQuAD: say which loader reads them
    own.write_text('{"query": "q", "context": "c"}\n{"query": "r", "context": "d"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl: malformed JSON .*Extra data; a file of your own pairs .*--dataset jsonl"):
        load_pairs("squad-v1.1", "dev", data=own)
    f.write_bytes(b'{"data": "\xff\xfe"}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_pairs("squad-v1.1", "dev", data=f)
    f.write_text('{"nodata": 1}')
    with pytest.raises(DataError, match="not SQuAD JSON"):
        load_pairs("squad-v1.1", "dev", data=f)
    g = tmp_path / "dev-v1.1.json.gz"
    g.write_bytes(gzip.compress(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "x"}]}]}).encode())[:-8])
    with pytest.raises(DataError, match="cannot read"):
        load_pairs("squad-v1.1", "dev", data=g)
    with pytest.raises(DataError, match="no such file"):
        load_pairs("squad-v1.1", "dev", data=tmp_path / "missing.json")
    with pytest.raises(DataError, match="unknown dataset"):
        load_pairs("squad-v3", "dev", data=f)


def test_folder_without_the_file_and_no_download(tmp_path):
    with pytest.raises(DataError, match="none of"):
        load_pairs("squad-v1.1", "dev", data=tmp_path, download=False)


def test_shared_squad_dev(data_dir):
    p = load_pairs("squad-v1.1", "dev", "sentence", data=data_dir)
    assert len(p) == 10570  # every dev question has its answer in its context
    assert p.meta["skipped_no_answer_in_context"] == 0
    assert 6000 < len(p.contexts) < 10570
    # the gold sentence contains at least one reference answer for every question
    raw = json.load(gzip.open(data_dir / "dev-v1.1.explorer.json.gz", "rt", encoding="utf-8"))
    answers = {qa["id"]: [a["text"] for a in qa["answers"]]
               for a in raw["data"] for para in a["paragraphs"] for qa in para["qas"]}
    for qid, ci in zip(p.query_ids, p.q2c):
        assert any(ans in p.contexts[ci] for ans in answers[qid]), qid
    par = load_pairs("squad-v1.1", "dev", "paragraph", data=data_dir)
    assert len(par.contexts) == 2067
    v2 = load_pairs("squad-v2.0", "dev", "paragraph", data=data_dir)
    assert len(v2) == 5928


def test_env_var_finds_the_folder(data_dir, monkeypatch):
    monkeypatch.setenv("PROJHEAD_DATA", str(data_dir))
    p = load_pairs("squad-v1.1", "dev", "paragraph", download=False)
    assert np.unique(p.q2c).size == 2067
