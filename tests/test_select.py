"""Model selection: candidates, folds, and the rule that keeps the identity on noise."""
import copy

import numpy as np
import pytest

from projhead.batches import held_out
from projhead.cache import open_cache
from projhead.heads import HeadConfig, load_head
from projhead.select import CV_BELOW, auto_train, candidates, group_folds
from projhead.soup import as_saved
from projhead.train import ALPHA, TrainConfig


def test_folds_keep_groups_whole_and_cover_every_row_once():
    groups = [f"g{i // 3}" for i in range(60)] + [f"big{i // 30}" for i in range(60)]
    folds = group_folds(groups, 5, seed=0)
    rows = np.concatenate(folds)
    assert sorted(rows.tolist()) == list(range(120))
    for f in folds:
        others = set(np.setdiff1d(rows, f).tolist())
        assert not {groups[i] for i in f} & {groups[i] for i in others}
    assert max(map(len, folds)) - min(map(len, folds)) <= 30  # balanced up to one group


def test_candidates_by_size_and_fixed_settings():
    small = [n for n, _, _ in candidates(1000)]
    assert small == ["linear-query", "linear-separate", "residual-query", "residual-separate"]
    assert [n for n, _, _ in candidates(CV_BELOW)] == ["linear-query", "residual-query", "residual-separate"]
    for n in (10, 1000, CV_BELOW, 10 * CV_BELOW):  # query-side heads at every size
        assert {"linear-query", "residual-query"} <= {name for name, _, _ in candidates(n)}
    fixed = candidates(1000, {"kind": "residual", "lr": 1e-4})
    assert {h.kind for _, h, _ in fixed} == {"residual"} and len(fixed) == 2  # the two residual tower choices
    assert all(t["lr"] == 1e-4 for _, _, t in fixed)


def test_a_real_gain_is_kept_out_of_fold(planted_cache, tmp_path):
    path = planted_cache(n_groups=40)  # queries rotated away from their contexts: a head can undo it
    head, log = auto_train(path, TrainConfig(epochs=6), out=tmp_path / "h", progress=False)
    sel = log["selection"]
    assert sel["mode"] == "5-fold" and len(sel["candidates"]) == 4
    assert log["decision"]["kept"] == "head" and not head.config.passthrough
    g = log["decision"]["dev_gain"]
    assert g["low"] > 0 and sel["choose_queries"] + sel["decide_queries"] == 400  # every query once, out of fold
    assert g["n"] == sel["decide_queries"] >= 150  # half of them (whole groups) decide; the others chose
    c = open_cache(path)
    saved = load_head(tmp_path / "h")
    top1 = lambda h: (np.argmax(h.encode_queries(c.queries) @ h.encode_contexts(c.contexts).T, 1) == c.q2c).mean()  # noqa: E731
    frozen = (np.argmax(c.queries @ c.contexts.T, 1) == c.q2c).mean()
    assert top1(saved) > frozen + 0.3
    card = (tmp_path / "h" / "README.md").read_text()
    assert "How it was chosen (5-fold)" in card and "95% paired-bootstrap interval" in card


def test_fixed_training_settings_are_kept_through_the_refit(planted_cache):
    head, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=3),
                           fixed={"kind": "linear", "towers": "query", "batch_size": 16, "lr": 0.01}, progress=False)
    assert [c["name"] for c in log["selection"]["candidates"]] == ["linear-query"]
    assert log["selection"]["candidates"][0]["batch_size"] == 16 and head.info["training"]["batch_size"] == 16


def test_a_learning_rate_given_in_the_config_is_every_candidates(planted_cache):
    _, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=2, lr=0.02), progress=False)
    assert {c["train"]["lr"] for c in log["selection"]["candidates"]} == {0.02}  # as projhead train --lr
    _, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=2), progress=False)
    assert {c["train"]["lr"] for c in log["selection"]["candidates"]} == {1e-3, 5e-4}  # their own


def test_noise_keeps_the_identity(planted_cache, tmp_path):
    # queries already sit on their contexts: whatever a head changes is noise or harm
    path = planted_cache(n_groups=40, rotate=0.0, noise=0.6)
    head, log = auto_train(path, TrainConfig(epochs=4, lr=5e-2), out=tmp_path / "h", progress=False)
    assert head.config.passthrough and log["decision"]["kept"] == "identity"
    assert "is not above 0" in log["decision"]["why"] or "beat the frozen encoder" in log["decision"]["why"]
    c = open_cache(path)
    np.testing.assert_allclose(load_head(tmp_path / "h").encode_queries(c.queries), c.queries, atol=1e-6)


