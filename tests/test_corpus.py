"""The user's corpus in the cache: stored once, part of the identity, ranked beside the contexts
in model selection and evaluation, never a query or a training positive."""
import json
import shutil

import numpy as np
import pytest

from projhead import cli
from projhead.cache import CacheError, build_cache, open_cache, read_identity
from projhead.corpus import CorpusFile, attach_corpus
from projhead.data import DataError

from conftest import PlantedEncoder, planted_pairs


def _corpus(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _cached(tmp_path, texts, name="c.h5", **kw):
    pairs = planted_pairs(n_groups=kw.pop("n_groups", 8))
    enc = PlantedEncoder(pairs, **kw)
    out = tmp_path / name
    build_cache(pairs, enc, out, progress=False, corpus=CorpusFile(_corpus(tmp_path / f"{name}.jsonl", texts)))
    return pairs, enc, out


def test_corpus_rows_are_never_queries_training_positives_or_in_batch_positives(tmp_path):
    from projhead.batches import MemorySource
    from projhead.config import TrainConfig

    pairs, _, out = _cached(tmp_path, [f"doc {i}" for i in range(300)])
    c = open_cache(out)
    nq, nc = len(c.q2c), len(c.contexts)
    assert (nq, nc) == (len(pairs), len(pairs.contexts))  # the corpus adds no query and no labelled context
    assert attach_corpus(c) == {"distractors": 300, "corpus": 300}
    src = MemorySource(c, TrainConfig(seed=0))
    assert src.pair_c.max() < nc and src.pair_q.max() < nq  # training positives: gold contexts only
    seen = set()
    for batch in src.epoch(np.random.default_rng(0)):
        seen.update(batch.context_ids.tolist())
        assert batch.c.shape[0] == batch.q.shape[0]
    assert seen and max(seen) < nc  # in-batch positives (and negatives): gold contexts of training pairs
    assert len(src.dev.c) == nc + 300 and src.dev.gold.max() < nc  # held-out queries see the corpus as distractors
    np.testing.assert_array_equal(src.dev.c[nc:], c.read("corpus")["vectors"])


def test_a_corpus_holding_gold_contexts_does_not_double_them(tmp_path):
    pairs = planted_pairs(n_groups=8)
    texts = list(pairs.contexts) + ["other 1", "other 2", "other 1"]  # every gold context, and a repeat
    _, _, out = _cached(tmp_path, texts, rotate=0.0)  # queries aligned with their contexts: the frozen encoder finds them
    c = open_cache(out)
    got = c.read("corpus")
    assert got["text"] == ["other 1", "other 2"]
    stats = c.section_attrs("corpus", "corpus")["stats_json"]
    assert stats == {"source": str(tmp_path / "c.h5.jsonl"), "texts_read": len(texts), "duplicates": 1,
                     "contexts_of_pairs": len(pairs.contexts), "stored": 2}
    from projhead.cache_reader import info_lines
    assert (f"texts read {len(texts)}, duplicates 1, contexts of pairs {len(pairs.contexts)}, stored 2"
            in "\n".join(info_lines(out, c.describe())))  # what projhead info prints
    # a second copy of a gold context would tie with it and count against it: ranks are unchanged
    code = cli.main(["eval", str(out), "--json-out", str(tmp_path / "with.json")])
    assert code == 0 and cli.main(["eval", str(out), "--corpus-sample", "0", "--json-out", str(tmp_path / "without.json")]) == 0
    with_c, without = (json.loads((tmp_path / f).read_text()) for f in ("with.json", "without.json"))
    assert with_c["distractors"] == 2 and without["distractors"] == 0
    with_c, without = with_c["results"], without["results"]
    assert without["frozen"]["full_corpus"]["R@1"] > 0.9
    assert with_c["frozen"]["full_corpus"]["R@1"] >= without["frozen"]["full_corpus"]["R@1"] - 2 / len(pairs)


def test_a_changed_corpus_is_other_work_for_the_cache_and_for_a_resumed_run(tmp_path, monkeypatch):
    import projhead.cache_build as cb

    pairs, enc, out = _cached(tmp_path, ["doc a", "doc b"])
    same = CorpusFile(tmp_path / "c.h5.jsonl")
    assert build_cache(pairs, enc, out, progress=False, corpus=same).status == "already complete"
    other = CorpusFile(_corpus(tmp_path / "other.jsonl", ["doc a", "doc c"]))
    with pytest.raises(CacheError, match="exists and holds other work .*sections"):
        build_cache(pairs, enc, out, progress=False, corpus=other)
    with pytest.raises(CacheError, match=r"exists and holds other work .*; it was made with --corpus"):
        build_cache(pairs, enc, out, progress=False)  # nor is no corpus at all the same work
    with pytest.raises(CacheError, match="holds other work") as e:  # another difference too: no such hint
        build_cache(pairs, enc, out, progress=False, dtype="float16")
    assert "made with" not in str(e.value)
    first = read_identity(out)
    build_cache(pairs, enc, out, progress=False, corpus=other, overwrite=True)
    assert read_identity(out) != first and read_identity(out)["fingerprint"] == first["fingerprint"]

    # an interrupted run keeps its shards; a rerun with another corpus may not use them
    fresh = tmp_path / "fresh.h5"

    def boom(*a, **k):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(cb, "write_corpus", boom)
    with pytest.raises(RuntimeError):
        build_cache(pairs, enc, fresh, progress=False, corpus=same)
    assert (tmp_path / "fresh.h5.parts" / "corpus-000000.npy").exists()
    monkeypatch.undo()
    with pytest.raises(CacheError, match="partial work from a different run"):
        build_cache(pairs, enc, fresh, progress=False, corpus=other)
    assert build_cache(pairs, enc, fresh, progress=False, corpus=same).status == "written"  # resumes
    assert read_identity(fresh) == first


def test_a_corpus_is_added_to_a_finished_cache_of_the_same_pairs(tmp_path):
    pairs = planted_pairs(n_groups=6)
    enc = PlantedEncoder(pairs)
    out = tmp_path / "later.h5"
    build_cache(pairs, enc, out, progress=False)
    corpus = CorpusFile(_corpus(tmp_path / "corpus.jsonl", ["doc 1", pairs.contexts[0], "doc 2"]))
    calls = enc.calls
    assert build_cache(pairs, enc, out, progress=False, corpus=corpus).status == "corpus added"
    assert enc.calls == calls + 1  # the corpus only
    build_cache(pairs, enc, tmp_path / "once.h5", progress=False, corpus=corpus)
    assert read_identity(out) == read_identity(tmp_path / "once.h5")
    a, b = open_cache(out), open_cache(tmp_path / "once.h5")
    np.testing.assert_array_equal(a.read("corpus")["vectors"], b.read("corpus")["vectors"])
    assert a.read("corpus")["text"] == ["doc 1", "doc 2"]


def test_an_interrupted_corpus_addition_refuses_another_corpus_with_advice_that_keeps_the_cache(tmp_path, monkeypatch):
    pairs = planted_pairs(n_groups=6)
    enc = PlantedEncoder(pairs)
    out = tmp_path / "later.h5"
    build_cache(pairs, enc, out, progress=False)
    data = out.read_bytes()
    first = CorpusFile(_corpus(tmp_path / "a.jsonl", ["doc 1", "doc 2"]))
    second = CorpusFile(_corpus(tmp_path / "b.jsonl", ["doc 3"]))

    def boom(*a, **k):
        raise RuntimeError("interrupted")
    monkeypatch.setattr("projhead.cache_writer.extend_cache", boom)  # stopped after the corpus's shards
    with pytest.raises(RuntimeError):
        build_cache(pairs, enc, out, progress=False, corpus=first)
    monkeypatch.undo()
    assert out.read_bytes() == data and (tmp_path / "later.h5.parts").exists()
    with pytest.raises(CacheError, match=r"later.h5.parts: partial work from a different run .*remove .*later.h5.parts "
                                         r"to discard it and add this run's corpus to the finished .*later.h5 "
                                         r"\(--overwrite would build the whole cache again"):
        build_cache(pairs, enc, out, progress=False, corpus=second)
    shutil.rmtree(tmp_path / "later.h5.parts")  # as the message says
    assert build_cache(pairs, enc, out, progress=False, corpus=second).status == "corpus added"
    assert open_cache(out).read("corpus")["text"] == ["doc 3"]


def test_a_corpus_beyond_float16_is_refused_before_the_cache_is_touched(tmp_path):
    pairs = planted_pairs(n_groups=6)
    enc = PlantedEncoder(pairs)
    out = tmp_path / "half.h5"
    build_cache(pairs, enc, out, dtype="float16", progress=False)
    real = enc.encode
    enc.encode = lambda texts, **kw: real(texts, **kw) * (1e6 if "doc 1" in texts else 1)
    corpus = CorpusFile(_corpus(tmp_path / "corpus.jsonl", ["doc 1", "doc 2"]))
    with pytest.raises(CacheError, match=r"the corpus text 'doc 1' does not fit float16.*stores float16: build it again "
                                         r"as float32 \(--dtype float32 --overwrite\)"):
        build_cache(pairs, enc, out, dtype="float16", progress=False, corpus=corpus)
    assert "corpus" not in open_cache(out).sections


def test_selection_against_the_corpus_keeps_a_head_that_only_helps_there(tmp_path):
    """Planted: queries are a partial rotation of their contexts. Against the 100 labelled
    contexts the frozen encoder already ranks nearly every gold first, so no head is kept;
    against 3,000 corpus texts too, it does not, and the head that undoes the rotation wins."""
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    _, _, out = _cached(tmp_path, [f"doc {i}" for i in range(3000)], n_groups=20, dim=16, rotate=0.45, noise=0.2)
    fixed = {"kind": "linear", "towers": "query"}
    runs = {}
    for sample in (0, None):
        head, log = auto_train(out, TrainConfig(corpus_sample=sample), fixed=fixed, progress=False)
        runs[sample] = (log["selection"], log["decision"]["kept"], head.info, dict(head.config.__dict__))
    plain, full = runs[0], runs[None]
    assert plain[0]["distractors"] == 0 and full[0]["distractors"] == 3000
    assert full[0]["frozen_dev"]["mrr10"] < plain[0]["frozen_dev"]["mrr10"] - 0.2
    assert plain[1] == "identity" and full[1] == "head"
    assert full[2]["selection"]["distractors"] == 3000 and full[2]["cache"]["distractors"] == 3000  # model card
    assert "3000 corpus texts" in full[2]["selection"]["ranked_against"]
    assert full[2]["fusion"]["chosen"]["distractors"] == 3000 and plain[2]["fusion"]["chosen"]["distractors"] == 0
    from projhead.card import model_card

    card = model_card({"head": full[3], **full[2]})  # the card says what the held-out queries were ranked against
    assert "context of the training cache and 3,000 corpus texts" in card
    assert "against all its contexts and 3,000 corpus texts" in card
    assert "corpus texts" not in model_card({"head": plain[3], **plain[2]})


def test_eval_counts_the_distractors_in_memory_and_through_an_index(tmp_path):
    _, _, out = _cached(tmp_path, [f"doc {i}" for i in range(40)])
    got = {}
    for name, extra in (("all", []), ("some", ["--corpus-sample", "10"]), ("none", ["--corpus-sample", "0"]),
                        ("index", ["--index", "Flat"]), ("index-some", ["--index", "Flat", "--corpus-sample", "10"])):
        assert cli.main(["eval", str(out), "--json-out", str(tmp_path / f"{name}.json"), *extra]) == 0
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert [got[k]["distractors"] for k in got] == [40, 10, 0, 40, 10]
    got = {k: v["results"] for k, v in got.items()}
    for a, b in (("all", "index"), ("some", "index-some")):  # the same rows ranked, in memory or by FAISS
        assert got[a]["frozen"]["full_corpus"] == pytest.approx(got[b]["frozen"]["full_corpus"])
    assert got["all"]["frozen"]["out_of_500"] == got["none"]["frozen"]["out_of_500"]  # blocks: labelled only
    assert got["all"]["frozen"]["full_corpus"]["MRR@10"] < got["none"]["frozen"]["full_corpus"]["MRR@10"]


def test_corpus_files_of_every_format_and_their_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("first text\n\nsecond text\n")
    assert list(CorpusFile(tmp_path / "c.txt").texts()) == ["first text", "second text"]
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "c.parquet")
    assert list(CorpusFile(tmp_path / "c.parquet").texts()) == ["a", "b"]
    assert not CorpusFile(tmp_path / "c.parquet").vectors
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: missing key 'text'"):
        list(CorpusFile(tmp_path / "bad.jsonl").texts())
    (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n')
    with pytest.raises(DataError, match=r"empty.jsonl: line 1 'text' is empty"):
        list(CorpusFile(tmp_path / "empty.jsonl").texts())
    with pytest.raises(DataError, match=r"c.csv: a corpus is"):
        (tmp_path / "c.csv").write_text("x")
        CorpusFile(tmp_path / "c.csv")
    with pytest.raises(DataError, match="no such corpus file"):
        CorpusFile(tmp_path / "nope.jsonl")
    import gzip

    (tmp_path / "nul.txt").write_text("fine\nhas a \x00 in it\n")
    with pytest.raises(DataError, match=r"nul.txt: line 2 holds a NUL character"):
        list(CorpusFile(tmp_path / "nul.txt").texts())
    whole = gzip.compress(("a text of the corpus\n" * 2000).encode())
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])  # truncated: not the user's ctrl-C
    (tmp_path / "not.txt.gz").write_text("plain text, not gzip\n")
    bad = bytearray(gzip.compress(("a text of the corpus %d\n" * 1).encode() * 3000))
    bad[len(bad) // 2: len(bad) // 2 + 8] = b"\xff" * 8  # damaged in the middle: zlib's own error
    (tmp_path / "bad.txt.gz").write_bytes(bytes(bad))
    for name in ("cut.txt.gz", "not.txt.gz", "bad.txt.gz"):
        with pytest.raises(DataError, match=f"{name}: cannot read"):
            list(CorpusFile(tmp_path / name).texts())


def test_a_corpus_of_your_own_vectors_through_the_cli(tmp_path):
    """vectors:NAME: the corpus is a vector file keyed by text, looked up like the pairs' vectors."""
    from projhead.cache import cache_jsonl_vectors
    from projhead.encoders import get_encoder

    pairs = planted_pairs(n_groups=5)
    enc = PlantedEncoder(pairs, dim=8)
    rows = [{"query": q, "context": pairs.contexts[c], "id": i, "group": g}
            for q, c, i, g in zip(pairs.queries, pairs.q2c, pairs.query_ids, pairs.groups)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = list(pairs.queries) + list(pairs.contexts)
    np.save(tmp_path / "v.npy", np.concatenate([enc.encode(pairs.queries, role="query"),
                                                enc.encode(pairs.contexts, role="context")]))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    docs = ["doc x", "doc y", pairs.contexts[1]]
    np.save(tmp_path / "corpus.npy", enc.encode(docs, role="context"))
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(t) + "\n" for t in docs))
    out = tmp_path / "mine.h5"
    assert cli.main(["cache", "--dataset", "jsonl", "--data", str(tmp_path / "pairs.jsonl"), "--encoder",
                     "vectors:planted", "--vectors", str(tmp_path / "v.npy"), "--corpus", str(tmp_path / "corpus.npy"),
                     "--no-normalize", "--out", str(out), "--quiet"]) == 0
    got = open_cache(out).read("corpus")
    assert got["text"] == ["doc x", "doc y"]
    np.testing.assert_allclose(got["vectors"], enc.encode(["doc x", "doc y"], role="context"), atol=1e-6)
    # the streamed import writes the same corpus section
    again = cache_jsonl_vectors(tmp_path / "pairs.jsonl", get_encoder("vectors:planted", files=[
        tmp_path / "v.npy", tmp_path / "corpus.npy"]), tmp_path / "again.h5", corpus=CorpusFile(tmp_path / "corpus.npy"))
    assert again.status == "written" and read_identity(tmp_path / "again.h5")["sections"] == read_identity(out)["sections"]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(t) + "\n\n" for t in ["doc x", "doc\x00y", "doc z"]))
    with pytest.raises(DataError, match=r"corpus.npy: row 2 text holds a NUL character"):  # the vector's row, from 1
        list(CorpusFile(tmp_path / "corpus.npy").texts())


