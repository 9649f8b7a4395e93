"""Bring your own vectors: a cache from vectors a user already has, in three file formats."""
import json

import numpy as np
import pytest

from projhead.cache import CacheError, build_cache, open_cache
from projhead.encoders import EncoderError, get_encoder, read_vector_file

from conftest import PlantedEncoder, planted_pairs


def _vectors(pairs):
    """The planted encoder's vectors, as a user with an embedding API would have them."""
    enc = PlantedEncoder(pairs, dim=8)
    return enc, enc.encode(pairs.queries, role="query"), enc.encode(pairs.contexts, role="context")


def _write(kind, tmp_path, pairs, qv, cv, by_id=False):
    qkeys = pairs.query_ids if by_id else pairs.queries
    key = "id" if by_id else "text"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        q = tmp_path / "q.parquet"
        pq.write_table(pa.table({key: qkeys, "vector": [list(v) for v in qv]}), q)
        c = tmp_path / "c.parquet"
        pq.write_table(pa.table({"text": pairs.contexts, "role": ["document"] * len(cv),
                                 "embedding": [list(v) for v in cv]}), c)
        return [q, c]
    if kind == "npy":
        np.save(tmp_path / "all.npy", np.concatenate([qv, cv]))
        rows = [{key: k, "role": "query"} for k in qkeys] + [{"text": t, "role": "context"} for t in pairs.contexts]
        (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        return [tmp_path / "all.npy"]
    import h5py

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["vectors"] = np.concatenate([qv, cv])
        f["text"] = list(pairs.queries) + list(pairs.contexts)
        f["role"] = ["query"] * len(qv) + ["context"] * len(cv)
    return [tmp_path / "v.h5"]


@pytest.mark.parametrize("kind, by_id", [("parquet", False), ("parquet", True), ("npy", False), ("npy", True),
                                         ("h5", False)])
def test_imported_vectors_make_the_same_cache_as_encoding(tmp_path, kind, by_id):
    pairs = planted_pairs(n_groups=6)
    enc, qv, cv = _vectors(pairs)
    files = _write(kind, tmp_path, pairs, qv, cv, by_id)
    build_cache(pairs, enc, tmp_path / "encoded.h5", progress=False)
    imported = get_encoder("vectors:planted-api", files=files, ids=dict(zip(pairs.query_ids, pairs.queries)))
    build_cache(pairs, imported, tmp_path / "imported.h5", progress=False)
    a, b = open_cache(tmp_path / "encoded.h5"), open_cache(tmp_path / "imported.h5")
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    assert b.encoder == "vectors:planted-api" and a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_cli_imports_a_projhead_cache_and_trains_on_it(tmp_path, planted_cache):
    from projhead.cli import main

    src = planted_cache(n_groups=10)
    data = tmp_path / "pairs.jsonl"
    c = open_cache(src)
    data.write_text("\n".join(json.dumps({"query": q, "context": c.context_texts[i], "id": qid, "group": g})
                              for q, i, qid, g in zip(c.query_texts, c.q2c, c.query_ids, c.groups)))
    out = tmp_path / "imported.h5"
    assert main(["cache", "--dataset", "jsonl", "--data", str(data), "--encoder", "vectors:planted", "--vectors",
                 str(src), "--out", str(out), "--quiet", "--no-normalize"]) == 0
    np.testing.assert_array_equal(open_cache(out).queries, c.queries)
    assert main(["train", str(out), "--out", str(tmp_path / "head"), "--epochs", "1", "--batch-size", "16",
                 "--quiet"]) == 0


def test_bad_vector_files_are_named(tmp_path):
    pairs = planted_pairs(n_groups=2)
    _, qv, cv = _vectors(pairs)
    np.save(tmp_path / "v.npy", qv)
    with pytest.raises(EncoderError, match="v.npy: a .npy file needs v.jsonl beside it"):
        read_vector_file(tmp_path / "v.npy")
    (tmp_path / "v.jsonl").write_text(json.dumps("only one"))
    with pytest.raises(EncoderError, match="v.jsonl: 1 rows for the 20 vectors of v.npy"):
        read_vector_file(tmp_path / "v.npy")
    qv[3, 2] = np.nan
    np.save(tmp_path / "n.npy", qv)
    (tmp_path / "n.jsonl").write_text("\n".join(json.dumps(q) for q in pairs.queries))
    with pytest.raises(EncoderError, match="n.npy: 1 vectors hold NaN or Inf \\(first: row 4\\)"):
        read_vector_file(tmp_path / "n.npy")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(EncoderError, match="unknown vector file type '.csv'"):
        read_vector_file(tmp_path / "x.csv")
    np.save(tmp_path / "q.npy", cv[:5])
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in pairs.queries[:5]))
    enc = get_encoder("vectors:x", files=[tmp_path / "q.npy"])
    with pytest.raises(EncoderError, match=r"query texts have no vector in .*q.npy \(15 of a batch of 20"):
        enc.encode(pairs.queries, role="query")
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, vectors in (("ragged", [[1.0, 0.0], [0.0, 1.0, 0.5]]), ("null", [[1.0, 0.0], None])):
        pq.write_table(pa.table({"text": ["a", "b"], "vector": vectors}), tmp_path / f"{name}.parquet")
        with pytest.raises(EncoderError, match=f"{name}.parquet: row 2 of column 'vector' is"):
            read_vector_file(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "vector": [[1.0, 0.0], [0.0, 1.0]], "role": ["query", "passage"]}),
                   tmp_path / "roles.parquet")
    with pytest.raises(EncoderError, match="roles.parquet: row 2 has role 'passage'"):
        get_encoder("vectors:x", files=[tmp_path / "roles.parquet"])
    np.save(tmp_path / "roles.npy", np.ones((2, 2), np.float32))  # a .npy's texts: the line of its .jsonl, from 1
    (tmp_path / "roles.jsonl").write_text('"a"\n\n{"text": "b", "role": "passage"}\n')
    with pytest.raises(EncoderError, match="roles.jsonl: line 3 has role 'passage'"):
        get_encoder("vectors:x", files=[tmp_path / "roles.npy"])
    pq.write_table(pa.table({"text": ["a", "b"], "vector": [None, [1.0, 0.0]]}), tmp_path / "null0.parquet")
    with pytest.raises(EncoderError, match="null0.parquet: row 1 of column 'vector' is null"):
        read_vector_file(tmp_path / "null0.parquet")
    pq.write_table(pa.table({"text": ["a"], "vector": ["0.1,0.2"]}), tmp_path / "str.parquet")
    with pytest.raises(EncoderError, match="str.parquet: column 'vector' must hold lists of numbers, not string"):
        read_vector_file(tmp_path / "str.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "vector": pa.array([], pa.list_(pa.float32()))}),
                   tmp_path / "empty.parquet")
    with pytest.raises(EncoderError, match=r"empty.parquet: expected a non-empty \(N, D\) table"):
        read_vector_file(tmp_path / "empty.parquet")
    np.save(tmp_path / "d0.npy", np.zeros((2, 0), np.float32))
    (tmp_path / "d0.jsonl").write_text('"a"\n"b"\n')
    with pytest.raises(EncoderError, match="d0.npy: expected a non-empty"):
        read_vector_file(tmp_path / "d0.npy")
    np.save(tmp_path / "bad.npy", np.ones((2, 3), np.float32))
    (tmp_path / "bad.jsonl").write_text('\ufeff"a"\n{"text": \n')  # a byte-order mark is fine, line 2 is not
    with pytest.raises(EncoderError, match="bad.jsonl: line 2: malformed JSON"):
        read_vector_file(tmp_path / "bad.npy")
    zero = cv[:5].copy()
    zero[2] = 0
    np.save(tmp_path / "z.npy", zero)
    (tmp_path / "z.jsonl").write_text("\n".join(json.dumps(c) for c in pairs.contexts[:5]))
    with pytest.raises(EncoderError, match="z.npy: row 3 is all zeros"):
        get_encoder("vectors:x", files=[tmp_path / "z.npy"]).encode(pairs.contexts[:5], role="context")


