import json
import math
from fractions import Fraction

import torch

import numpy as np
import pytest

from projhead.cache import open_cache
from projhead.evaluate import dense_scorer, ranks
from projhead.heads import HeadConfig, load_head
from projhead.train import TrainConfig, split_by_group, train_head


def test_split_keeps_groups_whole():
    groups = [f"g{i // 7}" for i in range(700)]
    tr, dev = split_by_group(groups, 0.1, seed=0)
    assert len(set(tr) & set(dev)) == 0 and len(tr) + len(dev) == 700
    assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in dev})
    assert len({groups[i] for i in dev}) == 10
    assert (split_by_group(groups, 0.1, seed=0)[1] == dev).all()


@pytest.mark.parametrize("loss", ["clip", "samtone", "siglip"])
def test_head_learns_the_planted_rotation(planted_cache, tmp_path, loss):
    path = planted_cache(n_groups=60)
    head, log = train_head(path, HeadConfig(kind="linear", towers="query"),
                           TrainConfig(loss=loss, epochs=30, batch_size=128, lr=0.02, patience=30,
                                       dev_fraction=0.2), out=tmp_path / "head", progress=False)
    frozen, best = log["frozen_dev"]["top1"], head.info["metrics"]["head"]["top1"]
    assert frozen < 0.5 and best > frozen + 0.3  # the rotation is undone
    assert log["epochs"][-1]["train_loss"] < log["epochs"][0]["train_loss"]
    assert (tmp_path / "head" / "training_curve.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "head" / "train_log.json").read_text())
    assert saved["best_epoch"] == log["best_epoch"] >= 1
    # the saved head reproduces the dev metric it reports
    c = open_cache(path)
    _, dev_rows = split_by_group(c.groups, 0.2, 0)
    h = load_head(tmp_path / "head")
    # dev queries are ranked against every context of the cache, not only the dev split's own
    r = ranks(dense_scorer(h.encode_queries(c.queries[dev_rows]), h.encode_contexts(c.contexts)), c.q2c[dev_rows])
    assert (r < 1).mean() == pytest.approx(best)


def test_frozen_is_kept_when_no_epoch_beats_it(planted_cache, tmp_path):
    # queries already equal their contexts up to noise: nothing to learn, a high lr only hurts
    path = planted_cache(n_groups=30, rotate=0.0, noise=0.01)
    head, log = train_head(path, HeadConfig(kind="mlp", init="random", hidden=8),
                           TrainConfig(epochs=2, batch_size=64, lr=0.5, patience=1, dev_fraction=0.2),
                           out=tmp_path / "h", progress=False)
    assert head.config.passthrough and log["best_epoch"] == 0
    c = open_cache(path)
    np.testing.assert_allclose(load_head(tmp_path / "h").encode_queries(c.queries), c.queries, atol=1e-6)
    assert "identity" in (tmp_path / "h" / "README.md").read_text()


def test_same_seed_same_head(planted_cache):
    path = planted_cache(n_groups=20)
    cfg = TrainConfig(epochs=2, batch_size=64, patience=5)
    a, _ = train_head(path, HeadConfig(kind="residual", hidden=16), cfg, progress=False)
    b, _ = train_head(path, HeadConfig(kind="residual", hidden=16), cfg, progress=False)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert (x == y).all(), k


def test_anchor_weight_keeps_the_head_close(planted_cache):
    path = planted_cache(n_groups=30)
    c = open_cache(path)
    dist = {}
    for w in (0.0, 100.0):
        head, _ = train_head(path, HeadConfig(kind="residual", hidden=32),
                             TrainConfig(epochs=5, batch_size=64, lr=0.01, anchor_weight=w, patience=10),
                             progress=False)
        dist[w] = float(np.linalg.norm(head.encode_queries(c.queries) - c.queries, axis=1).mean())
    assert dist[100.0] < 0.5 * dist[0.0]


def test_head_records_its_encoder_and_cache(planted_cache, tmp_path):
    path = planted_cache(n_groups=10)
    head, _ = train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, batch_size=32), out=tmp_path / "h",
                         progress=False)
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["head"]["encoder"] == "test:planted" and cfg["head"]["in_dim"] == 16
    assert cfg["cache"]["fingerprint"] == open_cache(path).attrs["fingerprint"]
    assert cfg["training"]["loss"] == "clip" and "frozen" in cfg["metrics"]