def test_eval_with_an_index_refuses_queries_that_are_corpus_texts(tmp_path):
    """In memory a query's own text is left out of its candidates; an index cannot leave it out,
    so a query that is also a corpus text is refused there, as one that is also a context is."""
    from projhead.evaluate import evaluate_streamed
    from projhead.search import SearchError

    _, _, path = _cached(tmp_path, list(planted_pairs(n_groups=8).queries)[:5] + ["unrelated text"])
    with pytest.raises(SearchError, match="queries that are also corpus texts"):
        evaluate_streamed(path, index="Flat")
    assert "frozen" in evaluate_streamed(_cached(tmp_path, ["unrelated text"], name="d.h5")[2], index="Flat")


def test_a_corpus_turned_off_stays_off_in_training(tmp_path):
    from projhead.config import TrainConfig
    from projhead.heads import HeadConfig
    from projhead.train import train_head

    _, _, path = _cached(tmp_path, [f"doc {i}" for i in range(50)])
    c = open_cache(path)
    assert attach_corpus(c, 0)["distractors"] == 0
    head, _ = train_head(c, HeadConfig(kind="linear", towers="query"), TrainConfig(epochs=1, batch_size=16),
                         progress=False)
    assert head.info["cache"]["distractors"] == 0
    head, _ = train_head(open_cache(path), HeadConfig(kind="linear", towers="query"),
                         TrainConfig(epochs=1, batch_size=16), progress=False)
    assert head.info["cache"]["distractors"] == 50  # the default: every corpus row
    head.save(tmp_path / "h")  # and the card says so (no selection log in --no-auto training)
    assert "against all its contexts and 50 corpus texts" in (tmp_path / "h" / "README.md").read_text()