def test_vectors_stay_in_their_files_until_a_text_needs_them(tmp_path, monkeypatch):
    import h5py

    from projhead.encoders import VectorFile

    rng = np.random.default_rng(0)
    vec = rng.normal(size=(5000, 8)).astype(np.float32)
    texts = [f"text {i}" for i in range(5000)]
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f["vectors"], f["text"] = vec, texts
    vec[7, 1] = np.nan
    np.save(tmp_path / "late.npy", np.stack([vec[7] + 0, vec[9] * 2]))  # a later file overrides text 9
    (tmp_path / "late.jsonl").write_text(json.dumps("text 7") + "\n" + json.dumps("text 9"))
    asked = []
    real = VectorFile.rows
    monkeypatch.setattr(VectorFile, "rows", lambda self, idx: (asked.append(len(idx)), real(self, idx))[1])
    enc = get_encoder("vectors:x", files=[tmp_path / "big.h5", tmp_path / "late.npy"])
    assert asked == []  # opening reads keys only
    got = enc.encode(["text 3", "text 9", "text 4999"])
    np.testing.assert_array_equal(got, np.stack([vec[3], vec[9] * 2, vec[4999]]))
    assert sum(asked) == 3  # three rows read, not 5,000
    with pytest.raises(EncoderError, match="late.npy: row 1 holds NaN or Inf"):
        enc.encode(["text 7"])