def test_one_document_still_gets_held_out_queries_but_no_head_by_default(planted_cache):
    """A user's pairs from one document: folds fall back to contexts, never to no check; the
    gain they show is within that document, so only --decision better keeps the head."""
    path = planted_cache(n_groups=1, contexts_per_group=60)
    head, log = auto_train(path, TrainConfig(epochs=3), progress=False)
    sel = log["selection"]
    assert sel["mode"] == "5-fold" and sel["choose_queries"] + sel["decide_queries"] == 120
    assert log["decision"]["dev_gain"]["n"] == sel["decide_queries"]
    assert log["decision"]["dev_gain"]["low"] > 0  # a real gain within the document (the rotation)...
    assert head.config.passthrough and "come from 1 document(s)" in log["decision"]["why"]  # ...kept out
    head, log = auto_train(path, TrainConfig(epochs=3, decision="better"), progress=False)
    assert not head.config.passthrough and log["decision"]["kept"] == "head"


def test_stream_needs_one_configuration(planted_cache):
    from projhead.train import TrainError

    with pytest.raises(TrainError, match="--stream"):
        auto_train(planted_cache(n_groups=5), TrainConfig(stream=True), progress=False)


def test_the_kept_epoch_is_the_latest_within_noise_of_the_best():
    from projhead.select import kept_epoch

    rng = np.random.default_rng(0)
    frozen = np.full(1000, 6)
    peak = rng.integers(0, 3, 1000)
    wobble = peak.copy()
    wobble[rng.choice(1000, 100, replace=False)] = rng.integers(0, 3, 100)
    drop = peak + 2

    def pick(epochs):
        scores = [float((1 / (1 + r)).mean()) for r in epochs]
        return kept_epoch(epochs, scores, TrainConfig())

    assert pick([frozen, peak, wobble, wobble]) == 3  # trained longer, held-out cannot tell
    assert pick([frozen, peak, wobble, drop]) == 2  # the last epoch is clearly worse
    assert pick([frozen, drop, peak, drop]) == 2
    assert pick([frozen, frozen + 1, frozen + 2]) == 0  # nothing beat the frozen encoder
    later = peak.copy()
    later[np.flatnonzero(peak == 0)[:4]] += 1
    later[np.flatnonzero(peak == 2)[-10:]] -= 1  # four queries lose half their score, ten gain a little
    near = later.copy()
    near[np.flatnonzero(later < 2)[0]] += 1  # a frozen encoder one query behind the later epoch
    assert pick([frozen, peak, later]) == 2
    assert pick([near, peak, later]) == 1  # the later epoch is not clearly above frozen: the best is kept


def test_the_winner_is_refit_on_the_schedule_of_the_folds(planted_cache):
    head, log = auto_train(planted_cache(n_groups=40), TrainConfig(epochs=6),
                           fixed={"kind": "linear", "towers": "query", "lr": 1e-2}, progress=False)
    cand = log["selection"]["candidates"][0]
    training = head.info["training"]
    assert log["decision"]["kept"] == "head"  # (an identity records the run's settings: tested below)
    assert training["epochs"] == 6 and training["stop_epoch"] == cand["best_epoch"] >= 1
    assert len(log["epochs"]) == training["stop_epoch"]


def test_stop_epoch_ends_the_run_on_the_full_schedule(planted_cache):
    from projhead.heads import HeadConfig
    from projhead.train import train_head

    path = planted_cache(n_groups=30)
    cfg = TrainConfig(epochs=6, batch_size=64, dev_fraction=0.0, decision="better", alpha=1.0)
    _, whole = train_head(path, HeadConfig(kind="linear", towers="query"), cfg, progress=False)
    _, cut = train_head(path, HeadConfig(kind="linear", towers="query"),
                        TrainConfig(**{**cfg.__dict__, "stop_epoch": 2}), progress=False)
    assert len(cut["epochs"]) == 2 and len(whole["epochs"]) == 6
    for a, b in zip(cut["epochs"], whole["epochs"][:2]):  # the same steps at the same learning rates
        assert a["lr"] == b["lr"] and a["train_loss"] == b["train_loss"]
    assert cut["epochs"][-1]["lr"] > whole["epochs"][-1]["lr"]


def _linear_query(**extra):
    return {"kind": "linear", "towers": "query", **extra}


