"""A section registered here, outside the package, goes through the writer, reader and checks
unchanged: the registry is all it takes to add data to the cache."""
import h5py
import numpy as np
import pytest

from conftest import PlantedEncoder, change_text, planted_pairs
from projhead.cache import (SECTIONS, CacheError, CacheWriter, Column, Section, TextColumn, add_section, cache_attrs,
                            open_cache, read_identity, read_rows, register_section, write_texts)


@pytest.fixture
def turns():
    """A toy of per-turn vectors of dialog queries: several turns a query, each with its
    vector, text, weight and the query it belongs to."""

    @register_section
    class Turns(Section):
        name, identity = "toy_turns", True
        columns = (Column("vectors", ("n_turns", "dim"), "vectors"),
                   Column("query", ("n_turns",), "index", of="n_queries", fingerprint=True),
                   Column("text", ("n_turns",), "text"),
                   Column("weight", ("n_turns",), "float"))

    @register_section
    class Notes(Section):  # several named instances, added to a finished cache
        name, named = "toy_notes", True
        columns = (Column("score", ("n_contexts", "k"), "float", finite=False),
                   Column("pick", ("picks", 2), "index", of=("n_queries", "n_contexts"), optional=True))

    yield Turns
    SECTIONS.pop("toy_turns")
    SECTIONS.pop("toy_notes")


def _write(path, pairs, enc, turn_vectors, turn_texts, turn_query, weight):
    with CacheWriter(path, len(pairs), len(pairs.contexts), enc.dim, "float32",
                     sections={"toy_turns": {"n_turns": len(turn_texts)}}) as w:
        w.write("queries/vectors", 0, enc.encode(pairs.queries))
        w.write("contexts/vectors", 0, enc.encode(pairs.contexts, role="context"))
        write_texts(w, pairs)
        for a in range(0, len(turn_texts), 5):  # streamed, in row blocks
            w.write("toy_turns/vectors", a, turn_vectors[a:a + 5])
            w.write("toy_turns/text", a, turn_texts[a:a + 5])
        w.write("toy_turns/query", 0, turn_query)
        w.write("toy_turns/weight", 0, weight)
        w.finish(cache_attrs(pairs.meta, enc.describe(), pairs.fingerprint(), 0.0))


def test_a_registered_section_round_trips_and_its_damage_is_named(turns, tmp_path):
    pairs = planted_pairs(n_groups=3)
    enc = PlantedEncoder(pairs)
    n = 2 * len(pairs)
    rng = np.random.default_rng(0)
    tv = rng.normal(size=(n, enc.dim)).astype(np.float32)
    texts = [f"turn {i} of {pairs.queries[i // 2]}" for i in range(n)]
    tq, weight = np.arange(n) // 2, rng.random(n).astype(np.float32)
    path = tmp_path / "t.h5"
    _write(path, pairs, enc, tv, texts, tq, weight)

    c = open_cache(path)
    assert c.sections == {"pairs": [""], "toy_turns": ["toy_turns"]}
    got = c.read("toy_turns")
    np.testing.assert_array_equal(got["vectors"], tv)
    np.testing.assert_array_equal(got["query"], tq)
    np.testing.assert_array_equal(got["weight"], weight)
    assert got["text"] == texts
    assert c.describe()["sections"]["toy_turns"]["sizes"] == {"n_turns": n}
    with c.section_data("toy_turns") as d:  # checked in chunks, then read lazily
        np.testing.assert_array_equal(read_rows(d["vectors"], np.array([7, 2, 7])), tv[[7, 2, 7]])
        assert list(TextColumn(d["text"], chunk=4)) == texts

    # identity: the section's fingerprint is part of the work; other turn texts are other work
    ident = read_identity(path)
    assert ident["fingerprint"] == pairs.fingerprint() and set(ident["sections"]) == {"toy_turns"}
    other = tmp_path / "o.h5"
    _write(other, pairs, enc, tv, texts[:-1] + ["another turn"], tq, weight)
    assert read_identity(other)["sections"] != ident["sections"]
    assert read_identity(other)["fingerprint"] == ident["fingerprint"]

    def damaged(edit):
        bad = tmp_path / "bad.h5"
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f["toy_turns"])
        open_cache(bad)  # the pairs are whole: the cache opens
        return lambda: open_cache(bad).read("toy_turns")

    def nan(g):
        g["weight"][3] = np.nan
    with pytest.raises(CacheError, match=r"bad.h5: toy_turns/weight holds NaN or Inf in 1 rows \(first: row 3\)"):
        damaged(nan)()
    with pytest.raises(CacheError, match="toy_turns/weight holds NaN"):
        with open_cache(tmp_path / "bad.h5").section_data("toy_turns"):
            pass

    def text(g):
        change_text(g, "text", 4, "a changed turn")
    with pytest.raises(CacheError, match="bad.h5: damaged section 'toy_turns', its texts or index do not match"):
        damaged(text)()

    def shape(g):
        del g["weight"]
        g.create_dataset("weight", data=np.ones(n + 1, np.float32))
    with pytest.raises(CacheError, match=rf"bad.h5: dataset toy_turns/weight has shape \({n + 1},\), expected \({n},\)"):
        damaged(shape)()

    def missing(g):
        del g["query"]
    with pytest.raises(CacheError, match="bad.h5: incomplete section 'toy_turns', missing toy_turns/query"):
        damaged(missing)()


