import json

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
real, n = T._save_checkpoint, [0]
def save(*a, **k):
    n[0] += 1
    if {mid_epoch} and n[0] == {kill_after} + 1:
        os.kill(os.getpid(), signal.SIGKILL)  # an epoch's work done, its checkpoint not written
    real(*a, **k)
    if not {mid_epoch} and n[0] == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)  # right after a checkpoint
T._save_checkpoint = save
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
    argv = ["train", str(path), "--kind", "residual", "--hidden", "16", "--dropout", "0.1", "--epochs", "5",
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


def test_checkpoint_of_other_settings_is_refused(planted_cache, tmp_path):
    from projhead.train import TrainError

    path = planted_cache(n_groups=10)
    import projhead.train as T

    real = T._save_checkpoint
    T._save_checkpoint = lambda *a, **k: (real(*a, **k), (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16), out=tmp_path / "h",
                       progress=False)
    finally:
        T._save_checkpoint = real
    with pytest.raises(TrainError, match="checkpoint of a run with other settings \\(train\\)"):
        train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16, lr=0.1), out=tmp_path / "h",
                   progress=False)
    train_head(path, HeadConfig(kind="linear"), TrainConfig(epochs=3, batch_size=16, lr=0.1), out=tmp_path / "h",
               progress=False, restart=True)
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