def test_stop_epoch_bounds_the_epochs_selection_may_pick_and_the_refit(planted_cache):
    """Folds stopped at --stop-epoch: no epoch they did not train is a candidate, and the head
    saved trains no further than the user said."""
    head, log = auto_train(planted_cache(n_groups=40), TrainConfig(epochs=6, stop_epoch=2), fixed=_linear_query(lr=1e-2),
                           progress=False)
    cand = log["selection"]["candidates"][0]
    assert 1 <= cand["best_epoch"] <= 2 and head.info["training"]["stop_epoch"] <= 2 and len(log["epochs"]) <= 2
    assert cand["trained_epochs"] == 2


def test_a_fold_stopped_early_bounds_the_candidate_epochs(planted_cache, monkeypatch):
    import projhead.select as S

    real, calls = S.fit, []

    def fit(*a, **k):  # the second fold stops after epoch 2, as a non-finite loss would stop it
        run = real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            run["epoch_ranks"] = {e: r for e, r in run["epoch_ranks"].items() if e <= 2}
            run["log"]["stopped"] = "non-finite training loss at epoch 3"
        return run

    monkeypatch.setattr(S, "fit", fit)
    head, log = auto_train(planted_cache(n_groups=40), TrainConfig(epochs=6), fixed=_linear_query(), progress=False)
    cand = log["selection"]["candidates"][0]
    kept = log["decision"]["kept"] == "head"  # the identity records the run's settings (no stop epoch given)
    assert cand["best_epoch"] <= 2 and (head.info["training"]["stop_epoch"] <= 2 if kept else
                                        head.info["training"]["stop_epoch"] is None)
    assert cand["trained_epochs"] == 2 and "non-finite" in cand["stopped"]


def test_no_held_out_gold_context_is_a_training_gold_in_any_fold(tmp_path):
    from conftest import linked_cache
    from projhead.train import split_groups

    # 30 articles of 4 contexts; one answer text sits under articles 0-1 and another under 1-2 (a
    # chain), and article 10's context 40 is also the gold of a question filed under article 11
    linked_cache(tmp_path / "c.h5", 30, [(1, 0), (2, 4), (11, 40)])
    c = open_cache(tmp_path / "c.h5")
    groups = list(c.groups)
    for seed in range(10):  # the split auto_train folds
        for held in group_folds(split_groups(c), 5, seed):
            train = np.setdiff1d(np.arange(len(c.q2c)), held)
            assert not set(c.q2c[held]) & set(c.q2c[train])
    from projhead.train import joined_by_gold

    joined = joined_by_gold(c.groups, c.q2c)
    assert len({joined[groups.index(f"article {g}")] for g in (0, 1, 2)}) == 1
    assert joined[groups.index("article 10")] == joined[groups.index("article 11")]
    assert joined[groups.index("article 5")] == "article 5"  # groups that share nothing keep their names
    for seed in range(10):
        for held in group_folds(c.groups, 5, seed, gold=c.q2c):
            assert not set(c.q2c[held]) & set(c.q2c[np.setdiff1d(np.arange(len(c.q2c)), held)])


def test_the_decision_is_on_the_head_as_saved(planted_cache, tmp_path, capsys):
    """k-fold: the gain that decides, and the one reported, are the saved head's (here alpha 0:
    the frozen encoder itself, which cannot be a gain), not the fold heads' at alpha 1."""
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6, alpha=0.0), fixed=_linear_query(lr=1e-2), progress=True)
    d = log["decision"]
    assert d["dev_gain"]["gain"] == 0 and d["kept"] == "identity" and head.config.passthrough
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("chosen: "))
    assert said.count("95% interval") == 1 and "kept: identity; dev mrr10 gain +0.0000" in said  # said once
    head, log = auto_train(path, TrainConfig(epochs=6, alpha=0.9), fixed=_linear_query(lr=1e-2), out=tmp_path / "h",
                           progress=False)
    d = log["decision"]
    assert d["kept"] == "head" and d["alpha"] == 0.9 and "alpha 0.9" in d["measured"]
    assert head.info["metrics"]["head"] == d["dev_head"] != log["selection"]["chosen_dev_trained"]
    assert "alpha 0.9" in (tmp_path / "h" / "README.md").read_text()


