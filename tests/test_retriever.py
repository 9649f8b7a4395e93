"""The hybrid retriever (bm25s + FAISS): its ranking against the fused ranking of every
context, its refusals, and a retriever saved and loaded again."""
import json
from pathlib import Path

import numpy as np
import pytest

from projhead.fusion import FusionError, FusionSpec, bm25_scorer, fuse
from test_fusion import _head_on


@pytest.mark.parametrize("how", ["zscore", "minmax", "fixed"])
def test_retriever_equals_the_fused_ranking_of_every_context(planted_cache, how):
    pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=8))
    head = _head_on(cache)
    spec = FusionSpec(weight=0.4, normalisation=how)
    r = HybridRetriever(cache.context_texts, cache.contexts, head=head, spec=spec)
    qt, qv = cache.query_texts[:20], cache.queries[:20]
    ids, scores = r.search(qt, qv, k=5, depth=len(cache.contexts))
    b = bm25_scorer(qt, cache.context_texts)(np.arange(20))
    want = fuse(head.encode_queries(qv) @ head.encode_contexts(cache.contexts).T, b, spec)
    for i in range(20):
        order = np.lexsort((np.arange(want.shape[1]), -want[i]))[:5]
        np.testing.assert_array_equal(ids[i], order)
        np.testing.assert_allclose(scores[i], want[i, order], rtol=1e-4, atol=1e-4)
    ids2, _ = r.search(qt, qv, k=3, depth=4)  # a shallow search: the top-4 of each side, scored the same way
    assert (ids2 >= 0).all() and ids2.shape == (20, 3)


def test_retriever_refuses_mismatched_inputs(planted_cache):
    pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=3))
    with pytest.raises(FusionError, match="one vector per text"):
        HybridRetriever(cache.context_texts[:-1], cache.contexts)
    r = HybridRetriever(cache.context_texts, cache.contexts)
    with pytest.raises(FusionError, match="query texts"):
        r.search(cache.query_texts[:2], cache.queries[:3])
    for bad in ({"weight": -0.5}, {"weight": 2}, {"depth": 0}, {"k": -1}):
        with pytest.raises(FusionError, match="weight must be a number in|depth one >= 1"):
            r.search(cache.query_texts[:2], cache.queries[:2], **bad)
    with pytest.raises(FusionError, match="weight must be a number in"):
        fuse(np.ones((1, 3)), np.ones((1, 3)), weight=-1)
    bad = cache.contexts.copy()
    bad[2, 5] = np.nan
    with pytest.raises(FusionError, match="context vectors: row 2 holds NaN"):
        HybridRetriever(cache.context_texts, bad)
    q = cache.queries[:2].copy()
    q[1, 0] = np.inf
    with pytest.raises(FusionError, match="query vectors: row 1 holds NaN or Inf"):
        r.search(cache.query_texts[:2], q)
    with pytest.raises(FusionError, match="dimension"):
        r.search(cache.query_texts[:2], cache.queries[:2, :-1])
    with pytest.raises(FusionError, match="no texts to search"):
        HybridRetriever([], np.zeros((0, cache.dim), np.float32))
    with pytest.raises(FusionError, match="none of the 2 texts has a token left"):
        HybridRetriever(["", "the of"], cache.contexts[:2])


def test_retriever_returns_k_texts_when_k_is_above_the_depth(planted_cache):
    """Each side's top ``depth`` is at least ``k``: asking for more texts than the depth still
    fills every query's k places (the corpus has more than k texts)."""
    pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=8))
    n = len(cache.contexts)
    r = HybridRetriever(cache.context_texts, cache.contexts)
    k = n - 2
    ids, scores = r.search(cache.query_texts[:10], cache.queries[:10], k=k, depth=3)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    full, _ = r.search(cache.query_texts[:10], cache.queries[:10], k=k, depth=n)
    np.testing.assert_array_equal(ids, full)  # depth >= k reaches the whole ranking's top k here
    vectors = r.vectors  # for a Flat index, the index's own copy: it outlives the retriever
    del r
    import gc

    gc.collect()
    np.testing.assert_array_equal(vectors, cache.contexts)
    assert not vectors.flags.writeable