def test_a_copy_of_a_gold_context_that_differs_only_in_spacing_is_not_stored(tmp_path):
    """A context's copy with a trailing space (or doubled spaces) would read like it and tie with it."""
    pairs = planted_pairs(n_groups=8)
    texts = [pairs.contexts[0] + " ", "  " + pairs.contexts[1].replace(" ", "  "), "other  text", "other text\t"]
    _, _, out = _cached(tmp_path, texts)
    c = open_cache(out)
    assert c.read("corpus")["text"] == ["other  text"]
    stats = c.section_attrs("corpus", "corpus")["stats_json"]
    assert (stats["duplicates"], stats["contexts_of_pairs"], stats["stored"]) == (1, 2, 1)


def test_the_streamed_import_matches_contexts_as_build_cache_does(tmp_path):
    from projhead.cache import cache_jsonl_vectors
    from projhead.encoders import get_encoder

    pairs = planted_pairs(n_groups=4)
    enc = PlantedEncoder(pairs, dim=8)
    rows = [{"query": q, "context": pairs.contexts[c], "id": i} for q, c, i in zip(pairs.queries, pairs.q2c,
                                                                                     pairs.query_ids)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = ["doc x "]  # and a context's copy with a trailing space: its vector is the context's
    texts = list(pairs.queries) + list(pairs.contexts) + docs
    np.save(tmp_path / "v.npy", np.concatenate([enc.encode(pairs.queries, role="query"),
                                                enc.encode(list(pairs.contexts) + docs, role="context")]))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    (tmp_path / "corpus.txt").write_text(pairs.contexts[2] + " \n" + "doc x \n")
    res = cache_jsonl_vectors(tmp_path / "pairs.jsonl", get_encoder("vectors:p", files=[tmp_path / "v.npy"]),
                              tmp_path / "s.h5", corpus=CorpusFile(tmp_path / "corpus.txt"), block=3)
    assert res.status == "written" and open_cache(tmp_path / "s.h5").read("corpus")["text"] == ["doc x "]


def test_a_corpus_file_is_read_as_the_encoder_needs_it(tmp_path):
    """With an encoder of texts a Parquet file with a vector column beside 'text' is a file of
    texts, and other vector files are refused; with vectors:NAME it is a vector file whose rows of
    role query (another cache's queries) are not corpus texts."""
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"], "embedding": [[0.1, 0.2]] * 2}), tmp_path / "e.parquet")
    assert not CorpusFile(tmp_path / "e.parquet", vectors=False).vectors
    assert list(CorpusFile(tmp_path / "e.parquet", vectors=False).texts()) == ["a", "b"]
    assert CorpusFile(tmp_path / "e.parquet", vectors=True).vectors
    np.save(tmp_path / "v.npy", np.ones((2, 2), np.float32))
    with pytest.raises(DataError, match=r"v.npy: a file of vectors is a corpus only with --encoder vectors:NAME"):
        CorpusFile(tmp_path / "v.npy", vectors=False)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["vectors"], f["text"], f["role"] = np.ones((3, 2), np.float32), ["q 1", "doc 1", "doc 2"], ["query", "context", ""]
    with pytest.raises(Exception, match="r.h5: row 3 has role ''"):
        list(CorpusFile(tmp_path / "r.h5", vectors=True).texts())
    with h5py.File(tmp_path / "r.h5", "a") as f:
        del f["role"]
        f["role"] = ["query", "context", "document"]
    assert list(CorpusFile(tmp_path / "r.h5", vectors=True).texts()) == ["doc 1", "doc 2"]
    pairs = planted_pairs(n_groups=2)
    with pytest.raises(CacheError, match=r"v.npy: a file of vectors is a corpus only for a vectors:NAME encoder"):
        build_cache(pairs, PlantedEncoder(pairs), tmp_path / "api.h5", progress=False, corpus=CorpusFile(tmp_path / "v.npy"))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"query": "q", "context": "c"}) + "\n")
    code = cli.main(["cache", "--dataset", "jsonl", "--data", str(tmp_path / "pairs.jsonl"), "--corpus",
                     str(tmp_path / "v.npy"), "--out", str(tmp_path / "o.h5"), "--quiet"])
    assert code == 2 and not (tmp_path / "o.h5").exists()