@pytest.mark.parametrize("folds", [0, 5])
def test_without_alpha_folds_choose_it_and_a_dev_split_keeps_the_default(planted_cache, monkeypatch, folds, tmp_path):
    """No --alpha: 5-fold selection picks the alpha on its choosing queries, as --alpha auto does
    (steered to 0.75 here), and decides and saves that one; a dev split keeps ALPHA."""
    import projhead.select as S

    real_choose = S.chosen_alpha
    monkeypatch.setattr(S, "chosen_alpha", lambda head, ranks_at, cfg, log, progress=False: real_choose(
        head, lambda a: ranks_at(a) * 0 if a == 0.75 else ranks_at(a) + 20 * (a > 0), cfg, log, progress))
    # 0.75: every query at rank 0; the other alphas past the top 10
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6), fixed=_linear_query(lr=1e-2), out=tmp_path / "h",
                           progress=False, folds=folds)
    d, saved = log["decision"], load_head(tmp_path / "h")
    assert d["kept"] == "head"
    want = 0.75 if folds else ALPHA
    assert d["alpha"] == want and f"alpha {want:g}" in d["measured"]
    assert saved.info["training"]["alpha"] == want  # as saved (asked for: None, the default)
    assert ("alpha_choice" in saved.info["selection"]) == bool(folds)


def test_which_heads_choose_their_alpha_without_one_given():
    import projhead.select as S

    class Stub:
        def __init__(self, kind, interpolates):
            self.config, self.can_interpolate = HeadConfig(kind=kind), lambda: interpolates

    assert S.chooses_alpha(TrainConfig(), Stub("linear", True))
    assert not S.chooses_alpha(TrainConfig(), Stub("mlp", False))  # kept whole, as without folds
    assert not S.chooses_alpha(TrainConfig(), Stub("dialog", True))  # ALPHA, as its benchmarks were measured
    assert not S.chooses_alpha(TrainConfig(alpha=0.5), Stub("linear", True))
    assert S.chooses_alpha(TrainConfig(alpha="auto"), Stub("residual", True))


def test_alpha_a_head_cannot_take_is_refused_before_training(planted_cache, monkeypatch):
    import projhead.select as S
    from projhead.train import TrainError

    monkeypatch.setattr(S, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    path = planted_cache(n_groups=10)
    for fixed in ({"kind": "mlp"}, {"init": "random"}):
        with pytest.raises(TrainError, match="alpha 0.5 interpolates toward the frozen encoder"):
            auto_train(path, TrainConfig(alpha=0.5), fixed=fixed, progress=False)


@pytest.mark.parametrize("folds", [0, 5])
def test_canaries_are_scored_every_epoch_in_model_selection(planted_cache, folds):
    path = planted_cache(n_groups=20)
    canary = planted_cache(name="other.h5", n_groups=6)
    head, log = auto_train(path, TrainConfig(epochs=3, canaries=[str(canary)]), fixed=_linear_query(),
                           progress=False, folds=folds)
    assert log["epochs"] and all(set(e["canaries"]) == {"other.h5"} for e in log["epochs"])


def test_alpha_shrunk_for_a_canary_is_recorded_as_saved(planted_cache, tmp_path):
    """A canary that the head hurts shrinks its alpha below the one chosen: config.json, the
    model card and the last line give the alpha of the saved weights, and say it was shrunk."""
    path = planted_cache(n_groups=80, rotate=0.5)
    canary = planted_cache(name="other.h5", n_groups=20, rotate=0.0, noise=0.9, encoder_seed=7)
    head, log = auto_train(path, TrainConfig(epochs=3, canaries=[str(canary)], canary_tolerance=0.003),
                           out=tmp_path / "h", progress=False)
    d, saved = log["decision"], load_head(tmp_path / "h")
    chosen = log["selection"]["alpha_choice"]["chosen"]
    assert d["kept"] == "head" and d["alpha"] < chosen  # shrunk
    assert saved.info["training"]["alpha"] == d["alpha"] and f"alpha {d['alpha']:g}" in d["measured"]
    assert d["shrunk"].startswith(f"alpha {chosen:g} shrunk to {d['alpha']:g}")
    assert d["shrunk"] in (tmp_path / "h" / "README.md").read_text()
    from projhead.train import summary_line
    assert d["shrunk"] in summary_line(tmp_path / "h", head, log, "mrr10")


def test_candidate_names_are_unique_when_a_head_setting_is_fixed():
    for fixed in ({"kind": "linear"}, {"towers": "query"}, {"kind": "residual", "towers": "separate"}):
        names = [n for n, _, _ in candidates(1000, fixed)]
        assert len(names) == len(set(names)), names
    assert [n for n, _, _ in candidates(1000, {"kind": "linear"})] == [
        "linear-query-lr0.001", "linear-separate-lr0.001", "linear-query-lr0.0005", "linear-separate-lr0.0005"]


def test_settings_selection_does_not_use_are_said(planted_cache, tmp_path):
    from projhead.checkpoint import CHECKPOINT_NAME

    out = tmp_path / "h"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(b"left by an interrupted --no-auto run")
    head, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=3, patience=2, dev_fraction=0.3,
                                                                   corpus_sample=50),
                           fixed=_linear_query(), out=out, progress=False)
    notes = log["selection"]["not_used"]
    assert any(n.startswith("patience 2") for n in notes) and any(n.startswith("dev_fraction 0.3") for n in notes)
    assert any(n.startswith("corpus_sample 50: the cache has no corpus section") for n in notes)
    assert not (out / CHECKPOINT_NAME).exists() and "--no-auto" in log["selection"]["removed"]
    _, log = auto_train(planted_cache(name="b.h5", n_groups=20), TrainConfig(epochs=3, patience=2),
                        fixed=_linear_query(), progress=False, folds=0)
    assert log["selection"]["not_used"] == []  # a dev split stops on patience
    c = open_cache(planted_cache(name="d.h5", n_groups=20))  # distractors attached by the caller: nothing to say
    rng = np.random.default_rng(0)
    c.attach_distractors(rng.normal(size=(5, c.dim)).astype(np.float32), [f"extra {i}" for i in range(5)])
    _, log = auto_train(c, TrainConfig(epochs=2, corpus_sample=50), fixed=_linear_query(), progress=False)
    assert not any(n.startswith("corpus_sample") for n in log["selection"]["not_used"])


