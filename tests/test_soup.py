"""Fold heads averaged into the saved head (k-fold selection's after_folds)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from projhead.cache import open_cache
from projhead.config import TrainError
from projhead.heads import Head, HeadConfig, load_head
from projhead.select import CANDIDATES, auto_train, group_folds, split_groups
from projhead.soup import average, fold_runs
from projhead.train import TrainConfig


def _random_head(kind, towers, seed, dim=8):
    torch.manual_seed(seed)
    h = Head(HeadConfig(in_dim=dim, kind=kind, towers=towers, init="random"))
    return h


def test_averaged_linear_heads_give_the_mean_of_their_outputs_before_normalising():
    heads = [_random_head("linear", "separate", s) for s in range(3)]
    avg = average(heads)
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = torch.stack([h.query(x) for h in heads]).mean(0)
        np.testing.assert_allclose(avg.query(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        want_c = torch.stack([h.context(x) for h in heads]).mean(0)
        np.testing.assert_allclose(avg.context(x).numpy(), want_c.numpy(), rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(heads[0].query.weight, h.query.weight) for h in heads[1:])  # the inputs left as they were


def test_heads_of_other_settings_are_refused():
    with pytest.raises(TrainError, match="cannot be averaged"):
        average([_random_head("linear", "query", 0), _random_head("residual", "query", 0)])
    with pytest.raises(TrainError, match="cannot be averaged"):  # the same tensors, other towers
        average([_random_head("linear", "shared", 0), _random_head("linear", "separate", 1)])
    with pytest.raises(TrainError, match="no heads"):
        average([])
    with pytest.raises(TrainError, match="not the identity"):
        average([_random_head("linear", "query", 0), _random_head("linear", "query", 1).reset_to_identity()])


def test_selection_saves_the_average_of_the_fold_heads(planted_cache, tmp_path):
    path = planted_cache(n_groups=40)  # a real gain: a head is kept
    fixed = {"kind": "linear", "towers": "query", "lr": 1e-2}
    cfg = TrainConfig(epochs=6, after_folds="average", gate=False)
    head, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "h", progress=False)
    assert log["decision"]["kept"] == "head" and "fold heads" in log["selection"]["after_folds"]
    sel = log["selection"]
    e = sel["candidates"][0]["best_epoch"]
    # the same fold heads again, by hand: the saved head is their mean, at alpha; the refit is another head
    cache = open_cache(path)
    folds = group_folds(split_groups(cache, need=5), 5, cfg.seed)
    _, hc, t = next(c for c in CANDIDATES if c[0] == "linear-query")
    tc = replace(cfg, **{**t, "lr": 1e-2}).sized(len(cache.q2c) - len(cache.q2c) // 5)
    tc = replace(tc, patience=tc.epochs + 1, batch_size=sel["candidates"][0]["batch_size"])
    runs = fold_runs(cache, HeadConfig(in_dim=cache.dim, encoder=cache.encoder, **hc), tc, folds, e)
    alpha = log["decision"]["alpha"]
    saved = load_head(tmp_path / "h")
    assert "Saved: the weights of the 5 fold heads at epoch" in (tmp_path / "h" / "README.md").read_text()
    want = average([r["head"] for r in runs]).interpolate(alpha)
    np.testing.assert_allclose(saved.encode_queries(cache.queries), want.encode_queries(cache.queries),
                               rtol=1e-4, atol=1e-5)
    refit, _ = auto_train(path, replace(cfg, after_folds="refit"), fixed=fixed, progress=False)
    assert not np.allclose(refit.encode_queries(cache.queries), want.encode_queries(cache.queries), atol=1e-4)


def test_an_identity_kept_is_not_called_averaged(planted_cache, tmp_path):
    path = planted_cache(n_groups=4, contexts_per_group=30)  # four documents: a gain inside them keeps the identity
    head, log = auto_train(path, TrainConfig(epochs=6, after_folds="average"), fixed={"kind": "linear", "towers": "query",
                                                                                     "lr": 1e-2},
                           out=tmp_path / "h", progress=False)
    assert log["selection"]["candidates"][0]["best_epoch"] > 0  # the fold heads were averaged, then not kept
    assert log["decision"]["kept"] == "identity" and "after_folds" not in log["selection"]
    assert "fold heads" not in (tmp_path / "h" / "README.md").read_text()


def test_after_folds_without_folds_is_said_not_used(planted_cache):
    _, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=2, after_folds="average"),
                        fixed={"kind": "linear", "towers": "query"}, progress=False, folds=0)
    assert log["selection"]["mode"] == "dev split"
    assert any(n.startswith("after_folds average") for n in log["selection"]["not_used"])


def test_refit_is_untouched_and_unknown_modes_refused(planted_cache):
    with pytest.raises(TrainError, match="after_folds"):
        TrainConfig(after_folds="mean")
    head, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=3), fixed={"kind": "linear", "towers": "query"},
                           progress=False)
    assert "after_folds" not in log["selection"]


def test_averaging_trains_no_refit_and_logs_the_fold_runs(planted_cache, tmp_path, monkeypatch):
    """With the fold heads averaged nothing is trained on every pair, and train_log.json is the
    fold runs' (mean loss and held-out metrics per epoch up to the epoch averaged)."""
    import json

    import projhead.select as S

    on_all = []
    real = S.fit
    monkeypatch.setattr(S, "fit", lambda cache, h, c, rows=None, **k: (on_all.append(len(rows[1]) == 0), real(
        cache, h, c, rows=rows, **k))[1])
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6, after_folds="average", gate=False),
                           fixed={"kind": "linear", "towers": "query", "lr": 1e-2}, out=tmp_path / "h", progress=False)
    e = log["selection"]["candidates"][0]["best_epoch"]
    assert log["decision"]["kept"] == "head" and e > 0 and not any(on_all)  # the folds' runs only
    saved = json.loads((tmp_path / "h" / "train_log.json").read_text())
    assert saved["best_epoch"] == e and len(saved["epochs"]) == e and "5 fold runs" in saved["averaged"]
    assert saved["epochs"][-1]["dev"]["mrr10"] > saved["frozen_dev"]["mrr10"]
    assert json.loads((tmp_path / "h" / "config.json").read_text())["best_epoch"] == e


def test_averaged_bm25_aware_heads_record_their_folds_mean_share(planted_cache):
    """Trained beside BM25 without --hybrid, each fold takes its BM25 share on its own pairs: the
    averaged head records their mean."""
    from projhead.fusion import DEFAULT_WEIGHT
    from projhead.lexical import bm25_share

    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6, after_folds="average", gate=False),
                           fixed={"kind": "linear", "towers": "query", "lr": 1e-2, "bm25_aware": True}, progress=False)
    assert log["decision"]["kept"] == "head"
    cache = open_cache(path)
    folds = group_folds(split_groups(cache, need=5), 5, 0)
    shares = [bm25_share(cache.queries[np.setdiff1d(np.arange(len(cache.q2c)), f)], cache.contexts[:], DEFAULT_WEIGHT, 0)
              for f in folds]
    assert head.info["training"]["loss_settings"]["bm25_weight"] == pytest.approx(np.mean(shares), rel=1e-9)
