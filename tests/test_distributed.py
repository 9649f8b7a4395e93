"""projhead cache --ray: a local Ray cluster gives the single-process cache, resumable per shard."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a Ray cluster and loads MiniLM in its actors: a minute or more


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    yield
    ray.shutdown()


def test_ray_cache_equals_the_single_process_cache_and_resumes(tmp_path, data_dir, minilm, ray_cluster):
    from projhead.cache import build_cache, open_cache
    from projhead.data import Pairs, load_pairs
    from projhead.distributed import build_cache_ray

    p = load_pairs("squad-v1.1", "dev", "sentence", data=data_dir)
    n = 120
    ctx, q2c = np.unique(p.q2c[:n], return_inverse=True)
    pairs = Pairs(p.queries[:n], p.query_ids[:n], p.groups[:n], [p.contexts[i] for i in ctx], q2c, p.meta)
    out = tmp_path / "ray.h5"
    r = build_cache_ray(pairs, "st:all-MiniLM-L6-v2", out, settings={"device": "cpu", "precision": "fp32"}, actors=2, shard_size=32,
                        progress=False)
    assert r.status == "written" and r.texts_encoded == n + len(ctx)
    build_cache(pairs, minilm, tmp_path / "single.h5", progress=False)
    a, b = open_cache(out), open_cache(tmp_path / "single.h5")
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"] and a.encoder_info == b.encoder_info
    np.testing.assert_allclose(a.queries, b.queries, atol=1e-5)  # batches differ: float rounding only
    np.testing.assert_allclose(a.contexts, b.contexts, atol=1e-5)
    assert a.query_texts == b.query_texts and (a.q2c == b.q2c).all()
    import h5py

    with h5py.File(out, "r") as f:
        assert f["queries/vectors"].is_virtual and f["contexts/vectors"].is_virtual
    # lose one shard and the joined file: a rerun encodes that shard only
    parts = sorted((tmp_path / "ray.h5.parts").glob("queries-*.h5"))
    assert len(parts) == 4
    parts[1].unlink()
    from projhead.cache import CacheError

    with pytest.raises(CacheError, match=f"shard files: 1 missing, first ray.h5.parts/{parts[1].name}"):
        open_cache(out)
    out.unlink()
    r = build_cache_ray(pairs, "st:all-MiniLM-L6-v2", out, settings={"device": "cpu", "precision": "fp32"}, actors=1, shard_size=32,
                        progress=False)
    assert r.texts_encoded == 32
    np.testing.assert_allclose(open_cache(out).queries, b.queries, atol=1e-5)
    assert build_cache_ray(pairs, "st:all-MiniLM-L6-v2", out, settings={"device": "cpu", "precision": "fp32"},
                           shard_size=32, progress=False).status == "already complete"
