"""Model selection: candidates, folds, and the rule that keeps the identity on noise."""
import numpy as np
import pytest

from projhead.cache import open_cache
from projhead.heads import load_head
from projhead.select import CV_BELOW, auto_train, candidates, group_folds
from projhead.train import TrainConfig


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
    assert [n for n, _, _ in candidates(CV_BELOW)] == ["linear-query", "residual-separate"]
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
    assert g["low"] > 0 and g["n"] == 400  # every query scored once, out of fold
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
    assert log["selection"]["mode"] == "5-fold" and log["decision"]["dev_gain"]["n"] == 120
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
                           fixed={"kind": "linear", "towers": "query"}, progress=False)
    cand = log["selection"]["candidates"][0]
    training = head.info["training"]
    assert training["epochs"] == 6 and training["stop_epoch"] == max(1, cand["best_epoch"])
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
