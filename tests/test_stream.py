"""Out-of-core training: the cache is read in chunks."""
import numpy as np
import pytest

from projhead import h5strings
from projhead.cache import open_cache
from projhead.heads import HeadConfig
from projhead.batches import DevSet
from projhead.stream import StreamSource
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
    if dtype == "float32":  # the card says what the held-out queries were ranked against: their split's contexts
        head.save(tmp_path / "h")
        card = (tmp_path / "h" / "README.md").read_text()
        assert "against the held-out split's own contexts (streamed training)" in card
        assert "against all its contexts" not in card


def test_an_epoch_visits_each_training_row_at_most_once_and_never_a_dev_row(planted_cache):
    path = planted_cache(n_groups=40)
    cfg = TrainConfig(stream=True, stream_chunk=37, stream_buffer=3, batch_size=32, dev_fraction=0.2)
    src = StreamSource(open_cache(path, load=False), cfg)
    loads = []
    real = src._load
    src._load = lambda ids, left=None: (loads.append(len(ids)), real(ids, left))[1]
    seen = np.concatenate([b.context_ids.numpy() for b in src.epoch(np.random.default_rng(0))])
    c = open_cache(path)
    rows_per_context = np.bincount(c.q2c)
    counts = np.bincount(seen, minlength=len(c.contexts))
    assert (counts <= rows_per_context).all()  # no pair twice
    assert len(seen) == src.steps_per_epoch * 32 and len(seen) > src.n_train - 32
    dev_rows = src.dev_rows
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


def _long_cache(path, rows: int, dim: int = 8):
    """A cache of ``rows`` pairs written through the cache writer (groups of 100 rows), with
    no texts to encode: long enough that a per-row array of the whole cache would show."""
    from projhead.cache import CacheWriter, cache_attrs

    rng = np.random.default_rng(0)
    info = {"name": "synthetic:test", "settings": {}, "weights_sha256": "", "build": {}, "versions": {}}
    with CacheWriter(path, rows, rows, dim, "float16") as w:
        for a in range(0, rows, 10_000):
            b = min(a + 10_000, rows)
            w.write("queries/vectors", a, rng.normal(size=(b - a, dim)))
            w.write("contexts/vectors", a, rng.normal(size=(b - a, dim)))
            w.write("queries/context", a, np.arange(a, b, dtype=np.int64))
            for key, prefix in (("queries/text", "q"), ("queries/id", "id"), ("contexts/text", "c")):
                w.write(key, a, [f"{prefix}{i}" for i in range(a, b)])
            w.write("queries/group", a, [f"g{i // 100}" for i in range(a, b)])
        w.finish(cache_attrs({"dataset": "synthetic", "split": "train", "granularity": "sentence"}, info, "-", 0.0))
    return path


STREAM = dict(stream=True, stream_chunk=1000, stream_buffer=2, batch_size=256, dev_fraction=0.03)


def test_streaming_never_reads_a_whole_column(tmp_path, monkeypatch):
    """Every read of a per-row dataset while streaming covers one chunk (or the dev split):
    no column of the whole cache (gold contexts, groups, a mask) is held."""
    import h5py

    rows = 20_000
    path = _long_cache(tmp_path / "long.h5", rows)
    reads = []

    class Recorded:
        def __init__(self, dset):
            self.dset, self.shape, self.dtype = dset, dset.shape, dset.dtype

        def __getitem__(self, key):
            out = self.dset[key]
            reads.append((self.dset.name, len(out)))
            return out

    class RecordingFile(h5py.File):
        def __getitem__(self, key):
            item = super().__getitem__(key)
            return Recorded(item) if isinstance(item, h5py.Dataset) else item

    real = h5strings.PackedText.__getitem__

    def recorded_text(column, key):  # text columns are groups of datasets: recorded by rows
        out = real(column, key)
        reads.append((column.name, len(out) if isinstance(out, np.ndarray) else 1))
        return out

    monkeypatch.setattr(h5py, "File", RecordingFile)
    monkeypatch.setattr(h5strings.PackedText, "__getitem__", recorded_text)
    src = StreamSource(open_cache(path, load=False), TrainConfig(**STREAM))
    n = sum(len(b.context_ids) for b in src.epoch(np.random.default_rng(0)))
    src.f.close()
    assert n > rows * 0.9 and {name for name, _ in reads} >= {"/queries/vectors", "/queries/context", "/queries/group",
                                                               "/contexts/vectors"}
    assert len(src.dev) and max(k for _, k in reads) <= max(1000, len(src.dev))


def test_streaming_memory_does_not_grow_with_the_cache(tmp_path):
    """Peak Python/numpy memory of an epoch is the same for a cache 4 times longer with the same
    chunk and buffer settings (a per-row array would grow it 4x); setting up holds the distinct
    (group, gold context) pairs for the split, 16 bytes each and sorted, and nothing more per row."""
    import tracemalloc

    setup, epoch = [], []
    for rows in (20_000, 80_000):
        path = _long_cache(tmp_path / f"long{rows}.h5", rows)
        for _ in range(2):  # the first run also pays for one-off imports and caches
            tracemalloc.start()
            src = StreamSource(open_cache(path, load=False), TrainConfig(**STREAM))
            made = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            for _ in src.epoch(np.random.default_rng(0)):
                pass
            src.f.close()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        setup.append(made)
        epoch.append(peak)
    assert epoch[1] < 1.5 * epoch[0], epoch  # with per-row arrays of the cache: 2x
    assert setup[1] - setup[0] < 100 * 60_000, setup  # the split's pairs, and their sorting