def _jsonl(tmp_path, pairs):
    rows = [{"query": q, "context": pairs.contexts[c], "id": qid, "group": g}
            for q, c, qid, g in zip(pairs.queries, pairs.q2c, pairs.query_ids, pairs.groups)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_streamed_import_writes_the_cache_build_cache_writes(tmp_path):
    from projhead.cache import cache_jsonl_vectors
    from projhead.data import load_jsonl

    pairs0 = planted_pairs(n_groups=6)
    data = _jsonl(tmp_path, pairs0)
    pairs = load_jsonl(data)  # the same data as build_cache sees it (ids, groups, distinct contexts)
    enc, qv, cv = _vectors(pairs)
    files = _write("npy", tmp_path, pairs, qv, cv)
    imported = get_encoder("vectors:planted-api", files=files)
    build_cache(pairs, imported, tmp_path / "built.h5", dtype="float16", progress=False)
    res = cache_jsonl_vectors(data, imported, tmp_path / "streamed.h5", dtype="float16", block=7)
    assert res.status == "written"
    a, b = open_cache(tmp_path / "built.h5"), open_cache(tmp_path / "streamed.h5")  # texts checked on read
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    np.testing.assert_array_equal(a.q2c, b.q2c)
    for k in ("fingerprint", "dataset", "split", "granularity", "dtype", "n_contexts", "encoder_json"):
        assert a.attrs[k] == b.attrs[k], k
    assert cache_jsonl_vectors(data, imported, tmp_path / "streamed.h5", dtype="float16").status == "already complete"
    with pytest.raises(CacheError, match="exists and holds other work"):
        cache_jsonl_vectors(data, imported, tmp_path / "streamed.h5", dtype="float32")


def test_streamed_import_refuses_duplicate_ids_and_bad_lines(tmp_path):
    from projhead.cache import cache_jsonl_vectors
    from projhead.data import DataError

    pairs = planted_pairs(n_groups=2)
    enc, qv, cv = _vectors(pairs)
    imported = get_encoder("vectors:x", files=_write("h5", tmp_path, pairs, qv, cv))
    rows = [{"query": pairs.queries[0], "context": "c", "id": "same"}, {"query": pairs.queries[1], "context": "d", "id": "same"}]
    (tmp_path / "dup.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="dup.jsonl: duplicate query id 'same'"):
        cache_jsonl_vectors(tmp_path / "dup.jsonl", imported, tmp_path / "o.h5")
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "context": "b"}\n{"query": "a"')
    with pytest.raises(DataError, match="bad.jsonl: line 2: malformed JSON"):
        cache_jsonl_vectors(tmp_path / "bad.jsonl", imported, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_pairs_in_parquet_are_the_pairs_of_the_same_jsonl(tmp_path):
    """A Parquet file with the JSONL's columns gives the same pairs, the same cache streamed
    with imported vectors, and errors that name the file, row and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from projhead.cache import cache_jsonl_vectors
    from projhead.data import DataError, load_pairs

    data = _jsonl(tmp_path, planted_pairs(n_groups=6))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[3]["id"], rows[4]["group"] = None, ""  # not given, as in JSONL
    data.write_text("\n".join(json.dumps(r) for r in rows))
    table = pa.table({k: [r[k] for r in rows] for k in ("query", "context", "id", "group")})
    pq.write_table(table, tmp_path / "pairs.parquet", row_group_size=7)
    a, b = load_pairs("jsonl", data=data), load_pairs("jsonl", data=tmp_path / "pairs.parquet")
    assert a.fingerprint() == b.fingerprint() and b.query_ids[3] == "4" and b.groups[4] == b.contexts[b.q2c[4]]
    (tmp_path / "PAIRS.PARQUET").write_bytes((tmp_path / "pairs.parquet").read_bytes())
    assert load_pairs("jsonl", data=tmp_path / "PAIRS.PARQUET").fingerprint() == a.fingerprint()
    enc, qv, cv = _vectors(a)
    imported = get_encoder("vectors:planted-api", files=_write("h5", tmp_path, a, qv, cv))
    cache_jsonl_vectors(data, imported, tmp_path / "j.h5", block=5)
    cache_jsonl_vectors(tmp_path / "pairs.parquet", imported, tmp_path / "p.h5", block=5)
    j, p = open_cache(tmp_path / "j.h5"), open_cache(tmp_path / "p.h5")
    assert j.attrs["fingerprint"] == p.attrs["fingerprint"]
    np.testing.assert_array_equal(j.queries, p.queries)
    pq.write_table(table.drop(["context"]), tmp_path / "noctx.parquet")
    with pytest.raises(DataError, match=r"noctx.parquet: no 'context' column \(it has: query, id, group\)"):
        load_pairs("jsonl", data=tmp_path / "noctx.parquet")
    pq.write_table(table.set_column(0, "query", pa.array([None] + [r["query"] for r in rows[1:]])),
                   tmp_path / "null.parquet")
    with pytest.raises(DataError, match="null.parquet: row 1 'query'"):
        load_pairs("jsonl", data=tmp_path / "null.parquet")
    (tmp_path / "fake.parquet").write_text('{"query": "a", "context": "b"}\n')
    with pytest.raises(DataError, match="fake.parquet: not a readable Parquet file"):
        load_pairs("jsonl", data=tmp_path / "fake.parquet")


def test_vector_files_close_what_they_open(tmp_path):
    import h5py

    from projhead.encoders import VectorFile, read_vector_file

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["vectors"], f["text"] = np.ones((3, 4), np.float32), ["a", "b", "c"]
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["embeddings"] = np.ones((3, 4), np.float32)

    def closed(path):  # HDF5 refuses to truncate a file this process still holds open
        h5py.File(path, "w").close()
        return True

    with VectorFile(tmp_path / "v.h5") as vf:
        assert vf.dim == 4
    assert closed(tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["vectors"], f["text"] = np.ones((3, 4), np.float32), ["a", "b", "c"]
    assert read_vector_file(tmp_path / "v.h5")["vectors"].shape == (3, 4) and closed(tmp_path / "v.h5")
    with pytest.raises(EncoderError, match="no 'vectors' dataset"):
        VectorFile(tmp_path / "bad.h5")
    assert closed(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["vectors"], f["text"] = np.ones((3, 4), np.float32), ["a", "b", "c"]
    enc = get_encoder("vectors:x", files=[tmp_path / "v.h5"])
    assert enc.encode(["b"]).shape == (1, 4)
    enc.close()
    assert closed(tmp_path / "v.h5")


def test_the_identity_of_imported_vectors_is_their_contents_not_their_path(tmp_path, monkeypatch):
    """The same files given by another path, or copied, are the same work; a .npy file's texts
    beside it are part of the work (other texts: other vectors for each text)."""
    import shutil

    from projhead.cache import CacheError

    pairs = planted_pairs(n_groups=4)
    _, qv, cv = _vectors(pairs)
    files = _write("npy", tmp_path, pairs, qv, cv)
    out = tmp_path / "c.h5"
    build_cache(pairs, get_encoder("vectors:x", files=files), out, progress=False)
    (tmp_path / "copy").mkdir()
    for name in ("all.npy", "all.jsonl"):
        shutil.copy(tmp_path / name, tmp_path / "copy" / name)
    monkeypatch.chdir(tmp_path)
    for spelled in ("all.npy", "./all.npy", "copy/all.npy"):
        assert build_cache(pairs, get_encoder("vectors:x", files=[spelled]), out, progress=False).status == \
            "already complete", spelled
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    n = len(pairs.queries)
    swapped = lines[:n] + lines[n:][::-1]  # the contexts' texts in reverse: each context gets another's vector
    (tmp_path / "all.jsonl").write_text("\n".join(swapped))
    with pytest.raises(CacheError, match="exists and holds other work"):
        build_cache(pairs, get_encoder("vectors:x", files=files), out, progress=False)


@pytest.mark.parametrize("kind", ["parquet", "npy"])
def test_ids_of_one_query_text_with_other_vectors_are_refused(tmp_path, kind):
    """A cache keys queries by text: two ids of one text with different vectors (made from more
    than the text) would silently share one; the same vector given twice is fine."""
    pairs = planted_pairs(n_groups=6)
    _, qv, cv = _vectors(pairs)
    ids = dict(zip(pairs.query_ids, pairs.queries))
    ids[pairs.query_ids[3]] = pairs.queries[0]  # id 3 asks what id 0 asks ("What happened next?")
    qv[3] = qv[0]
    files = _write(kind, tmp_path, pairs, qv, cv, by_id=True)
    get_encoder("vectors:api", files=files, ids=ids)  # one vector, given twice
    qv[3] = -qv[0]
    files = _write(kind, tmp_path, pairs, qv, cv, by_id=True)
    with pytest.raises(EncoderError, match=f"ids {pairs.query_ids[0]!r} .* and {pairs.query_ids[3]!r} .* ask the same "
                                           "query text"):
        get_encoder("vectors:api", files=files, ids=ids)
    # a later file gives both ids one new vector: the last file wins for each id, and they agree
    import shutil

    (tmp_path / "first").mkdir()
    for f in tmp_path.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / "first" / f.name)
    qv[0] = qv[3] = np.abs(qv[0]) + 1
    fix = _write(kind, tmp_path, pairs, qv, cv, by_id=True)
    first = [tmp_path / "first" / f.name for f in files]
    assert first[0].exists() and first[0] != fix[0]
    enc = get_encoder("vectors:api", files=first + fix, ids=ids)
    np.testing.assert_array_equal(enc.encode([pairs.queries[0]]), qv[:1])
    # or a later file gives the text itself one vector (keyed by text, role query): it stands for both ids
    one = np.full((1, qv.shape[1]), 0.5, np.float32)
    np.save(tmp_path / "text.npy", one)
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": pairs.queries[0], "role": "query"}) + "\n")
    enc = get_encoder("vectors:api", files=first + [tmp_path / "text.npy"], ids=ids)
    np.testing.assert_array_equal(enc.encode([pairs.queries[0]]), one)
    with pytest.raises(EncoderError, match="ask the same query text"):  # given before the ids: they still differ
        get_encoder("vectors:api", files=[tmp_path / "text.npy"] + first, ids=ids)


def test_texts_and_ids_of_vector_files_must_be_strings(tmp_path):
    """A null, numeric or undecodable text in a vector file is an error naming the file and the
    row, never the text 'None' or '10'."""
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    v = np.ones((2, 3), np.float32)
    pq.write_table(pa.table({"text": ["a", None], "vector": [list(x) for x in v]}), tmp_path / "null.parquet")
    pq.write_table(pa.table({"text": [10, 11], "vector": [list(x) for x in v]}), tmp_path / "ints.parquet")
    np.save(tmp_path / "n.npy", v)
    (tmp_path / "n.jsonl").write_text('"a"\n{"text": null}\n')
    with h5py.File(tmp_path / "num.h5", "w") as f:
        f["vectors"], f["text"] = v, np.array([1.5, 2.5])
    with h5py.File(tmp_path / "bytes.h5", "w") as f:
        f["vectors"], f["text"] = v, np.array([b"ok", b"\xff\xfe"])
    np.save(tmp_path / "lone.npy", v)
    (tmp_path / "lone.jsonl").write_text('"a"\n"half \\ud800 a pair"\n')  # valid JSON, a lone surrogate
    for name, where in (("null.parquet", "null.parquet: row 2: text must be a string, not None"),
                        ("ints.parquet", "ints.parquet: row 1: text must be a string, not 10"),
                        ("n.npy", "n.jsonl: line 2: text"), ("num.h5", "num.h5: dataset 'text' must hold strings"),
                        ("bytes.h5", "bytes.h5: row 2: text is not UTF-8"),
                        ("lone.npy", "lone.jsonl: line 2: text is not UTF-8 text")):
        with pytest.raises(EncoderError, match=where):
            get_encoder("vectors:x", files=[tmp_path / name])
    pq.write_table(pa.table({"text": ["a", ""], "vector": [list(x) for x in v]}), tmp_path / "blank.parquet")
    get_encoder("vectors:x", files=[tmp_path / "blank.parquet"])  # an empty text is a key like any other
    pq.write_table(pa.table({"id": [10, 11], "vector": [list(x) for x in v]}), tmp_path / "ids.parquet")
    enc = get_encoder("vectors:x", files=[tmp_path / "ids.parquet"], ids={"10": "q ten", "11": "q eleven"})
    np.testing.assert_array_equal(enc.encode(["q eleven"]), v[1:])  # integer ids are query ids, as strings


def test_a_parquet_vector_column_is_read_without_python_lists(tmp_path):
    """Every list type of the vector column reads as the numbers written, a null number as NaN
    (refused when looked up)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from projhead.vector_files import VectorFile

    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    for typ in (pa.list_(pa.float32()), pa.large_list(pa.float64()), pa.list_(pa.float32(), 6)):
        pq.write_table(pa.table({"text": [f"t{i}" for i in range(50)], "vector": pa.array(list(x), type=typ)}),
                       tmp_path / "v.parquet", row_group_size=16)
        with VectorFile(tmp_path / "v.parquet") as vf:
            np.testing.assert_allclose(vf.rows(np.arange(50)[::-1]), x[::-1], rtol=1e-6)
    pq.write_table(pa.table({"text": ["a", "b"], "vector": pa.array([[1.0, None], [1.0, 2.0]], pa.list_(pa.float32()))}),
                   tmp_path / "hole.parquet")
    with pytest.raises(EncoderError, match=r"hole.parquet: row 1 holds NaN"):
        get_encoder("vectors:x", files=[tmp_path / "hole.parquet"]).encode(["a"], role="context")


def test_a_failed_streamed_import_leaves_nothing_that_blocks_the_next_run(tmp_path):
    from projhead.cache import cache_jsonl_vectors

    pairs = planted_pairs(n_groups=3)
    data = _jsonl(tmp_path, pairs)
    _, qv, cv = _vectors(pairs)
    files = _write("npy", tmp_path, pairs, qv, cv)
    bad = np.load(files[0])
    bad[-1] = np.nan  # a context's vector
    np.save(tmp_path / "bad.npy", bad)
    (tmp_path / "bad.jsonl").write_text((tmp_path / "all.jsonl").read_text())
    with pytest.raises(EncoderError, match="holds NaN"):
        cache_jsonl_vectors(data, get_encoder("vectors:x", files=[tmp_path / "bad.npy"]), tmp_path / "o.h5")
    assert not (tmp_path / "o.h5.parts").exists() and not (tmp_path / "o.h5").exists()
    assert cache_jsonl_vectors(data, get_encoder("vectors:x", files=files), tmp_path / "o.h5").status == "written"


def test_a_killed_streamed_import_leaves_nothing_that_refuses_the_corrected_command(tmp_path):
    """The streamed import keeps no shards: a killed run's manifest of other files is no work
    to keep, so the command run again with corrected files is not refused as partial work."""
    from projhead.cache import cache_jsonl_vectors
    from projhead.cache_build import parts_job

    pairs = planted_pairs(n_groups=4)
    _, qv, cv = _vectors(pairs)
    rows = [{"query": q, "context": pairs.contexts[c], "id": i} for q, c, i in zip(pairs.queries, pairs.q2c,
                                                                                     pairs.query_ids)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = _write("npy", tmp_path, pairs, qv, cv)
    parts = tmp_path / "s.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps(parts_job({"fingerprint": "an earlier try"}, layout="streamed")))
    res = cache_jsonl_vectors(tmp_path / "pairs.jsonl", get_encoder("vectors:p", files=files), tmp_path / "s.h5")
    assert res.status == "written"
    (parts := tmp_path / "t.h5.parts").mkdir()
    (parts / "manifest.json").write_text(json.dumps(parts_job({"fingerprint": "an earlier try"}, layout="streamed")))
    (parts / "corpus-000000.npy").write_bytes(b"work")  # something beside the manifest: still refused
    with pytest.raises(CacheError, match="partial work from a different run"):
        cache_jsonl_vectors(tmp_path / "pairs.jsonl", get_encoder("vectors:p", files=files), tmp_path / "t.h5")
