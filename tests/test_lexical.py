"""BM25 as sparse matrices (lexical.py), BM25-aware training and hybrid model selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from projhead.fusion import BM25Index, BM25Settings, fuse
from projhead.lexical import Lexical, training_bm25

WORDS = [f"term{i}x" for i in range(400)]


def _texts(n, k, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, k)) for _ in range(n)]


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire"])
def test_sparse_product_equals_bm25s_scores(method):
    texts = _texts(60, 12, 0)
    queries = _texts(25, 4, 1) + ["term1x term1x term2x", "the of and", "unknownword"]  # repeats, stopwords, unseen
    s = BM25Settings(method=method)
    lex = Lexical.build(texts, s)
    got = lex.scores(lex.counts(queries)).toarray()
    want = BM25Index(texts, s).scores(queries)
    assert got.shape == want.shape == (len(queries), len(texts))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).sum() > 0


def test_query_statistics_are_over_every_text():
    texts, queries = _texts(50, 10, 2), _texts(20, 3, 3)
    lex = Lexical.build(texts)
    C = lex.counts(queries)
    full = BM25Index(texts).scores(queries)
    np.testing.assert_allclose(lex.stats(C), np.stack([full.mean(1), full.std(1)], 1), rtol=1e-4, atol=1e-5)


def _word_cache(tmp_path, name="w.h5", shared_words=True, n_groups=12, per_group=4, seed=0):
    """A real cache with word texts: each context a few words of its own; each query two
    of its context's words (BM25 finds it) or two words no context has (BM25 cannot)."""
    from projhead.cache import build_cache
    from projhead.data import Pairs

    from conftest import PlantedEncoder

    rng = np.random.default_rng(seed)
    own = rng.permutation(len(WORDS))
    contexts, queries, ids, groups, q2c = [], [], [], [], []
    for g in range(n_groups):
        for k in range(per_group):
            c = len(contexts)
            words = [WORDS[i] for i in own[3 * c:3 * c + 3]]
            contexts.append(" ".join(words))
            for j in range(2):
                queries.append(f"{words[j]} {words[2]}" if shared_words else f"zz{c}q{j}a zz{c}q{j}b")
                ids.append(f"q{c}-{j}")
                groups.append(f"article {g}")
                q2c.append(c)
    pairs = Pairs(queries, ids, groups, contexts, np.array(q2c), {"dataset": "words", "split": "train",
                                                                  "granularity": "sentence"})
    path = tmp_path / name
    build_cache(pairs, PlantedEncoder(pairs, dim=16, rotate=1.0, noise=0.3), path, progress=False)
    return path


def test_training_block_is_z_scored_bm25_and_is_stored_once(tmp_path):
    from projhead.cache import open_cache

    path = _word_cache(tmp_path)
    cache = open_cache(path)
    said = []
    tb = training_bm25(cache, say=said.append)
    assert "stored in" in said[0]
    rows, cols = np.array([0, 5, 17]), np.array([3, 0, 8, 8, 20])
    full = BM25Index(cache.context_texts).scores([cache.query_texts[i] for i in rows])
    z = (full - full.mean(1, keepdims=True)) / full.std(1, keepdims=True)
    np.testing.assert_allclose(tb.block(rows, cols), z[:, cols], rtol=1e-4, atol=1e-4)
    again = open_cache(path)
    assert "bm25" in again.sections
    said2 = []
    tb2 = training_bm25(again, say=said2.append)
    assert said2 == []  # read from the section, nothing computed
    np.testing.assert_array_equal(tb2.block(rows, cols), tb.block(rows, cols))
    other = training_bm25(open_cache(path), BM25Settings(k1=0.9), store=False, say=said2.append)
    assert len(said2) == 1 and "stored" not in said2[0] and other.lex.settings.k1 == 0.9  # made again, not stored


def test_a_subset_in_memory_never_writes_its_bm25_into_the_file(tmp_path):
    from projhead.cache import open_cache

    path = _word_cache(tmp_path)
    sub = open_cache(path).subset(np.arange(20))
    tb = training_bm25(sub)
    assert tb.C.shape[0] == 20
    assert "bm25" not in open_cache(path).sections


def test_bm25_aware_clip_adds_the_block_to_each_cosine():
    from projhead.losses import ClipLoss, LossError

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    c = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    lex = torch.randn(6, 6)
    loss = ClipLoss(init_temperature=0.1, bm25_weight=0.05)
    out = loss(q, c, lexical=lex)
    logits = 10.0 * (q @ c.T + 0.05 * lex)
    labels = torch.arange(6)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out, want, atol=1e-5)
    assert not torch.allclose(out, ClipLoss(init_temperature=0.1)(q, c), atol=1e-3)
    with pytest.raises(LossError, match="both or neither"):
        ClipLoss()(q, c, lexical=lex)
    with pytest.raises(LossError, match="both or neither"):
        ClipLoss(bm25_weight=1.0)(q, c)