@pytest.mark.parametrize("batching", ["group", "random"])
def test_stream_batches_are_the_in_memory_cache_read_as_documented(planted_cache, batching):
    """The batches and dev split of a streamed epoch, rebuilt from the whole cache in memory as
    the class documents them: chunks shuffled, ``stream_buffer`` at a time with the rows left
    over, ordered by ``epoch_order`` over the buffer's groups; the dev split is ``_in_dev``."""
    from projhead.batches import epoch_order, joined_by_gold
    from projhead.stream import _group_keys, _in_dev

    path = planted_cache(n_groups=40)
    c = open_cache(path)
    cfg = TrainConfig(stream=True, stream_chunk=37, stream_buffer=3, batch_size=32, dev_fraction=0.2,
                      batching=batching)
    src = StreamSource(open_cache(path, load=False), cfg)
    assert joined_by_gold(c.groups, c.q2c) == c.groups  # no gold context shared by two groups
    dev = _in_dev(_group_keys(c.groups), 0.2, cfg.seed)
    np.testing.assert_array_equal(src.dev_rows, np.flatnonzero(dev))
    np.testing.assert_array_equal(src.dev.q, c.queries[dev])
    src.dev.block = 7  # ranked a few rows at a time: the same ranks as all at once
    whole = DevSet(src.dev.q, src.dev.c, src.dev.gold)
    np.testing.assert_array_equal(src.dev.ranks(None), whole.ranks(None))
    keys = _group_keys(c.groups)
    rng = np.random.default_rng(3)
    order, want, left = rng.permutation(len(src.chunks)), [], np.zeros(0, np.int64)
    for g in range(0, len(order), 3):
        rows = np.concatenate([left] + [np.arange(*src.chunks[i]) for i in order[g:g + 3]])
        rows = rows[~dev[rows]] if len(rows) else rows
        rows = rows[epoch_order(np.arange(len(rows)), np.unique(keys[rows], return_inverse=True)[1].reshape(-1),
                                batching, rng)]
        full = len(rows) // 32 * 32
        want += [rows[s:s + 32] for s in range(0, full, 32)]
        left = rows[full:]
    got = list(src.epoch(np.random.default_rng(3)))
    assert len(got) == src.steps_per_epoch and len(want) >= len(got)
    for b, rows in zip(got, want):
        np.testing.assert_array_equal(b.q.numpy(), c.queries[rows])
        np.testing.assert_array_equal(b.c.numpy(), c.contexts[c.q2c[rows]])
        np.testing.assert_array_equal(b.context_ids.numpy(), c.q2c[rows])
    src.f.close()


def test_gather_rows_reads_any_row_order_a_block_at_a_time(tmp_path):
    import h5py

    from projhead.stream import gather_rows

    x = np.random.default_rng(0).normal(size=(50_000, 4)).astype(np.float16)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x
        rng = np.random.default_rng(1)
        near = 2000 + rng.integers(0, 300, size=900)  # close together: contiguous reads
        far = rng.integers(0, 50_000, size=900)  # spread out: sorted fancy reads
        for rows in (near, far, np.concatenate([far, near]), near[:0]):
            out = gather_rows(f["x"], rows, np.empty((len(rows), 4), np.float16), block=128)
            np.testing.assert_array_equal(out, x[rows])


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

    def refused(*a):
        raise TrainError("no split")

    monkeypatch.setattr(h5py, "File", spy)
    monkeypatch.setattr(StreamSource, "_dev_contexts", refused)
    path = planted_cache(n_groups=10)
    with pytest.raises(TrainError, match="no split"):
        StreamSource(open_cache(path, load=False), TrainConfig(stream=True))
    assert opened and not any(f.id.valid for f in opened)


def test_the_stream_split_never_holds_out_every_group(planted_cache):
    one = open_cache(planted_cache("one.h5", n_groups=1), load=False)  # one article: drawn or not, by seed
    many = open_cache(planted_cache("many.h5", n_groups=10), load=False)
    for seed in range(6):  # some seeds drew the only group and left nothing to train on
        src = StreamSource(one, TrainConfig(stream=True, seed=seed))
        assert len(src.dev_rows) == 0 and src.n_train == len(src.Kd)
        src.close()
    src = StreamSource(many, TrainConfig(stream=True, dev_fraction=0.999999))  # every group drawn: none held out
    assert len(src.dev_rows) == 0 and src.n_train == len(src.Kd)
    src.close()


def test_the_stream_split_keeps_groups_that_share_a_gold_context_together(tmp_path):
    from conftest import linked_cache

    # each odd article has a question whose gold is the first context of the article before it
    linked_cache(tmp_path / "c.h5", 40, [(g, 4 * (g - 1)) for g in range(1, 40, 2)])
    c = open_cache(tmp_path / "c.h5", load=False)
    for seed in range(6):
        src = StreamSource(c, TrainConfig(stream=True, dev_fraction=0.3, seed=seed))
        gold, dev = open_cache(tmp_path / "c.h5").q2c, np.zeros(len(src.Kd), bool)
        dev[src.dev_rows] = True
        assert dev.any() and not set(gold[dev]) & set(gold[~dev])
        src.close()