def test_a_named_section_is_added_checked_and_replaced(turns, planted_cache):
    path = planted_cache(n_groups=3)
    c = open_cache(path)
    nq, nc = len(c.q2c), len(c.contexts)
    score = np.full((nc, 3), np.nan, np.float32)  # NaN allowed: finite=False
    add_section(path, "toy_notes", {"score": score, "pick": [[0, 1], [nq - 1, 0]]}, {"by": "test"}, instance="a")
    with pytest.raises(CacheError, match=r"toy_notes/b/pick points outside the \d+ rows of contexts"):
        add_section(path, "toy_notes", {"score": score, "pick": [[0, nc]]}, instance="b")
    with pytest.raises(CacheError, match=r"toy_notes/b/score has shape \(2, 3\), expected"):
        add_section(path, "toy_notes", {"score": score[:2]}, instance="b")
    with pytest.raises(CacheError, match="no column nope"):
        add_section(path, "toy_notes", {"score": score, "nope": score}, instance="b")
    c = open_cache(path)
    assert c.sections["toy_notes"] == ["toy_notes/a"]
    got = c.read("toy_notes", "a")
    assert got["attrs"]["by"] == "test" and got["pick"].tolist() == [[0, 1], [nq - 1, 0]]
    add_section(path, "toy_notes", {"score": np.zeros((nc, 1), np.float32)}, instance="a")  # replaces it
    got = open_cache(path).read("toy_notes", "a")
    assert got["score"].shape == (nc, 1) and "pick" not in got
    with pytest.raises(CacheError, match="no toy_notes section 'b' \\(it has: a\\)"):
        open_cache(path).read("toy_notes", "b")
    np.testing.assert_array_equal(open_cache(path).q2c, c.q2c)  # the pairs are untouched


def test_a_version_1_cache_is_read_and_checked_by_every_reader(tmp_path):
    """Version-1 files (groups outside the fingerprint, texts_sha256 beside it) open, read their
    pairs section and stream through eval --index; a changed text is still caught."""
    import h5py
    from conftest import PlantedEncoder, as_format_2, planted_pairs

    from projhead.cache import CacheError, build_cache
    from projhead.evaluate import evaluate_streamed
    from projhead.hashing import columns_sha256

    pairs = planted_pairs(n_groups=4)
    p = tmp_path / "v1.h5"
    build_cache(pairs, PlantedEncoder(pairs), p, progress=False)
    as_format_2(p)  # variable-length strings
    with h5py.File(p, "r+") as f:  # what a version-1 writer left
        f.attrs["format_version"] = 1
        f.attrs["fingerprint"] = columns_sha256([pairs.queries, pairs.query_ids, pairs.contexts], [pairs.q2c])
        f.attrs["texts_sha256"] = columns_sha256([pairs.queries, pairs.query_ids, pairs.groups, pairs.contexts])
    c = open_cache(p)
    assert c.read("pairs")["queries/text"] is not None
    assert "frozen" in evaluate_streamed(p, index="Flat")
    with h5py.File(p, "r+") as f:
        change_text(f, "queries/group", 0, "another article")
    with pytest.raises(CacheError, match="damaged cache"):
        open_cache(p).read("pairs")
    with pytest.raises(CacheError, match="damaged cache"):
        evaluate_streamed(p, index="Flat")


def test_the_writer_refuses_a_nameless_instance_and_leaves_unwritten_optional_columns_out(tmp_path):
    from projhead.cache import write_texts

    pairs = planted_pairs(n_groups=3)
    enc = PlantedEncoder(pairs)

    def write(path, sections, fill):
        with CacheWriter(path, len(pairs), len(pairs.contexts), enc.dim, "float32", sections=sections) as w:
            w.write("queries/vectors", 0, enc.encode(pairs.queries))
            w.write("contexts/vectors", 0, enc.encode(pairs.contexts, role="context"))
            write_texts(w, pairs)
            fill(w)
            w.finish(cache_attrs(pairs.meta, enc.describe(), pairs.fingerprint(), 0.0))

    negatives = np.full((len(pairs), 3), -1)
    with pytest.raises(CacheError, match="one of many"):
        write(tmp_path / "a.h5", {"mined": {"k": 3, "silver": 0}}, lambda w: None)
    assert not (tmp_path / "a.h5").exists()
    write(tmp_path / "b.h5", {"mined": {"k": 3, "silver": 0, "instance": "m"}},
          lambda w: w.write("mined/m/negatives", 0, negatives))
    m = open_cache(tmp_path / "b.h5").read("mined", "m")
    assert (m["negatives"] == -1).all() and not {"teacher", "negative_scores"} & set(m)
    with h5py.File(tmp_path / "b.h5") as f:
        assert set(f["mined/m"]) == {"negatives"}