def test_a_corpus_is_not_added_to_a_cache_whose_vectors_are_linked_shards(tmp_path):
    """A --ray cache links its shards in OUT.parts/: adding a corpus is refused as what it is, and
    --overwrite removes the cache before its shards, so no cache without vectors is left."""
    from projhead.cache_build import RAY_LAYOUT

    pairs, enc, out = _cached(tmp_path, ["doc 1"])
    ray_out = tmp_path / "ray.h5"
    build_cache(pairs, enc, ray_out, progress=False)
    parts = tmp_path / "ray.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"layout": RAY_LAYOUT, "shard_size": 2048}))
    (parts / "queries-000000.h5").write_bytes(b"the cache's vectors")
    corpus = CorpusFile(_corpus(tmp_path / "more.jsonl", ["doc 1", "doc 2"]))
    with pytest.raises(CacheError, match="ray.h5.parts: the vectors of the --ray cache"):
        build_cache(pairs, enc, ray_out, progress=False, corpus=corpus)
    assert (parts / "queries-000000.h5").exists() and ray_out.exists()
    assert build_cache(pairs, enc, ray_out, progress=False, corpus=corpus, overwrite=True).status == "written"
    assert open_cache(ray_out).read("corpus")["text"] == ["doc 1", "doc 2"] and not parts.exists()