def test_group_batching_keeps_groups_together():
    from projhead.train import epoch_order

    gid = np.repeat(np.arange(10), 7)
    rows = np.arange(70)
    order = epoch_order(rows, gid, "group", np.random.default_rng(0))
    assert sorted(order) == list(rows)
    runs = [gid[order][0]] + [b for a, b in zip(gid[order][:-1], gid[order][1:]) if a != b]
    assert len(runs) == 10  # each group appears as one contiguous run
    assert list(order) != list(rows)
    assert sorted(epoch_order(rows, gid, "random", np.random.default_rng(0))) == list(rows)


KILL_TRAIN = """
import os, signal, sys
import projhead.train as T
real, n = T.save_checkpoint, [0]
def save(*a, **k):
    n[0] += 1
    if {mid_epoch} and n[0] == {kill_after} + 1:
        os.kill(os.getpid(), signal.SIGKILL)  # an epoch's work done, its checkpoint not written
    real(*a, **k)
    if not {mid_epoch} and n[0] == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)  # right after a checkpoint
T.save_checkpoint = save
from projhead.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("kill_after, mid_epoch, extra", [
    (1, False, []), (2, True, []), (3, False, []),
    # BYOL: the target network and predictors resume too; mined negatives: their draws resume
    (2, False, ["--loss", "byol", "--loss-setting", "hidden=8"]),
    (2, True, ["--mined", "semantic", "--hard-negatives", "2"]),
    (1, False, ["--stream", "--stream-chunk", "40", "--stream-buffer", "2"]),  # out-of-core reads resume too
])
def test_kill_9_during_training_then_resume_gives_the_same_head(planted_cache, tmp_path, kill_after, mid_epoch,
                                                                extra):
    import subprocess
    import sys

    from safetensors.torch import load_file

    path = planted_cache(n_groups=30)
    if "--mined" in extra:
        from projhead.mine import mine

        mine(path, k=4, progress=False)
    argv = ["train", str(path), "--no-auto", "--kind", "residual", "--hidden", "16", "--dropout", "0.1", "--epochs", "5",
            "--batch-size", "32", "--patience", "9", "--quiet", *extra]
    script = KILL_TRAIN.format(kill_after=kill_after, mid_epoch=mid_epoch, argv=argv + ["--out", str(tmp_path / "a")])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert (tmp_path / "a" / "checkpoint.safetensors").exists()
    from projhead.cli import main

    assert main(argv + ["--out", str(tmp_path / "a")]) == 0  # the same command resumes
    assert not (tmp_path / "a" / "checkpoint.safetensors").exists()
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0  # uninterrupted
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = json.loads((tmp_path / "a" / "train_log.json").read_text())
    lb = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert [e["dev"] for e in la["epochs"]] == [e["dev"] for e in lb["epochs"]]


def _interrupted_after_the_first_checkpoint(path, out):
    """A --no-auto run (linear head, 3 epochs, batch 16) stopped right after its first checkpoint."""
    import projhead.train as T

    real = T.save_checkpoint
    T.save_checkpoint = lambda *a, **k: (real(*a, **k), (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16), out=out, progress=False)
    finally:
        T.save_checkpoint = real


def test_checkpoint_of_other_settings_is_refused(planted_cache, tmp_path):
    from projhead.train import TrainError

    path = planted_cache(n_groups=10)
    _interrupted_after_the_first_checkpoint(path, tmp_path / "h")
    with pytest.raises(TrainError, match="checkpoint of a run with other settings \\(train\\)"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16, lr=0.1), out=tmp_path / "h",
                   progress=False)
    train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16, lr=0.1), out=tmp_path / "h",
               progress=False, restart=True)
    assert (tmp_path / "h" / "model.safetensors").exists()


def test_checkpoint_written_before_a_setting_existed_resumes_at_its_default(planted_cache, tmp_path):
    """A checkpoint of an older projhead lacks settings added since; at their defaults they
    change nothing, so the run resumes (a setting given another value is still refused)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from projhead.train import TrainError

    path, ckpt = planted_cache(n_groups=10), tmp_path / "h" / "checkpoint.safetensors"
    _interrupted_after_the_first_checkpoint(path, tmp_path / "h")
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    job = json.loads(meta["job"])
    del job["train"]["bm25_k1"], job["train"]["bm25_b"]  # as an older version wrote it
    save_file(tensors, str(ckpt), metadata={**meta, "job": json.dumps(job)})
    with pytest.raises(TrainError, match="other settings \\(train\\)"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16, bm25_k1=0.9),
                   out=tmp_path / "h", progress=False)
    train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16), out=tmp_path / "h",
               progress=False)  # refused before the defaults were filled in: "other settings (train)"
    assert (tmp_path / "h" / "model.safetensors").exists()