@pytest.mark.parametrize("folds", [0, 5])
def test_the_queries_that_decide_took_no_part_in_choosing(planted_cache, monkeypatch, folds):
    """Under no real gain, choosing the best of many candidates and epochs on the queries that
    then decide keeps a head far more often than the interval says: the two are cut apart."""
    import projhead.select as S

    seen = {}
    real_halves, real_boot = S._halves, S.paired_bootstrap
    monkeypatch.setattr(S, "_halves", lambda *a: seen.setdefault("halves", real_halves(*a)))
    monkeypatch.setattr(S, "kept_epoch", lambda ranks, scores, cfg: seen.setdefault("chosen_on", len(ranks[0])) and 1)
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=2, dev_fraction=0.5), fixed=_linear_query(), progress=False,
                           folds=folds)
    choose, decide = seen["halves"]
    groups = open_cache(path).groups
    assert len(choose) and len(decide) and not {groups[i] for i in choose} & {groups[i] for i in decide}
    assert log["decision"]["dev_gain"]["n"] == len(decide) == log["selection"]["decide_queries"]
    if folds:
        assert seen["chosen_on"] == len(choose)
    else:
        assert log["n_dev"] == len(choose)  # the run's own held-out queries (early stopping, the epoch kept)


def test_one_answer_shared_by_every_document_still_gets_a_held_out_test(tmp_path):
    """Every article has a question whose gold is the same context (a generic FAQ answer): the
    joined groups are one, so the split falls back to one group per gold context instead of
    holding out nothing, and both selection and --no-auto decide on held-out queries."""
    from conftest import linked_cache

    from projhead.heads import HeadConfig
    from projhead.train import split_groups, train_head

    p = linked_cache(tmp_path / "c.h5", 8, [(g, 0) for g in range(8)])
    c = open_cache(p)
    assert len(set(split_groups(c))) == len(set(c.q2c.tolist()))  # one group per gold context
    _, log = train_head(p, HeadConfig(kind="linear"), TrainConfig(epochs=2), progress=False)
    assert log["n_dev"] > 0 and "holds no queries" not in log["decision"].get("why", "")
    _, log = auto_train(p, TrainConfig(epochs=2), out=tmp_path / "h", progress=False)
    assert log["selection"]["decide_queries"] > 0


def test_an_empty_streamed_dev_split_keeps_the_identity(tmp_path):
    """Three groups, a seed that holds none of them out: nothing was tested, so nothing is kept."""
    from conftest import PlantedEncoder, planted_pairs

    from projhead.stream import StreamSource
    from projhead.cache import build_cache
    from projhead.heads import HeadConfig
    from projhead.train import train_head

    pairs = planted_pairs(n_groups=3, contexts_per_group=20)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    for seed in range(20):
        cfg = TrainConfig(stream=True, epochs=2, seed=seed)
        src = StreamSource(open_cache(tmp_path / "c.h5", load=False), cfg)
        empty = len(src.dev_rows) == 0
        src.close()
        if empty:
            break
    assert empty
    head, log = train_head(tmp_path / "c.h5", HeadConfig(kind="linear"), cfg, progress=False)
    assert log["decision"]["kept"] == "identity" and head.config.passthrough
    assert "holds no queries" in log["decision"]["why"]


