"""FAISS full-corpus search: exact equals the brute-force protocol; ANN checked against exact."""
import numpy as np
import pytest

from conftest import change_text

from projhead.evaluate import dense_scorer, full_corpus
from projhead.search import SearchError, build_index, exact_topk, overlap_at_k, search, topk_metrics


def _data(nq=300, nc=5000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(nc, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q2c = rng.integers(0, nc, size=nq)
    q = c[q2c] + 0.15 * rng.normal(size=(nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, c, q2c


def _chunks(c, n=700):
    return (c[i:i + n] for i in range(0, len(c), n))


def test_flat_index_equals_brute_force_metrics():
    q, c, q2c = _data()
    scores, ids = search(build_index(_chunks(c), c.shape[1], "Flat"), q, k=100, chunk=64)
    got, want = topk_metrics(ids, scores, q2c), full_corpus(dense_scorer(q, c), q2c)
    for key in got:
        assert got[key] == pytest.approx(want[key]), key
    exact = exact_topk(q, _chunks(c), k=100)
    np.testing.assert_array_equal(exact[:, :10], ids[:, :10])
    assert overlap_at_k(ids, exact, 100) > 0.999  # near-ties deep in the list may swap


def test_hnsw_recalls_most_of_the_exact_top_10():
    q, c, q2c = _data()
    exact = exact_topk(q, _chunks(c), k=10)
    scores, ids = search(build_index(_chunks(c), c.shape[1], "HNSW16"), q, k=10, ef_search=64)
    assert overlap_at_k(ids, exact, 10) > 0.8
    assert topk_metrics(ids, scores, q2c)["R@1"] > 0.9


def test_ivf_recall_grows_with_nprobe_and_is_exact_with_every_list():
    q, c, q2c = _data()
    exact = exact_topk(q, _chunks(c), k=10)
    index = build_index(_chunks(c), c.shape[1], "IVF32,Flat", train_size=2000)  # trained on 2000 rows only
    recall = [overlap_at_k(search(index, q, k=10, nprobe=n)[1], exact, 10) for n in (1, 4, 32)]
    assert recall[0] < recall[1] < recall[2] == 1.0


def test_bad_index_descriptions_are_refused():
    with pytest.raises(SearchError, match="bad FAISS index description 'Nope12'"):
        build_index([np.zeros((4, 8), np.float32)], 8, "Nope12")
    index = build_index([np.eye(8, dtype=np.float32)], 8, "Flat")
    with pytest.raises(SearchError, match="nprobe applies to IVF indexes only"):
        search(index, np.eye(8, dtype=np.float32), k=2, nprobe=4)
    with pytest.raises(SearchError, match="ef_search applies to HNSW indexes only"):
        search(index, np.eye(8, dtype=np.float32), k=2, ef_search=4)
    wrapped = build_index([np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)], 8, "PCA4,HNSW8")
    search(wrapped, np.eye(8, dtype=np.float32), k=2, ef_search=4)  # a graph behind a transform takes it


def test_search_settings_without_an_index_are_refused(planted_cache, capsys):
    from projhead.cli import main

    path = str(planted_cache(n_groups=4))
    for option in ("--nprobe", "--ef-search"):
        assert main(["eval", path, option, "8"]) == 2
        assert "set a FAISS index's search: pass --index" in capsys.readouterr().err


def test_eval_cli_with_an_index(planted_cache, tmp_path, capsys):
    import json

    from projhead.cli import main

    path = planted_cache(n_groups=20)
    assert main(["eval", str(path), "--json-out", str(tmp_path / "a.json")]) == 0
    assert main(["eval", str(path), "--index", "Flat", "--json-out", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())["results"]["frozen"]["full_corpus"]
    b = json.loads((tmp_path / "b.json").read_text())["results"]["frozen"]["full_corpus"]
    assert a == pytest.approx(b)
    assert main(["eval", str(path), "--index", "Bogus"]) == 2
    capsys.readouterr()
    assert main(["eval", str(path), "--index", "HNSW8"]) == 0  # FAISS's default search: said
    assert "FAISS's default search, efSearch 16" in capsys.readouterr().out
    assert main(["eval", str(path), "--index", "HNSW8", "--ef-search", "64"]) == 0
    assert "default search" not in capsys.readouterr().out
    assert main(["eval", str(path), "--index", "IDMap,Flat"]) == 2  # an index FAISS cannot add to without ids
    assert "cannot take the vectors" in capsys.readouterr().err


def test_streamed_eval_equals_the_in_memory_protocols(planted_cache, monkeypatch):
    import projhead.cache_reader as pc
    from projhead.cache import open_cache
    from projhead.evaluate import evaluate_cache, evaluate_streamed
    from projhead.heads import Head, HeadConfig

    path = planted_cache(n_groups=30)
    c = open_cache(path)
    head = Head(HeadConfig(kind="linear", in_dim=c.dim, init="random"))
    want = evaluate_cache(c, head=head)  # brute force, every context in memory
    loads = []
    real = pc.open_cache
    monkeypatch.setattr(pc, "open_cache", lambda p, *a, **k: (loads.append(k.get("load", True)), real(p, *a, **k))[1])
    got = evaluate_streamed(path, head=head, index="Flat", block=500, chunk=37)  # chunks that do not divide anything
    assert loads == [False]  # the vectors are never loaded whole
    for system in ("frozen", "head"):
        for protocol in ("out_of_500", "full_corpus"):
            assert got[system][protocol] == pytest.approx(want[system][protocol], abs=1e-12), (system, protocol)


def test_streamed_eval_checks_the_texts_and_refuses_self_matches(planted_cache, tmp_path):
    import shutil

    import h5py

    from projhead.cache import CacheError
    from projhead.evaluate import evaluate_streamed

    path = planted_cache(n_groups=5)
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        change_text(f, "contexts/text", 0, "changed")
    with pytest.raises(CacheError, match="do not match their checksum"):
        evaluate_streamed(bad, index="Flat")