def test_unwritable_output_is_a_clear_error(planted_cache, tmp_path):
    from projhead.heads import Head, HeadError
    from projhead.train import TrainError

    path = planted_cache(n_groups=10)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrainError, match="cannot write the checkpoint"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, batch_size=16),
                   out=tmp_path / "afile" / "h", progress=False)
    with pytest.raises(HeadError, match="cannot save the head"):
        Head(HeadConfig(in_dim=4)).save(tmp_path / "afile" / "h")


def test_chunked_loss_trains_like_the_plain_loss(planted_cache):
    path = planted_cache(n_groups=20)
    heads = []
    for settings in ({}, {"chunk_size": 16}):
        head, _ = train_head(path, HeadConfig(kind="residual", hidden=16),
                             TrainConfig(epochs=2, batch_size=64, patience=5, loss_settings=settings), progress=False)
        heads.append(head.state_dict())
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], rtol=1e-4, atol=1e-5)


def test_a_non_finite_loss_ends_training_at_the_last_good_epoch(planted_cache, monkeypatch):
    from projhead.losses import ClipLoss

    path = planted_cache(n_groups=60)
    real, calls = ClipLoss.forward, []

    def nan_after_two_epochs(self, *a, **k):
        calls.append(1)
        loss = real(self, *a, **k)
        return loss * float("nan") if len(calls) > 2 * steps else loss

    steps = 600 * 4 // 5 // 128  # training pairs / batch: one epoch of steps
    monkeypatch.setattr(ClipLoss, "forward", nan_after_two_epochs)
    head, log = train_head(path, HeadConfig(kind="linear", towers="query"),
                           TrainConfig(epochs=6, batch_size=128, lr=0.02, dev_fraction=0.2, decision="better"),
                           progress=False)
    assert "non-finite training loss at epoch 3" in log["stopped"] and len(log["epochs"]) == 2
    assert 1 <= log["best_epoch"] <= 2 and not head.config.passthrough
    assert all(torch.isfinite(v).all() for v in head.state_dict().values())


def test_identity_head_saves_identity_weights(planted_cache, tmp_path):
    """A kept frozen encoder is saved as identity weights, not the last epoch's."""
    from safetensors.torch import load_file

    path = planted_cache(n_groups=30, rotate=0.0, noise=0.01)
    for kind in ("linear", "residual"):
        head, log = train_head(path, HeadConfig(kind=kind, hidden=8),
                               TrainConfig(epochs=2, batch_size=64, lr=0.5, dev_fraction=0.2),
                               out=tmp_path / kind, progress=False)
        assert head.config.passthrough
        w = load_file(str(tmp_path / kind / "model.safetensors"))
        # whatever was trained (two towers, a residual MLP): a plain query-side identity, the rejected head named
        assert set(w) == {"query.weight", "query.bias"}
        torch.testing.assert_close(w["query.weight"], torch.eye(16))
        assert not w["query.bias"].any()
        config = json.loads((tmp_path / kind / "config.json").read_text())
        assert (config["head"]["kind"], config["head"]["towers"]) == ("linear", "query")
        assert config["rejected_head"]["kind"] == kind and config["rejected_head"]["towers"] == HeadConfig().towers