def test_alpha_auto_keeps_the_smallest_alpha_within_noise_of_the_best_and_clearly_above_frozen():
    from types import SimpleNamespace

    import projhead.select as S

    head = SimpleNamespace(can_interpolate=lambda: True)
    n = 200
    top, frozen = np.zeros(n, int), np.full(n, 20)  # mrr10 1 and 0
    one_off, four_off = top.copy(), top.copy()
    one_off[0], four_off[:4] = 3, 3  # 1 or 4 of 200 queries a little worse than the best
    log = {}
    ranks = {0.9: top, 0.75: one_off, 0.5: four_off, 0.0: frozen}
    assert S.chosen_alpha(head, ranks.get, TrainConfig(), log) == 0.75  # 0.5: below the best beyond noise
    assert log["alpha_choice"] == {"alphas": [0.9, 0.75, 0.5], "scores": [1.0, 1 - 0.75 / n, 1 - 3 / n],
                                   "best": 0.9, "chosen": 0.75}
    ranks[0.5] = one_off
    assert S.chosen_alpha(head, ranks.get, TrainConfig(), {}) == 0.5  # within noise: the nearest the frozen encoder
    ranks[0.0] = one_off  # the frozen encoder as good: no smaller alpha is clearly above it, the best is kept
    assert S.chosen_alpha(head, ranks.get, TrainConfig(), {}) == 0.9
    asked = []
    ranks = {0.9: four_off, 0.75: top, 0.5: frozen}  # the best is 0.75, and the smaller 0.5 is far below it
    assert S.chosen_alpha(head, lambda a: asked.append(a) or ranks.get(a, frozen), TrainConfig(), {}) == 0.75
    assert sorted(asked) == [0.0, 0.5, 0.75, 0.9]  # the frozen encoder's ranks asked once, for the smaller 0.5
    assert S.chosen_alpha(head, lambda a: top, TrainConfig(), log) == 0.9  # all equal (the frozen encoder too): the largest
    assert log["alpha_choice"]["best"] == log["alpha_choice"]["chosen"] == 0.9
    asked.clear()
    ranks = {0.9: four_off, 0.75: four_off, 0.5: top}
    assert S.chosen_alpha(head, lambda a: asked.append(a) or ranks[a], TrainConfig(), {}) == 0.5
    assert 0.0 not in asked  # the best is the smallest: the frozen encoder is not needed
    rigid, log = SimpleNamespace(can_interpolate=lambda: False, config=SimpleNamespace(kind="mlp", init="random")), {}
    assert S.chosen_alpha(rigid, ranks.get, TrainConfig(), log) == 1.0  # kept whole, and said
    assert log["alpha_choice"]["chosen"] == 1.0 and "kept whole" in log["alpha_choice"]["why"]


@pytest.mark.parametrize("folds", [0, 5])
def test_alpha_auto_is_chosen_on_the_choosing_queries_and_decided_on_the_others(planted_cache, monkeypatch, folds,
                                                                               tmp_path):
    """--alpha auto: the head at every alpha of AUTO_ALPHAS is ranked on the queries that
    choose; the alpha chosen is the one the decision judges and the one saved. (The choice is
    steered to 0.5 here, where the planted data would pick 0.9, the default's own.)"""
    import projhead.select as S
    from projhead.gate import fit_fold_gates

    seen = {}
    real_halves, real_choose = S._halves, S.chosen_alpha

    def halves(*a):  # five choosing queries fewer than deciding ones: whose ranks are which shows
        choose, decide = real_halves(*a)
        return seen.setdefault("halves", (choose[:min(len(choose), len(decide)) - 5], decide))

    monkeypatch.setattr(S, "_halves", halves)

    def steered(head, ranks_at, cfg, log, progress=False):
        seen["ranks"] = {a: ranks_at(a) for a in S.AUTO_ALPHAS}
        seen["head"] = copy.deepcopy(head)
        seen["frozen"] = ranks_at(0.0)
        return real_choose(head, lambda a: seen["ranks"].get(a, seen["frozen"]) * (a != 0.5), cfg, log,
                           progress)  # 0.5: all top-1, the best

    real_fold_runs = S.fold_runs

    def fold_runs(*a):
        seen["fold_runs"] = a[3], real_fold_runs(*a)  # (fold rows, runs at the chosen epoch)
        return seen["fold_runs"][1]

    monkeypatch.setattr(S, "fold_runs", fold_runs)
    monkeypatch.setattr(S, "chosen_alpha", steered)
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6, alpha="auto", dev_fraction=0.5), fixed=_linear_query(lr=1e-2),
                           out=tmp_path / "h", progress=False, folds=folds)
    choose, decide = seen["halves"]
    cache = open_cache(path)
    for a, got in seen["ranks"].items():  # the choosing queries alone, each ranked by the head as saved at a
        if folds:  # out of fold: each by its fold's head at the chosen epoch, in fold order
            fold_rows, runs = seen["fold_runs"]
            gates = fit_fold_gates(cache.queries, fold_rows, [])[2]  # and gated by its fold's gate
            want = np.concatenate([held_out(cache, np.intersect1d(rows, choose)).ranks(as_saved([run], a, [g])[0])
                                   for rows, run, g in zip(fold_rows, runs, gates)])
            order = np.concatenate(fold_rows)
            assert np.array_equal(np.sort(order[np.isin(order, choose)]), np.sort(choose))
        else:  # the trained head, gate and all
            want = held_out(cache, choose).ranks(copy.deepcopy(seen["head"]).interpolate(a))
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(seen["ranks"][0.9], seen["ranks"][0.5])  # each alpha's own head
    frozen = (np.concatenate([held_out(cache, np.intersect1d(rows, choose)).ranks(None) for rows in seen["fold_runs"][0]])
              if folds else held_out(cache, choose).ranks(None))
    np.testing.assert_array_equal(seen["frozen"], frozen)  # at alpha 0: the frozen encoder's, the same queries
    d = log["decision"]
    assert log["selection"]["alpha_choice"]["chosen"] == d["alpha"] == 0.5 and d["dev_gain"]["n"] == len(decide)
    assert "alpha 0.5" in d["measured"]
    saved = load_head(tmp_path / "h")
    assert saved.info["training"]["alpha"] == 0.5  # the number chosen, not "auto"
    assert saved.info["selection"]["alpha_choice"]["chosen"] == 0.5