def test_the_bm25_share_ranks_as_the_fusion_does():
    from projhead.lexical import bm25_share

    rng = np.random.default_rng(0)
    Q, C = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    Qn, Cn = Q / np.linalg.norm(Q, axis=1, keepdims=True), C / np.linalg.norm(C, axis=1, keepdims=True)
    cos = Qn @ Cn.T
    sigma = cos.std(1).mean()
    assert bm25_share(Q, C, 0.8) == pytest.approx(0.25 * sigma, rel=1e-5)
    assert bm25_share(Q, C, 1.0) == 0.0
    # with every query's cosines of one spread, training's cos + lambda z ranks exactly as the fusion
    cos = cos / cos.std(1, keepdims=True) * sigma
    z = rng.normal(size=cos.shape)
    lam = 0.25 * sigma
    fused = fuse(cos, z, weight=0.8)
    np.testing.assert_array_equal(np.argsort(-fused, 1), np.argsort(-(cos + lam * (z - z.mean(1, keepdims=True))
                                                                        / z.std(1, keepdims=True)), 1))
    with pytest.raises(ValueError):
        bm25_share(Q, C, 0.0)


def test_only_the_clip_loss_trains_beside_bm25():
    from projhead.config import TrainConfig, TrainError
    from projhead.train import make_loss

    assert make_loss(TrainConfig(bm25_aware=True, loss_settings={"bm25_weight": 0.02})).bm25_weight == 0.02
    with pytest.raises(TrainError, match="clip loss"):
        make_loss(TrainConfig(loss="samtone", bm25_aware=True, loss_settings={"bm25_weight": 0.02}))
    with pytest.raises(TrainError, match="BM25 share"):
        make_loss(TrainConfig(bm25_aware=True))
    with pytest.raises(TrainError, match="--stream"):
        TrainConfig(hybrid=True, stream=True)


def test_bm25_aware_batches_carry_the_block_of_every_candidate(tmp_path):
    from projhead.batches import MemorySource
    from projhead.cache import open_cache
    from projhead.config import TrainConfig

    cache = open_cache(_word_cache(tmp_path))
    src = MemorySource(cache, TrainConfig(bm25_aware=True, batch_size=16, batching="random").sized(len(cache.q2c)))
    batch = next(src.epoch(np.random.default_rng(0)))
    assert batch.lexical.shape == (16, 16) and np.isfinite(batch.lexical.numpy()).all()
    # the diagonal is each query with its own context: the words they share make it the row's highest
    lex = batch.lexical.numpy()
    assert (np.diag(lex) >= lex.max(1) - 1e-5).all() and (np.diag(lex) > np.median(lex, 1)).all()


def test_hybrid_held_out_ranks_equal_a_plain_fused_ranking(tmp_path):
    from projhead.batches import held_out
    from projhead.cache import open_cache
    from projhead.config import TrainConfig
    from projhead.metrics import gold_ranks

    cache = open_cache(_word_cache(tmp_path))
    rows = np.arange(0, 96, 3)
    dev = held_out(cache, rows, TrainConfig(hybrid=True, fusion_weight=0.6))
    dense = cache.queries[rows] @ cache.contexts.T
    bm25 = BM25Index(cache.context_texts).scores([cache.query_texts[i] for i in rows])
    want = gold_ranks(fuse(dense, bm25, weight=0.6), cache.q2c[rows])
    np.testing.assert_array_equal(dev.ranks(None), want)
    assert not np.array_equal(dev.ranks(None), held_out(cache, rows).ranks(None))


def test_hybrid_selection_keeps_the_identity_where_bm25_already_answers(tmp_path):
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    head, log = auto_train(_word_cache(tmp_path), TrainConfig(epochs=4, hybrid=True), out=tmp_path / "h",
                           fixed={"kind": "linear", "towers": "query", "lr": 1e-3}, progress=False)
    assert "Chosen for use fused with BM25" in (tmp_path / "h" / "README.md").read_text()
    sel = log["selection"]
    assert [c["name"] for c in sel["candidates"]] == ["linear-query", "linear-query+bm25"]
    assert 0 <= sel["hybrid"]["fusion_weight"] <= 1
    assert head.config.passthrough  # fused with BM25 every query is found already: nothing to gain


def test_hybrid_selection_keeps_a_head_where_bm25_cannot_help(tmp_path):
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    path = _word_cache(tmp_path, shared_words=False, n_groups=30)
    head, log = auto_train(path, TrainConfig(epochs=8, hybrid=True),
                           fixed={"kind": "residual", "towers": "separate", "lr": 5e-4}, progress=False)
    assert not head.config.passthrough and log["selection"]["dev_gain"]["low"] > 0
    assert log["selection"]["hybrid"]["fusion_weight"] > 0  # BM25 matches nothing: any dense share ranks as dense


def test_cli_refuses_hybrid_without_model_selection_and_info_lists_the_section(tmp_path, capsys):
    from projhead.cache import open_cache
    from projhead.cli import main

    path = _word_cache(tmp_path)
    assert main(["train", str(path), "--out", str(tmp_path / "h"), "--hybrid", "--no-auto"]) != 0
    assert "drop --no-auto" in capsys.readouterr().err
    training_bm25(open_cache(path))
    assert main(["info", str(path)]) == 0
    assert "section      bm25 (n_terms" in capsys.readouterr().out