def test_the_out_of_500_rows_are_the_same_with_and_without_the_corpus(tmp_path):
    """Dense, BM25, fused and RRF: the out-of-500 protocol ranks the block's labelled contexts,
    BM25's statistics and the fusion's normalisation taken over the labelled contexts, so the
    corpus changes only the full-corpus figures."""
    import projhead
    from projhead.corpus import with_corpus
    from projhead.evaluate import bm25_ranks
    from projhead.fusion import FusionSpec

    from projhead.data import Pairs

    fruit = ["apple", "banana", "cherry", "grape"]
    contexts = [f"{f} pie recipe" for f in fruit]
    queries = [f"{a} {b} pie" for a, b in zip(fruit, fruit[1:] + fruit[:1])]  # two contexts match a word each
    pairs = Pairs(queries, [f"q{i}" for i in range(4)], ["a", "a", "b", "b"], contexts, np.arange(4),
                  {"dataset": "fruit", "split": "train", "granularity": "sentence"})
    docs = [f"{f} smoothie number {i}" for i in range(30) for f in fruit[1:3]]  # banana and cherry lose weight
    out = tmp_path / "c.h5"
    build_cache(pairs, PlantedEncoder(pairs), out, progress=False,
                corpus=CorpusFile(_corpus(tmp_path / "docs.jsonl", docs)))
    c = open_cache(out)
    spec = FusionSpec(weight=0.6)
    a = projhead.evaluate_cache(with_corpus(c), bm25=True, fusion=spec, block=16)
    b = projhead.evaluate_cache(with_corpus(c, 0), bm25=True, fusion=spec, block=16)
    assert set(a) == {"frozen", "bm25", "frozen+bm25", "rrf"}
    for system in a:
        assert a[system]["out_of_16"] == b[system]["out_of_16"], system
    assert any(a[s]["full_corpus"] != b[s]["full_corpus"] for s in a)
    np.testing.assert_array_equal(bm25_ranks(with_corpus(c), 16).block, bm25_ranks(with_corpus(c, 0), 16).block)