def test_every_part_is_on_the_device_after_set_up():
    """BYOL builds its target and predictor when it attaches to the head: they must move
    with everything else (a meta device shows any part left on the CPU)."""
    from projhead.train import setup

    for loss in ("clip", "siglip", "byol"):
        head, loss_fn, opt = setup(HeadConfig(in_dim=8, hidden=8), TrainConfig(loss=loss), device="meta")
        devices = {p.device.type for m in (head, loss_fn) for p in m.parameters()}
        devices |= {b.device.type for m in (head, loss_fn) for b in m.buffers()}
        assert devices == {"meta"}, (loss, devices)
        assert {p.device.type for g in opt.param_groups for p in g["params"]} == {"meta"}


def test_scalars_and_biases_are_not_weight_decayed():
    from projhead.train import setup

    head, loss_fn, opt = setup(HeadConfig(in_dim=8, hidden=8), TrainConfig(loss="siglip", weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(loss_fn.logit_scale) not in decayed and id(loss_fn.logit_bias) not in decayed
    assert all(id(m.bias) not in decayed and id(m.weight) in decayed
               for m in head.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
@pytest.mark.parametrize("loss", ["clip", "byol"])
def test_training_on_a_gpu_resumes_to_the_same_head(planted_cache, tmp_path, loss):
    import projhead.train as T

    path = planted_cache(n_groups=20)
    cfg = TrainConfig(loss=loss, epochs=3, batch_size=32, device="cuda", decision="better")
    ref, _ = train_head(path, HeadConfig(kind="residual", hidden=16), cfg, progress=False)
    real, n = T.save_checkpoint, []
    T.save_checkpoint = lambda *a, **k: (real(*a, **k), n.append(1),
                                          (_ for _ in ()).throw(KeyboardInterrupt()) if len(n) == 1 else None)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_head(path, HeadConfig(kind="residual", hidden=16), cfg, out=tmp_path / "h", progress=False)
    finally:
        T.save_checkpoint = real
    again, _ = train_head(path, HeadConfig(kind="residual", hidden=16), cfg, out=tmp_path / "h", progress=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


@pytest.mark.parametrize("settings, message", [
    ({"lr": -1}, "lr must be > 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"dev_fraction": 1.5}, r"dev_fraction must be in \[0, 1\)"),
    ({"select_metric": "accuracy"}, "select_metric must be one of"),
    ({"alpha": 2.0}, r"alpha must be a number in \[0, 1\], or .auto."),
])
def test_bad_training_settings_are_refused_by_name(settings, message):
    from projhead.train import TrainError

    with pytest.raises(TrainError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("cfg, message", [
    (dict(loss="byol", init_temperature=0.1), "byol loss has no softmax temperature"),
    (dict(loss="siglip", init_temperature=0.1), "siglip loss has no softmax temperature"),
    (dict(loss="byol", learn_temperature=False), "no temperature to fix"),
    (dict(loss="byol", mined="x", hard_negatives=1), "byol loss uses no negatives"),
    (dict(mined="x"), "--mined x: the set is used through --hard-negatives"),
])
def test_settings_a_loss_would_ignore_are_refused(planted_cache, cfg, message):
    from projhead.train import TrainError

    path = planted_cache(n_groups=10)
    with pytest.raises(TrainError, match=message):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=1, **cfg), progress=False)


def test_sizes_follow_the_data():
    cfg = TrainConfig()
    small, large = cfg.sized(450), cfg.sized(83000)
    assert small.batch_size == 32 and small.epochs == math.ceil(300 / (450 // 32)) and small.patience >= 2
    assert large.batch_size == 2048 and large.epochs == 8 and large.patience == 2
    assert cfg.sized(100).epochs == 100 and cfg.sized(40).epochs == 200  # few pairs: many epochs, capped
    fixed = TrainConfig(batch_size=64, epochs=3, patience=1).sized(450)
    assert TrainConfig().alpha is None  # ALPHA where the head can be interpolated
    assert (fixed.batch_size, fixed.epochs, fixed.patience) == (64, 3, 1)


def test_interpolation_moves_the_head_toward_the_frozen_encoder(planted_cache):
    path = planted_cache(n_groups=30)
    c = open_cache(path)
    for kind, towers in (("linear", "separate"), ("residual", "query"), ("residual", "shared")):
        head, _ = train_head(path, HeadConfig(kind=kind, towers=towers, hidden=16),
                             TrainConfig(epochs=2, batch_size=64, lr=0.02, decision="better"), progress=False)
        x = torch.from_numpy(c.queries[:50])
        with torch.no_grad():
            full = head.query(x)
            head.interpolate(0.3)
            want = torch.nn.functional.normalize(x + 0.3 * (full - x), dim=1)
            torch.testing.assert_close(head.encode_queries(x), want, rtol=1e-5, atol=1e-6)
            head.interpolate(0.0)
            torch.testing.assert_close(head.encode_queries(x), torch.nn.functional.normalize(x, dim=1))


def test_a_canary_that_the_head_hurts_shrinks_it(planted_cache, tmp_path):
    """Trained to undo one rotation, the head scrambles data of another domain whose queries
    already sit on their contexts: the canary catches it and the head is pulled back."""
    train = planted_cache("train.h5", n_groups=40)
    canary = planted_cache("canary.h5", n_groups=20, rotate=0.0, noise=0.3)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, decision="better")
    head, log = train_head(train, HeadConfig(kind="linear", towers="query"), cfg, progress=False)
    free = log["decision"]
    assert free["alpha"] == 0.9 and not free["canaries"]  # the default interpolation, nothing else
    head, log = train_head(train, HeadConfig(kind="linear", towers="query"),
                           TrainConfig(**{**cfg.__dict__, "canaries": [canary], "canary_tolerance": 0.01}),
                           out=tmp_path / "h", progress=False)
    d = log["decision"]
    c = d["canaries"]["canary.h5"]
    assert all("canaries" in e for e in log["epochs"]) and c["frozen"] > 0.9
    if d["kept"] == "head":
        assert d["alpha"] < 1.0 and c["frozen"] - c["head"] <= 0.01
    else:
        assert head.config.passthrough
    assert "canary" in (tmp_path / "h" / "README.md").read_text()


def _train_on_scripted_dev_ranks(planted_cache, monkeypatch, script):
    """Train with the dev ranks of each call (frozen, then epoch 1, 2, ...) given by
    ``script(n_dev)``: the epoch-keeping rule seen in isolation from the training itself."""
    from projhead.batches import DevSet

    calls = []

    def scripted(self, head):
        calls.append(1)
        steps = script(len(self))
        return steps[min(len(calls), len(steps)) - 1]

    monkeypatch.setattr(DevSet, "ranks", scripted)
    _, log = train_head(planted_cache(n_groups=60), HeadConfig(kind="linear", towers="query"),
                        TrainConfig(epochs=6, batch_size=128, lr=0.02, dev_fraction=0.2, patience=1,
                                    decision="better", alpha=1.0), progress=False)
    return log


def test_an_epoch_within_noise_of_the_best_is_kept_over_it(planted_cache, monkeypatch):
    """The run keeps the latest epoch whose dev metric is not below the best by more than
    noise; only epochs clearly below it count toward patience."""
    def script(n):
        half = (np.arange(n) >= n // 2).astype(np.int64)  # half the queries first, half second
        wobble = half.copy()
        wobble[:3], wobble[-2:] = 1, 0  # three queries lose a place, two gain one: a little lower, noise
        return [np.full(n, 5), half, wobble, np.full(n, 4)]

    log = _train_on_scripted_dev_ranks(planted_cache, monkeypatch, script)
    assert len(log["epochs"]) == 3  # epoch 3 is clearly worse: patience 1 ends the run
    assert log["peak_epoch"] == 1 and log["best_epoch"] == 2


def test_within_noise_tells_a_wobble_from_a_drop():
    from projhead.train import within_noise

    rng = np.random.default_rng(0)
    best = rng.integers(0, 5, 2000)
    wobble = best.copy()
    moved = rng.choice(2000, 200, replace=False)
    wobble[moved] = rng.integers(0, 5, 200)  # a tenth of the queries reshuffled
    frozen = best + 3
    assert within_noise(best, best, frozen, TrainConfig())
    assert within_noise(wobble, best, frozen, TrainConfig())
    assert not within_noise(best + 1, best, frozen, TrainConfig())  # clearly below the best
    assert not within_noise(wobble, best, wobble, TrainConfig())  # not clearly above the frozen encoder


def test_a_later_epoch_not_clearly_above_the_frozen_encoder_is_not_kept(planted_cache, monkeypatch):
    """On a few held-out queries every epoch is within noise of the best; a later one is kept
    only while the queries also say it beats the frozen encoder, so small runs keep their best."""
    def script(n):
        frozen = (np.arange(n) >= n // 2).astype(np.int64)
        peak, later = frozen.copy(), frozen.copy()
        peak[-2:] = 0  # two queries better than frozen
        later[-1:] = 0  # one: within noise of the peak, and of the frozen encoder
        return [frozen, peak, later]

    log = _train_on_scripted_dev_ranks(planted_cache, monkeypatch, script)
    assert len(log["epochs"]) == 2 and log["peak_epoch"] == log["best_epoch"] == 1


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": "1"}, {"seed": 1.5}, {"threads": -1}, {"threads": 2.5},
                                 {"lr": "1e-3"}, {"lr": float("nan")}, {"warmup": "0.1"}, {"dev_fraction": "0.2"},
                                 {"lr": Fraction(1, 1000)}])
def test_training_settings_of_the_wrong_type_are_refused_where_they_are_given(bad):
    from projhead.config import TrainError

    with pytest.raises(TrainError, match=f"training setting {next(iter(bad))} must be"):
        TrainConfig(**bad)


def test_one_canary_given_as_a_path_or_a_cache_is_one_canary(planted_cache):
    path = planted_cache(n_groups=3)
    from projhead.config import TrainError

    assert TrainConfig(canaries=str(path)).canaries == [str(path)]  # not one per character
    assert TrainConfig(canaries=path).canaries == [str(path)] and TrainConfig(canaries=None).canaries == []
    assert TrainConfig(canaries=(p for p in [path])).canaries == [str(path)]  # a generator, read once
    with pytest.raises(TrainError, match="canaries must be a list of paths"):
        TrainConfig(canaries=5)
    with pytest.raises(TrainError, match="canaries must be paths of cache files"):
        TrainConfig(canaries=[open_cache(path).subset([0])])  # its contents are not its file's
    assert TrainConfig(seed=np.int64(3)).seed == 3 and type(TrainConfig(seed=np.int64(3)).seed) is int
    cfg = TrainConfig(lr=np.float32(0.001), warmup=np.float64(0.1))  # numpy's numbers: plain floats, as JSON keeps them
    assert type(cfg.lr) is float and type(cfg.warmup) is float and json.dumps([cfg.lr, cfg.warmup])


def test_a_gate_of_another_dimension_is_refused_before_the_head_is_used():
    from projhead.gate import QueryGate
    from projhead.heads import Head, HeadError

    head = Head(HeadConfig(kind="linear", towers="query", in_dim=8))
    with pytest.raises(HeadError, match="dimension 5 cannot sit in front of a head of input dimension 8"):
        head.set_gate(QueryGate(5))
    assert head.gate is None and not head.config.gate
    head.set_gate(QueryGate(8))


def test_the_training_log_of_a_loss_without_a_temperature_is_standard_json(planted_cache, tmp_path):
    path = planted_cache(n_groups=10)
    train_head(path, HeadConfig(kind="residual", hidden=8), TrainConfig(loss="byol", epochs=1, batch_size=16,
                                                                       loss_settings={"hidden": 8}),
               out=tmp_path / "h", progress=False)
    text = (tmp_path / "h" / "train_log.json").read_text()
    log = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert log["epochs"] and all(e["temperature"] is None for e in log["epochs"])