def test_alpha_auto_is_refused_without_model_selection_and_checked_on_the_command_line(planted_cache, tmp_path,
                                                                                       capsys):
    from projhead.cli import main
    from projhead.train import TrainError, train_head

    path = planted_cache(n_groups=10)
    with pytest.raises(TrainError, match="alpha 'auto' is chosen by model selection"):
        train_head(path, config=TrainConfig(epochs=1, alpha="auto"))
    for bad in ("half", True, [0.5], 1.5):
        with pytest.raises(ValueError, match="'auto'"):
            TrainConfig(alpha=bad)
    assert type(TrainConfig(alpha=np.float32(0.5)).alpha) is float  # stored as JSON can write it
    assert main(["train", str(path), "--out", str(tmp_path / "h"), "--alpha", "half"]) == 2
    assert "Invalid value for '--alpha'" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(tmp_path / "h"), "--alpha", "auto", "--epochs", "2"]) == 0
    assert "alpha: " in capsys.readouterr().out


@pytest.mark.parametrize("decision, low, gain, gives_way", [("bootstrap", 0.001, 0.01, False), ("bootstrap", 0.0, 0.01, True),
                                                            ("better", -0.01, 0.001, False), ("better", -0.02, 0.0, True)])
def test_the_fused_check_follows_the_decision_rule(decision, low, gain, gives_way):
    from projhead.config import TrainConfig
    from projhead.hybrid_select import not_above_fused

    vs = {"gain": gain, "low": low, "high": gain + 0.01, "n": 100, "metric": "mrr10"}
    fusion = {"fusion": {"chosen": {"against_frozen": vs}}}
    why = not_above_fused(TrainConfig(decision=decision), {"kept": "head"}, fusion)
    assert (why is not None) == gives_way
    if gives_way:
        assert f"{gain:+.4f}" in why and "100 queries" in why
    assert not_above_fused(TrainConfig(decision=decision), {"kept": "identity"}, fusion) is None  # nothing to drop
    assert not_above_fused(TrainConfig(decision=decision), {"kept": "head"}, {}) is None  # no texts: no fusion


def test_a_refit_that_stops_before_the_judged_epoch_saves_the_identity(planted_cache, monkeypatch, tmp_path):
    """With folds, the saved head is the winner trained again on every pair: when that run
    stops early (a non-finite loss), its weights are not the head the folds judged."""
    import projhead.select as S

    real = S.fit

    def fit(cache, hcfg, cfg, rows, **k):
        run = real(cache, hcfg, cfg, rows, **k)
        if not len(rows[1]):  # the refit on every pair: no held-out rows
            run["log"]["stopped"] = "non-finite training loss at epoch 1, step 1"
        return run

    monkeypatch.setattr(S, "fit", fit)
    head, log = auto_train(planted_cache(n_groups=40), TrainConfig(epochs=6), fixed=_linear_query(lr=1e-2),
                           out=tmp_path / "h", progress=False)
    assert log["selection"]["candidates"][0]["best_epoch"] > 0  # the folds found a gain
    assert log["decision"]["kept"] == "identity" and "stopped before epoch" in log["decision"]["why"]
    assert load_head(tmp_path / "h").config.passthrough