def test_each_training_run_on_one_cache_object_ranks_against_the_corpus_it_asks_for(tmp_path):
    """A cache object reused for several runs: each run's corpus_sample decides, unless the
    corpus (or other distractors) was attached by hand; a sample of no corpus is refused."""
    from projhead.config import TrainConfig
    from projhead.corpus import with_corpus
    from projhead.heads import HeadConfig
    from projhead.train import TrainError, train_head

    _, _, path = _cached(tmp_path, [f"doc {i}" for i in range(50)])
    c = open_cache(path)

    def ranked(cache, sample):
        head, _ = train_head(cache, HeadConfig(kind="linear", towers="query"),
                             TrainConfig(epochs=1, batch_size=16, corpus_sample=sample), progress=False)
        return head.info["cache"]["distractors"]
    assert [ranked(c, s) for s in (0, None, 20, 0)] == [0, 50, 20, 0]
    attach_corpus(c, 10)  # by hand: it stays
    assert ranked(c, None) == 10 and ranked(c, 0) == 10
    c.attach_distractors(None, None)
    assert ranked(c, None) == 0
    both = with_corpus(open_cache(path))  # the corpus among the contexts already: not attached twice
    assert ranked(both, None) == 0 and len(both.ranked_contexts()[1]) == len(both.context_texts)
    plain = tmp_path / "plain.h5"
    pairs = planted_pairs(n_groups=8)
    build_cache(pairs, PlantedEncoder(pairs), plain, progress=False)
    with pytest.raises(DataError, match="no corpus section"):
        ranked(open_cache(plain), 20)
    with pytest.raises(TrainError, match="streamed training"):
        train_head(path, HeadConfig(kind="linear", towers="query"),
                   TrainConfig(epochs=1, batch_size=16, corpus_sample=20, stream=True), progress=False)


def test_a_subset_of_a_cache_with_its_corpus_is_evaluated_on_its_own_rows(tmp_path):
    from projhead.corpus import with_corpus
    from projhead.evaluate import evaluate_cache

    _, _, path = _cached(tmp_path, [f"doc {i} about things" for i in range(30)])
    both = with_corpus(open_cache(path))
    sub = both.subset(np.arange(0, len(both.q2c), 2))
    assert sub.attrs["n_distractors"] == 0  # the corpus rows are not carried: its contexts are its golds
    # the same figures as the subset of the cache without its corpus (it failed, or read other rows)
    assert evaluate_cache(sub, bm25=True) == evaluate_cache(open_cache(path).subset(np.arange(0, len(both.q2c), 2)),
                                                            bm25=True)