# -- saved and loaded ------------------------------------------------------------------


@pytest.mark.parametrize("factory, with_head", [("Flat", True), ("HNSW32", False)])
def test_a_saved_retriever_searches_as_the_one_built(planted_cache, tmp_path, factory, with_head):
    pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=8))
    head = _head_on(cache) if with_head else None
    spec = FusionSpec(weight=0.6, normalisation="zscore")
    r = HybridRetriever(cache.context_texts, cache.contexts, head=head, spec=spec, factory=factory)
    qt, qv = cache.query_texts, cache.queries
    r.save(tmp_path / "ret")
    names = sorted(p.name for p in (tmp_path / "ret").rglob("*"))
    assert "retriever.json" in names and "index.faiss" in names
    assert ("vectors.npy" in names) is (factory != "Flat")  # a Flat index keeps the vectors itself
    assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
    assert not [p.name for p in (tmp_path / "ret").iterdir() if ".tmp" in p.name]  # no temporary folder left
    loaded = HybridRetriever.load(tmp_path / "ret", head=head)
    assert loaded.spec == r.spec and loaded.factory == factory
    np.testing.assert_array_equal(np.asarray(loaded.vectors), np.asarray(r.vectors))
    for kw in ({"k": 5, "depth": 10}, {"k": 3, "depth": len(cache.contexts), "weight": 0.3}):
        want_ids, want = r.search(qt, qv, **kw)
        ids, scores = loaded.search(qt, qv, **kw)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6)


def test_a_saved_retriever_is_loaded_only_with_the_head_it_was_built_with(planted_cache, tmp_path):
    pytest.importorskip("faiss")
    torch = pytest.importorskip("torch")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=4))
    head = _head_on(cache)
    HybridRetriever(cache.context_texts, cache.contexts, head=head).save(tmp_path / "with")
    HybridRetriever(cache.context_texts, cache.contexts).save(tmp_path / "without")
    with pytest.raises(FusionError, match="went through a head: give the same head"):
        HybridRetriever.load(tmp_path / "with")
    other = _head_on(cache)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(FusionError, match="another head than the one given"):
        HybridRetriever.load(tmp_path / "with", head=other)
    with pytest.raises(FusionError, match="built without a head"):
        HybridRetriever.load(tmp_path / "without", head=head)
    HybridRetriever.load(tmp_path / "with", head=_head_on(cache))  # the same weights, made again


def test_a_damaged_saved_retriever_is_refused_naming_the_file(planted_cache, tmp_path):
    pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=4))
    r = HybridRetriever(cache.context_texts, cache.contexts)
    with pytest.raises(FusionError, match="not a saved retriever"):
        HybridRetriever.load(tmp_path)
    for damage, message in (
            (lambda d: (d / "index.faiss").unlink(), r"index\.faiss: cannot read it"),
            (lambda d: (d / "mean.npy").write_bytes(b"not numpy"), r"mean\.npy: cannot read it"),
            (lambda d: np.save(d / "second.npy", np.zeros((2, 2))), r"second\.npy: .*not numbers of shape"),
            (lambda d: (d / "retriever.json").write_text("{"), r"retriever\.json: malformed JSON"),
            (lambda d: _edit(d, n=3), "the FAISS index holds"),
            (lambda d: _edit(d, version=9), "format version 9"),
            (lambda d: _edit(d, spec={"weight": 7}), r"retriever\.json: .*weight"),
            (lambda d: (d / "bm25" / "params.index.json").unlink(), r"bm25: cannot read it"),
            (lambda d: _edit(d, vectors_in_index=False), r"vectors\.npy: cannot read it .*says the vectors are not in")):
        folder = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        r.save(folder)
        damage(folder)
        with pytest.raises(FusionError, match=message):
            HybridRetriever.load(folder)


def _edit(folder, **changes):
    record = json.loads((folder / "retriever.json").read_text())
    record.update(changes)
    (folder / "retriever.json").write_text(json.dumps(record))