def test_fixed_training_settings_hold_in_both_modes(planted_cache):
    """A training setting in ``fixed`` (API) is the run's setting whichever way selection runs;
    a key that is neither a head nor a training setting is refused before training."""
    from projhead.train import TrainError

    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6), fixed=_linear_query(lr=1e-2, alpha=0.5),
                           progress=False)
    assert log["selection"]["mode"] == "5-fold" and log["decision"]["kept"] == "head"
    assert log["decision"]["alpha"] == 0.5 and head.info["training"]["alpha"] == 0.5
    assert "alpha_choice" not in log["selection"]  # not chosen: given
    with pytest.raises(TrainError, match="cannot be interpolated"):
        auto_train(path, TrainConfig(epochs=2), fixed={"kind": "mlp", "alpha": 0.5}, progress=False)
    with pytest.raises(TrainError, match="fixed settings colour: neither"):
        auto_train(path, TrainConfig(epochs=2), fixed={"colour": "red"}, progress=False)


def test_a_cache_of_one_group_is_refused_with_a_reason(planted_cache):
    """Every query on one gold context: nothing can be held out whole."""
    from projhead.train import TrainError

    with pytest.raises(TrainError, match="queries all have one gold context"):
        auto_train(planted_cache(n_groups=1, contexts_per_group=1, queries_per_context=6), TrainConfig(epochs=2),
                   progress=False)


def test_the_identity_names_a_two_tower_head_passed_over():
    from projhead.query_side import none_beat as _none_beat

    assert _none_beat("linear-query", {}) == "no epoch of any candidate beat the frozen encoder"
    passed = {"towers": {"query_side": "linear-query", "two_tower": "residual-separate", "chosen": "linear-query"}}
    assert "no epoch of linear-query" in _none_beat("linear-query", passed)
    assert "residual-separate scored higher, not beyond noise" in _none_beat("linear-query", passed)


def test_more_folds_than_documents_never_split_a_document(planted_cache, monkeypatch):
    """folds=10 on 6 documents: 6 folds of whole documents (before, the split fell back to gold
    contexts, so held-out queries came from training documents)."""
    import projhead.select as S

    seen = {}
    real = S.group_folds
    monkeypatch.setattr(S, "group_folds", lambda groups, k, seed, gold=None: seen.setdefault(k, real(
        groups, k, seed, gold)))  # k 2: the choosing and deciding halves
    path = planted_cache(n_groups=6)
    head, log = auto_train(path, TrainConfig(epochs=1), fixed=_linear_query(), progress=False, folds=10)
    assert log["selection"]["mode"] == "6-fold"
    docs = np.asarray(open_cache(path).groups)
    owners = [set(docs[rows]) for rows in seen[6]]
    assert all(len(o) == 1 for o in owners) and len(set.union(*owners)) == 6


@pytest.mark.parametrize("folds", [None, 0])
def test_an_identity_kept_by_selection_records_the_run_not_the_rejected_head(planted_cache, tmp_path, folds):
    """The frozen vectors are already right: selection keeps the identity. config.json then holds
    the run's training settings (not the rejected candidate's batch, epoch or alpha) and best
    epoch 0, and a candidate of another width leaves the frozen encoder's width, so
    `projhead eval --index` sizes its index to what the saved head outputs."""
    import json

    from projhead.cli import main

    path = planted_cache(n_groups=40, rotate=0.0, noise=0.05)
    out = tmp_path / "h"
    head, log = auto_train(path, TrainConfig(epochs=3), fixed={"kind": "linear", "towers": "separate", "out_dim": 8},
                           out=out, progress=False, folds=folds)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decision"]["kept"] == "identity" and log["selection"]["candidates"][0]["batch_size"]
    training = cfg["training"]
    assert cfg["best_epoch"] == 0 and training["batch_size"] is None and training["stop_epoch"] is None
    assert training["alpha"] is None and cfg["head"]["out_dim"] is None and cfg["head"]["passthrough"]
    assert cfg["rejected_head"]["out_dim"] == 8 and training["loss_settings"]["symmetric"]  # as the head trained
    if folds is None and log["selection"]["candidates"][0]["best_epoch"] == 0:  # nothing was trained on every pair
        assert json.loads((out / "train_log.json").read_text())["epochs"] == []
    assert main(["eval", str(path), "--head", str(out), "--index", "Flat"]) == 0