def test_hybrid_k_fold_records_one_bm25_share_and_never_saves_a_dense_share_of_0(tmp_path):
    import json

    from projhead.config import TrainConfig
    from projhead.select import auto_train

    path = _word_cache(tmp_path, shared_words=False, n_groups=30)
    head, log = auto_train(path, TrainConfig(epochs=6, hybrid=True), out=tmp_path / "h",
                           fixed={"kind": "linear", "towers": "query", "lr": 1e-3}, progress=False)
    lam = log["selection"]["hybrid"]["bm25_share"]
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    if log["selection"]["chosen"].endswith("+bm25"):
        assert cfg["training"]["loss_settings"]["bm25_weight"] == lam
    assert head.fusion.weight > 0 and head.fusion.frozen_weight > 0  # BM25 matches nothing: a share of 0 ties
    assert head.fusion.weight == head.fusion.frozen_weight == log["selection"]["hybrid"]["fusion_weight"]


@pytest.mark.parametrize("folds", [0, 5])
def test_hybrid_saves_the_head_at_the_weight_it_was_decided_at(tmp_path, folds):
    """--hybrid chooses and decides at one dense share (set here); the head, and the frozen
    encoder beside it, are saved with that share, not one chosen again afterwards."""
    from projhead.config import TrainConfig
    from projhead.fusion import eval_fusion
    from projhead.select import auto_train

    path = _word_cache(tmp_path, shared_words=False, n_groups=30)
    head, log = auto_train(path, TrainConfig(epochs=6, hybrid=True, fusion_weight=0.5), out=tmp_path / "h",
                           fixed={"kind": "residual", "towers": "separate", "lr": 5e-4}, progress=False, folds=folds)
    assert log["selection"]["hybrid"]["fusion_weight"] == 0.5 and not head.config.passthrough
    assert head.fusion.weight == head.fusion.frozen_weight == 0.5 and head.fusion.chosen["grid"] == [0.5]
    assert "Weight: the one its held-out queries were ranked at" in (tmp_path / "h" / "README.md").read_text()
    said = []
    eval_fusion(head, None, None, say=said.append)
    assert "dense weight 0.5 (the one held-out training queries were ranked at in hybrid selection)" in said[0]


def test_hybrid_settings_are_refused_before_anything_is_trained(tmp_path):
    from projhead.config import TrainConfig, TrainError
    from projhead.select import auto_train

    path = _word_cache(tmp_path)
    for cfg in (TrainConfig(hybrid=True, loss="siglip"), TrainConfig(hybrid=True, fusion_weight=0.0),
                TrainConfig(hybrid=True, loss_settings={"chunk_size": 8}),
                TrainConfig(hybrid=True, loss_settings={"bm25_weight": 0.1})):
        with pytest.raises(TrainError, match="hybrid selection"):
            auto_train(path, cfg, progress=False)


def test_held_out_bm25_follows_the_distractors_attached(tmp_path):
    from projhead.cache import open_cache
    from projhead.lexical import held_out_bm25

    cache = open_cache(_word_cache(tmp_path))
    texts = list(cache.context_texts)
    plain = held_out_bm25(cache, [0, 1]).toarray()
    np.testing.assert_allclose(plain, BM25Index(texts).scores(cache.query_texts[:2]), rtol=1e-5, atol=1e-5)
    cache.attach_distractors(np.zeros((2, cache.dim), np.float32), ["term1x term2x", "term3x"])
    a = held_out_bm25(cache, [0, 1]).toarray()
    cache.attach_distractors(np.zeros((2, cache.dim), np.float32), [cache.query_texts[0], cache.query_texts[1]])
    b = held_out_bm25(cache, [0, 1]).toarray()
    want = BM25Index(texts + [cache.query_texts[0], cache.query_texts[1]]).scores(cache.query_texts[:2])
    np.testing.assert_allclose(b, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, b)


def test_a_read_only_cache_is_left_as_it_is(tmp_path):
    import os

    from projhead.cache import open_cache

    path = _word_cache(tmp_path)
    before = path.read_bytes()
    os.chmod(path, 0o444)
    said = []
    try:
        training_bm25(open_cache(path), say=said.append)
    finally:
        os.chmod(path, 0o644)
    assert path.read_bytes() == before and "stored" not in said[0]


def test_the_terms_are_in_the_same_order_in_every_process():
    """bm25s numbers terms in the order of a set, which varies with Python's hash seed: the
    terms (and so the stored bm25 section) are sorted, so every run writes the same."""
    import os
    import subprocess
    import sys

    code = ("from projhead.lexical import Lexical; l = Lexical.build(['the cat sat on the mat', "
            "'a dog ate my homework', 'cats and dogs']); print(l.terms, l.W.toarray().tolist())")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout for seed in (1, 2, 3)}
    assert len(out) == 1 and "['ate', 'cat', 'dog', 'homework', 'mat', 'my', 'sat']" in out.pop()
