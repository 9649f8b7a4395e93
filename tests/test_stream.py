"""Out-of-core training: the cache is read in chunks."""
import numpy as np
import pytest

from projhead.cache import open_cache
from projhead.heads import HeadConfig
from projhead.batches import StreamSource
from projhead.train import TrainConfig, TrainError, train_head


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streaming_training_learns_the_planted_rotation(tmp_path, dtype):
    from projhead.cache import build_cache

    from conftest import PlantedEncoder, planted_pairs

    pairs = planted_pairs(n_groups=60)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", dtype=dtype, progress=False)
    head, log = train_head(tmp_path / "c.h5", HeadConfig(kind="linear", towers="query"),
                           TrainConfig(stream=True, stream_chunk=50, stream_buffer=2, epochs=30, batch_size=64,
                                       lr=0.02, patience=30, dev_fraction=0.2), progress=False)
    assert log["n_dev"] > 0 and log["n_train"] + log["n_dev"] == 600
    assert head.info["metrics"]["head"]["top1"] > log["frozen_dev"]["top1"] + 0.3


def test_an_epoch_visits_each_training_row_at_most_once_and_never_a_dev_row(planted_cache):
    path = planted_cache(n_groups=40)
    cfg = TrainConfig(stream=True, stream_chunk=37, stream_buffer=3, batch_size=32, dev_fraction=0.2)
    src = StreamSource(open_cache(path, load=False), cfg)
    loads = []
    real = src._load
    src._load = lambda ids: (loads.append(len(ids)), real(ids))[1]
    seen = np.concatenate([b.context_ids.numpy() for b in src.epoch(np.random.default_rng(0))])
    c = open_cache(path)
    rows_per_context = np.bincount(c.q2c)
    counts = np.bincount(seen, minlength=len(c.contexts))
    assert (counts <= rows_per_context).all()  # no pair twice
    assert len(seen) == src.steps_per_epoch * 32 and len(seen) > src.n_train - 32
    dev_rows = np.flatnonzero(~src.train_mask)
    assert len(dev_rows) and len(src.dev) == len(dev_rows)
    assert not set(seen.tolist()) & set(c.q2c[dev_rows].tolist())  # no dev context is trained on
    assert max(loads) <= 3  # never more than stream_buffer chunks in memory
    # the vectors of a batch are the cache's
    b = next(src.epoch(np.random.default_rng(1)))
    np.testing.assert_array_equal(b.c.numpy(), c.contexts[b.context_ids.numpy()])
    src.f.close()


def test_streaming_refuses_mined_sets(planted_cache):
    with pytest.raises(TrainError, match="--stream trains on plain pairs"):
        train_head(planted_cache(n_groups=4), HeadConfig(kind="linear"),
                   TrainConfig(stream=True, mined="semantic", hard_negatives=1), progress=False)


def test_stream_batches_keep_groups_together(planted_cache):
    """--batching group is honoured when streaming: a batch holds whole groups of its buffer."""
    path = planted_cache(n_groups=40)
    c = open_cache(path)
    spans = {}
    for batching in ("group", "random"):
        src = StreamSource(open_cache(path, load=False),
                            TrainConfig(stream=True, stream_chunk=100, stream_buffer=8, batch_size=40,
                                        dev_fraction=0.1, batching=batching))
        ctx_group = {ci: g for ci, g in zip(c.q2c, c.groups)}
        spans[batching] = np.mean([len({ctx_group[i] for i in b.context_ids.tolist()})
                                   for b in src.epoch(np.random.default_rng(0))])
        src.f.close()
    assert spans["group"] <= 5 < spans["random"]  # 10 rows a group: 4-5 groups a batch, not ~20


def test_the_streamed_file_is_closed_when_training_fails(planted_cache, monkeypatch):
    import projhead.train as T

    opened = []

    class Failing(StreamSource):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            opened.append(self.f)

        def epoch(self, rng):
            raise RuntimeError("disk gone")

    monkeypatch.setattr(T, "StreamSource", Failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        train_head(planted_cache(n_groups=10), HeadConfig(kind="linear"), TrainConfig(stream=True, epochs=2),
                   progress=False)
    assert len(opened) == 1 and not opened[0].id.valid


def test_the_streamed_file_is_closed_when_the_split_is_refused(planted_cache, monkeypatch):
    import h5py

    opened = []
    real = h5py.File

    def spy(*a, **k):
        opened.append(real(*a, **k))
        return opened[-1]

    monkeypatch.setattr(h5py, "File", spy)
    path = planted_cache(n_groups=10)
    with pytest.raises(TrainError, match="no training rows left"):
        StreamSource(open_cache(path, load=False), TrainConfig(stream=True, dev_fraction=0.999999))
    assert opened and not any(f.id.valid for f in opened)


def test_the_stream_split_keeps_groups_that_share_a_gold_context_together(tmp_path):
    from conftest import linked_cache

    # each odd article has a question whose gold is the first context of the article before it
    linked_cache(tmp_path / "c.h5", 40, [(g, 4 * (g - 1)) for g in range(1, 40, 2)])
    c = open_cache(tmp_path / "c.h5", load=False)
    for seed in range(6):
        src = StreamSource(c, TrainConfig(stream=True, dev_fraction=0.3, seed=seed))
        gold = src.q2c
        assert (~src.train_mask).any() and not set(gold[~src.train_mask]) & set(gold[src.train_mask])
        src.close()
