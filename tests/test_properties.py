"""Property-based tests: loaders and the cache reader either work or raise their own error."""
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PlantedEncoder, planted_pairs
from projhead.cache import CacheError, build_cache, open_cache
from projhead.data import DataError, answer_sentence, load_jsonl, load_squad, split_sentences

# any text a cache can hold: no NUL character, no unpaired surrogate (both refused when read: test_data.py)
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
               max_size=40).filter(lambda s: s.strip())
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fast
@given(st.lists(st.tuples(text, text), min_size=1, max_size=20))
def test_jsonl_roundtrip(tmp_path_factory, rows):
    f = tmp_path_factory.mktemp("j") / "p.jsonl"
    f.write_text("".join(json.dumps({"query": q, "context": c}) + "\n" for q, c in rows), encoding="utf-8")
    p = load_jsonl(f)
    assert p.queries == [q for q, _ in rows]
    assert [p.contexts[i] for i in p.q2c] == [c for _, c in rows]
    assert len(set(p.contexts)) == len(p.contexts)


@fast
@given(st.binary(max_size=300))
def test_jsonl_arbitrary_bytes_never_crash(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("b") / "p.jsonl"
    f.write_bytes(data)
    try:
        load_jsonl(f)
    except DataError as e:
        assert str(f) in str(e)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                               st.sampled_from(["data", "paragraphs", "context", "qas", "id", "question",
                                                "answers", "text", "title", "is_impossible"]), kids, max_size=5),
                           max_leaves=25)


@fast
@given(json_values)
def test_squad_loader_on_arbitrary_json(tmp_path_factory, doc):
    f = tmp_path_factory.mktemp("s") / "dev.json"
    f.write_text(json.dumps(doc))
    try:
        p = load_squad(f, "sentence")
    except DataError as e:
        assert str(f) in str(e)
    else:
        assert len(p) > 0


@fast
@given(st.lists(st.text(alphabet="abcdefgh ", min_size=3, max_size=30).filter(lambda s: s.strip()),
                min_size=1, max_size=6), st.data())
def test_answer_sentence_holds_the_answer(sentences, data):
    context = " ".join(s.strip().capitalize() + "." for s in sentences)
    start = data.draw(st.integers(0, len(context) - 1))
    end = data.draw(st.integers(start + 1, len(context)))
    answer = context[start:end]
    if not answer.strip():
        return
    got = answer_sentence(context, [answer], split_sentences(context))
    # the first occurrence of the answer lies inside the returned sentence(s)
    assert answer.strip() in got or answer in got


# derandomized: the same 150 damaged files every run. Damage to HDF5's global heap (where caches
# before format 3 kept their strings) could make the HDF5 library itself loop forever (h5py 3.16 /
# HDF5 2.0.0, a known library bug): caches no longer store anything there, and bench_damage.py
# tries thousands of damages with a timeout; here a loop of the library not yet met must not hang
# the test run.
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8))
def test_cache_reader_on_corrupted_files(tmp_path_factory, flips):
    d = tmp_path_factory.mktemp("c")
    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), d / "c.h5", progress=False)
    raw = bytearray((d / "c.h5").read_bytes())
    for pos, val in flips:
        raw[pos % len(raw)] = val
    (d / "bad.h5").write_bytes(bytes(raw))
    try:
        c = open_cache(d / "bad.h5")
    except CacheError as e:
        assert "bad.h5" in str(e)
    else:
        # damage that goes unnoticed may only hit bytes that hold no data
        good = open_cache(d / "c.h5")
        np.testing.assert_array_equal(c.queries, good.queries)
        np.testing.assert_array_equal(c.contexts, good.contexts)
        np.testing.assert_array_equal(c.q2c, good.q2c)
        assert c.query_texts == good.query_texts and c.context_texts == good.context_texts


@fast
@given(st.lists(st.text(max_size=40), min_size=1, max_size=60), st.data())
def test_packed_texts_read_as_h5py_strings(tmp_path_factory, texts, data):
    """A text column written in random blocks reads back, by slices, rows and masks, as the
    same texts in an h5py string dataset do."""
    import h5py

    from projhead.h5strings import PackedText, create_text

    texts = [t.replace("\x00", "") for t in texts]  # h5py's strings cannot hold NUL
    n = len(texts)
    f = h5py.File(tmp_path_factory.mktemp("t") / "t.h5", "w", libver="latest")
    col, ref = create_text(f, "packed", n), f.create_dataset("ref", data=texts, dtype=h5py.string_dtype("utf-8"))
    a = 0
    while a < n:
        b = data.draw(st.integers(a + 1, n))
        col[a:b] = texts[a:b]
        a = b
    start, stop = sorted(data.draw(st.tuples(st.integers(-n, n), st.integers(-n, n))))
    step = data.draw(st.integers(1, 4))
    rows = sorted(set(data.draw(st.lists(st.integers(0, n - 1), max_size=10))))
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    for near in (PackedText.near, 0):  # rows read in one span, and (0) rows far apart read by runs
        col.near = near
        for index in (slice(start, stop, step), rows, mask, data.draw(st.integers(-n, n - 1)), ()):
            got, want = col[index], ref[index]
            assert (list(got) == list(want)) if isinstance(want, np.ndarray) else got == want