def test_saving_replaces_an_earlier_retriever_whole_and_refuses_other_folders(planted_cache, tmp_path, monkeypatch):
    faiss = pytest.importorskip("faiss")
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=6))
    small = HybridRetriever(cache.context_texts[:5], cache.contexts[:5], factory="HNSW32")
    full = HybridRetriever(cache.context_texts, cache.contexts)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FusionError, match="not a saved retriever"):
        full.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    small.save(tmp_path / "ret")

    def failing(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(faiss, "write_index", failing)
    with pytest.raises(FusionError, match="cannot save the retriever.*as it was"):
        full.save(tmp_path / "ret")
    assert HybridRetriever.load(tmp_path / "ret").bm25.n == 5  # the earlier one, whole
    monkeypatch.undo()
    (tmp_path / "ret" / "texts.jsonl").write_text("the texts, kept beside it")  # a user's file beside the index
    (tmp_path / "link").symlink_to(tmp_path / "ret")
    full.save(tmp_path / "link")
    loaded = HybridRetriever.load(tmp_path / "ret")
    assert loaded.bm25.n == len(cache.contexts) and not (tmp_path / "ret" / "vectors.npy").exists()
    assert (tmp_path / "ret" / "texts.jsonl").read_text() == "the texts, kept beside it" and (tmp_path / "link").is_symlink()
    assert not [p.name for p in (tmp_path / "ret").iterdir() if ".tmp" in p.name]
    (tmp_path / "ret" / ".retriever.tmp1").mkdir()  # a killed save's: passed over, then removed
    full.save(tmp_path / "ret")
    assert not (tmp_path / "ret" / ".retriever.tmp1").exists()


def test_a_save_stopped_while_its_files_go_in_leaves_the_earlier_retriever(planted_cache, tmp_path, monkeypatch):
    """Swapping files in: the earlier retriever's go aside first and come back if anything stops
    it (an error, Ctrl-C) or, after a kill, when the folder is next loaded or saved into; a file
    of the user's where a retriever would write is refused, never replaced."""
    pytest.importorskip("faiss")
    import os

    import projhead.retriever as rt
    from projhead.cache import open_cache
    from projhead.retriever import HybridRetriever

    cache = open_cache(planted_cache(n_groups=6))
    small = HybridRetriever(cache.context_texts[:5], cache.contexts[:5])
    full = HybridRetriever(cache.context_texts, cache.contexts, factory="HNSW32")
    ret = tmp_path / "ret"
    small.save(ret)
    (ret / "texts.jsonl").write_text("mine")
    real, calls = os.replace, []

    def stopped(a, b):
        new = Path(a).parent.name.startswith(".retriever.tmp")  # a new file going in
        calls.append(new)
        if new and sum(calls) == 2:  # the earlier files are aside, one new file is in
            raise KeyboardInterrupt
        real(a, b)
    monkeypatch.setattr(rt.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        full.save(ret)
    monkeypatch.undo()
    # record, index, bm25, mean and second went aside, two new files in (the second stopped), five back
    assert calls == [False] * 5 + [True] * 2 + [False] * 5
    assert HybridRetriever.load(ret).bm25.n == 5 and (ret / "texts.jsonl").read_text() == "mine"
    assert sorted(p.name for p in ret.iterdir() if p.name.startswith(".")) == []
    # killed between the two: the earlier files aside, a new one in, no record
    aside = ret / ".retriever.old.tmp999"
    aside.mkdir()
    for name in ("retriever.json", "index.faiss"):
        os.replace(ret / name, aside / name)
    (ret / "index.faiss").write_bytes(b"half of a new save")
    assert HybridRetriever.load(ret).bm25.n == 5 and not aside.exists()
    # a file of the user's where this retriever would write
    (ret / "vectors.npy").write_bytes(b"the user's")  # a Flat retriever writes none: it stays
    small.save(ret)
    assert (ret / "vectors.npy").read_bytes() == b"the user's"
    with pytest.raises(FusionError, match="holds vectors.npy, not the saved retriever's"):
        full.save(ret)
    assert HybridRetriever.load(ret).bm25.n == 5
