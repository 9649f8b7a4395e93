import json
import os
import signal
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from conftest import FIXTURES, PlantedEncoder, as_format_2, planted_pairs
from projhead.cache import CacheError, CacheWriter, build_cache, open_cache
from projhead.data import load_jsonl


def test_roundtrip_layout_and_attributes(tmp_path):
    pairs = planted_pairs(n_groups=3)
    enc = PlantedEncoder(pairs)
    res = build_cache(pairs, enc, tmp_path / "c.h5", progress=False)
    assert res.status == "written"
    c = open_cache(tmp_path / "c.h5")
    assert c.queries.shape == (len(pairs), 16) and c.contexts.shape == (len(pairs.contexts), 16)
    np.testing.assert_array_equal(c.q2c, pairs.q2c)
    assert c.query_texts == pairs.queries and c.context_texts == pairs.contexts
    assert c.query_ids == pairs.query_ids and c.groups == pairs.groups
    np.testing.assert_allclose(c.queries, enc.encode(pairs.queries, role="query"))
    np.testing.assert_allclose(c.contexts, enc.encode(pairs.contexts, role="context"))
    assert c.attrs["encoder"] == "test:planted" and c.attrs["fingerprint"] == pairs.fingerprint()
    assert c.attrs["normalized"] and c.attrs["dim"] == 16 and c.attrs["granularity"] == "sentence"
    assert not (tmp_path / "c.h5.parts").exists()


def test_contexts_are_encoded_once(tmp_path):
    pairs = planted_pairs(n_groups=2, queries_per_context=5)
    enc = PlantedEncoder(pairs)
    seen = []
    real = enc.encode
    enc.encode = lambda texts, batch_size=64, role="query": seen.extend((role, t) for t in texts) or real(texts, batch_size, role)
    build_cache(pairs, enc, tmp_path / "c.h5", progress=False)
    assert len(seen) == len(set(seen)) == len(set(pairs.queries)) + len(pairs.contexts)


def test_rerun_is_a_no_op_and_other_work_is_refused(tmp_path):
    pairs = planted_pairs(n_groups=2)
    enc = PlantedEncoder(pairs)
    out = tmp_path / "c.h5"
    build_cache(pairs, enc, out, progress=False)
    before = out.read_bytes()
    calls = enc.calls
    assert build_cache(pairs, enc, out, progress=False).status == "already complete"
    assert enc.calls == calls and out.read_bytes() == before
    other = planted_pairs(n_groups=3)
    with pytest.raises(CacheError, match="refusing to overwrite") as e:
        build_cache(other, PlantedEncoder(other), out, progress=False)
    assert "fingerprint" in str(e.value)
    with pytest.raises(CacheError, match="dtype"):
        build_cache(pairs, enc, out, dtype="float16", progress=False)
    assert out.read_bytes() == before  # nothing lost
    build_cache(other, PlantedEncoder(other), out, progress=False, overwrite=True)
    assert open_cache(out).attrs["n_queries"] == len(other)
    mine = tmp_path / "pairs.jsonl"  # --out given the input file by mistake: never replaced, even with --overwrite
    mine.write_text('{"query": "a", "context": "b"}\n')
    for overwrite in (False, True):
        with pytest.raises(CacheError, match="pairs.jsonl"):
            build_cache(pairs, enc, mine, progress=False, overwrite=overwrite)
    assert mine.read_text() == '{"query": "a", "context": "b"}\n'
    cut = tmp_path / "cut.h5"  # a cache cut short is still a cache: --overwrite replaces it
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CacheError):
        build_cache(pairs, enc, cut, progress=False)
    build_cache(pairs, enc, cut, progress=False, overwrite=True)
    assert open_cache(cut).attrs["n_queries"] == len(pairs)


def test_float16_storage(tmp_path):
    pairs = planted_pairs(n_groups=2)
    enc = PlantedEncoder(pairs)
    build_cache(pairs, enc, tmp_path / "h.h5", dtype="float16", progress=False)
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["queries/vectors"].dtype == np.float16
    c = open_cache(tmp_path / "h.h5")
    assert c.queries.dtype == np.float32
    np.testing.assert_allclose(c.queries, enc.encode(pairs.queries), atol=1e-3)


def test_float16_overflow_refused_at_the_first_shard_and_float32_resumes(tmp_path):
    pairs = planted_pairs(n_groups=10)  # 100 queries, 50 contexts
    enc = PlantedEncoder(pairs)
    real, calls = enc.encode, []

    def big(texts, **kw):  # unnormalised vectors beyond float16's range
        calls.append(len(texts))
        return real(texts, **kw) * 1e6
    enc.encode = big
    msg = r"the query text '.+' does not fit float16.*--dtype float32.*kept in .*big.h5.parts, and that run resumes"
    with pytest.raises(CacheError, match=msg):
        build_cache(pairs, enc, tmp_path / "big.h5", dtype="float16", shard_size=16, progress=False)
    assert calls == [16] and not (tmp_path / "big.h5").exists()  # refused after one shard, not after all
    with pytest.raises(CacheError, match=msg):  # the same command again: the kept shard is checked as it resumes
        build_cache(pairs, enc, tmp_path / "big.h5", dtype="float16", shard_size=16, progress=False)
    assert calls == [16]
    build_cache(pairs, enc, tmp_path / "big.h5", dtype="float32", shard_size=16, progress=False)
    assert sum(calls[1:]) == len(set(pairs.queries)) - 16 + len(pairs.contexts)  # shard 0 not encoded again
    assert open_cache(tmp_path / "big.h5").queries.max() > 65504
    with pytest.raises(CacheError, match=r"big16.h5: queries/vectors row \d+ does not fit float16"):
        with CacheWriter(tmp_path / "big16.h5", 2, 1, enc.dim, "float16") as w:  # vectors handed over, not encoded
            w.write("queries/vectors", 0, np.full((2, enc.dim), 7e4, np.float32))
    assert not (tmp_path / "big16.h5").exists()


def test_shard_folders_of_earlier_versions_still_resume(tmp_path):
    """Their manifests recorded the stored dtype, which shard folders no longer do."""
    import json

    pairs = planted_pairs(n_groups=4)
    enc = PlantedEncoder(pairs)
    real = enc.encode
    enc.encode = lambda texts, **kw: (_ for _ in ()).throw(KeyboardInterrupt()) if enc.calls else real(texts, **kw)
    with pytest.raises(KeyboardInterrupt):
        build_cache(pairs, enc, tmp_path / "c.h5", shard_size=8, progress=False)
    manifest = tmp_path / "c.h5.parts" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "dtype": "float32"}))  # as written before
    enc.encode = real
    assert build_cache(pairs, enc, tmp_path / "c.h5", shard_size=8, progress=False).status == "written"


def test_resume_after_failure_encodes_only_missing_shards(tmp_path):
    pairs = planted_pairs(n_groups=10)  # 100 queries, 50 contexts
    enc = PlantedEncoder(pairs)
    real, n = enc.encode, {"calls": 0}

    def flaky(texts, batch_size=64, role="query"):
        n["calls"] += 1
        if n["calls"] == 4:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the run
        return real(texts, batch_size, role)

    enc.encode = flaky
    out = tmp_path / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        build_cache(pairs, enc, out, shard_size=32, progress=False)
    assert not out.exists() and len(list((tmp_path / "c.h5.parts").glob("*.npy"))) == 3
    enc.encode = real
    calls = []
    enc.encode = lambda t, batch_size=64, role="query": calls.append(len(t)) or real(t, batch_size, role)
    build_cache(pairs, enc, out, shard_size=32, progress=False)
    assert sum(calls) == 150 - 3 * 32  # the three finished shards were not encoded again
    ref = tmp_path / "ref.h5"
    build_cache(pairs, PlantedEncoder(pairs), ref, shard_size=32, progress=False)
    np.testing.assert_array_equal(open_cache(out).queries, open_cache(ref).queries)
    np.testing.assert_array_equal(open_cache(out).contexts, open_cache(ref).contexts)


def test_partial_run_with_other_settings_is_not_reused(tmp_path):
    pairs = planted_pairs(n_groups=2)
    (tmp_path / "c.h5.parts").mkdir()
    (tmp_path / "c.h5.parts" / "manifest.json").write_text('{"encoder": "st:other"}')
    with pytest.raises(CacheError, match="partial work from a different run"):
        build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)


def test_concurrent_writer_is_refused(tmp_path):
    from filelock import FileLock

    pairs = planted_pairs(n_groups=2)
    lock = FileLock(str(tmp_path / "c.h5") + ".lock")
    with lock:
        with pytest.raises(CacheError, match="another projhead process"):
            build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)


def test_nan_vectors_are_refused_at_write_and_at_read(tmp_path):
    pairs = planted_pairs(n_groups=2)
    enc = PlantedEncoder(pairs)
    real = enc.encode
    enc.encode = lambda t, batch_size=64, role="query": real(t) * np.nan
    with pytest.raises(CacheError, match="NaN or Inf"):
        build_cache(pairs, enc, tmp_path / "c.h5", progress=False)
    enc.encode = real
    build_cache(pairs, enc, tmp_path / "d.h5", progress=False)
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f["contexts/vectors"][3, 0] = np.inf
    with pytest.raises(CacheError, match=r"contexts/vectors holds NaN or Inf in 1 rows \(first: row 3\)"):
        open_cache(tmp_path / "d.h5")


def test_foreign_truncated_and_missing_files(tmp_path):
    with pytest.raises(CacheError, match="no such cache file"):
        open_cache(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        open_cache(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not a projhead cache"):
        open_cache(tmp_path / "foreign.h5")
    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    data = (tmp_path / "c.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="trunc.h5"):
        open_cache(tmp_path / "trunc.h5")
    with h5py.File(tmp_path / "c.h5", "a") as f:
        del f["queries/group"]
    with pytest.raises(CacheError, match="missing queries/group"):
        open_cache(tmp_path / "c.h5")


def test_minilm_cache_matches_plain_sentence_transformers(tmp_path, minilm):
    pairs = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    build_cache(pairs, minilm, tmp_path / "m.h5", progress=False)
    c = open_cache(tmp_path / "m.h5")
    plain = minilm.model.encode(pairs.queries, normalize_embeddings=True)
    np.testing.assert_allclose(c.queries, plain, atol=1e-5)
    assert c.encoder == "st:all-MiniLM-L6-v2" and c.dim == 384
    assert c.encoder_info["settings"]["normalize"] is True


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import PlantedEncoder
    from projhead import encoders
    from projhead.cli import main
    from projhead.data import load_jsonl

    class Killed(PlantedEncoder):
        def encode(self, texts, batch_size=64, role="query"):
            if self.calls + 1 == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no cleanup of any kind
            return super().encode(texts, batch_size, role)

    encoders.ENCODERS["test"] = lambda spec, **kw: Killed(load_jsonl({data!r}))
    sys.exit(main(["cache", "--dataset", "jsonl", "--data", {data!r}, "--encoder", "test:planted",
                   "--out", {out!r}, "--shard-size", "16", "--quiet"]))
""")


def _planted_jsonl(path):
    pairs = planted_pairs(n_groups=20)
    path.write_text("".join(json.dumps({"query": q, "context": pairs.contexts[c], "group": g}) + "\n"
                            for q, c, g in zip(pairs.queries, pairs.q2c, pairs.groups)))
    return load_jsonl(path)


@pytest.mark.parametrize("kill_at", [1, 3, 9, 14, 20])
def test_kill_9_of_the_cli_then_resume_gives_identical_cache(tmp_path, kill_at):
    data = tmp_path / "pairs.jsonl"
    pairs = _planted_jsonl(data)
    out = str(tmp_path / "c.h5")
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), kill_at=kill_at, out=out, data=str(data))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not os.path.exists(out)  # never half written
    shards = len(list((tmp_path / "c.h5.parts").glob("*.npy")))
    assert shards == kill_at - 1
    enc = PlantedEncoder(pairs)
    build_cache(pairs, enc, out, shard_size=16, progress=False)  # the resumed run
    assert enc.calls == 20 - shards  # 13 query + 7 context shards in all
    ref = tmp_path / "ref.h5"
    build_cache(pairs, PlantedEncoder(pairs), ref, shard_size=16, progress=False)
    a, b = open_cache(out), open_cache(ref)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


FSIZE_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import PlantedEncoder, planted_pairs
    from projhead.cache import CacheError, build_cache
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    pairs = planted_pairs(n_groups=20)
    try:
        build_cache(pairs, PlantedEncoder(pairs), {out!r}, shard_size=16, progress=False)
    except CacheError as e:
        print(e)
        sys.exit(3)
""")


def test_file_size_limit_gives_clear_error_and_keeps_shards(tmp_path):
    out = str(tmp_path / "c.h5")
    # shards (~1 KB) fit under the limit, the joined HDF5 file does not: a real failing write
    r = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT.format(tests=os.path.dirname(__file__), limit=20000,
                                                                   out=out)], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "File too large" in r.stdout and "finished shards are kept" in r.stdout
    assert not os.path.exists(out) and not list(tmp_path.glob("c.h5.tmp*"))
    shards = len(list((tmp_path / "c.h5.parts").glob("*.npy")))
    assert shards == -(-200 // 16) + -(-100 // 16)  # 200 queries, 100 contexts
    pairs = planted_pairs(n_groups=20)
    enc = PlantedEncoder(pairs)
    build_cache(pairs, enc, out, shard_size=16, progress=False)
    assert enc.calls == 0  # everything came from the kept shards
    np.testing.assert_allclose(open_cache(out).queries, enc.encode(pairs.queries))


def test_disk_full_keeps_finished_work_and_the_old_file(tmp_path, monkeypatch):
    import errno

    import projhead.cache_build as pc

    pairs = planted_pairs(n_groups=5)
    out = tmp_path / "c.h5"
    build_cache(pairs, PlantedEncoder(pairs), out, progress=False)
    before = out.read_bytes()
    other = planted_pairs(n_groups=6)
    real, n = np.save, [0]

    def full(f, arr, allow_pickle=False):
        n[0] += 1
        if n[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(getattr(f, "name", "")))
        return real(f, arr, allow_pickle=allow_pickle)

    monkeypatch.setattr(pc.np, "save", full)
    with pytest.raises(CacheError, match="No space left on device.*2 finished shards are kept.*existing cache file is untouched"):
        build_cache(other, PlantedEncoder(other), out, shard_size=16, overwrite=True, progress=False)
    assert out.read_bytes() == before
    assert not list((tmp_path / "c.h5.parts").glob("*.tmp*"))  # no half-written shard left


def test_unwritable_destination(tmp_path):
    (tmp_path / "afile").write_text("x")
    pairs = planted_pairs(n_groups=2)
    with pytest.raises(CacheError, match="cannot write in"):
        build_cache(pairs, PlantedEncoder(pairs), tmp_path / "afile" / "c.h5", progress=False)


def test_damaged_text_fails_to_read(tmp_path):
    """Texts are checksummed bytes: a flipped byte in one question fails to read instead of
    coming back as another question (found by the property test)."""
    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    with h5py.File(tmp_path / "c.h5", "r") as f:  # where the questions' (compressed) bytes are
        chunk = f["queries/text/utf8"].id.get_chunk_info(0)
    raw = bytearray((tmp_path / "c.h5").read_bytes())
    raw[chunk.byte_offset + chunk.size // 2] ^= 0x20
    (tmp_path / "bad.h5").write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="bad.h5: damaged cache, cannot read it"):
        open_cache(tmp_path / "bad.h5")


def test_a_damaged_string_attribute_fails_to_read(tmp_path):
    """String attributes are fixed-length, checksummed by HDF5 when short and by their sha256
    (every length): a flipped byte in the encoder's description, or in a long description of
    the data, fails to read (in format 2 both read as another description)."""
    pairs = planted_pairs(n_groups=2)
    pairs.meta["note"] = "a long description of the data " * 200  # meta_json over 4 KiB
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    for needle in (b'"weights_sha256"', b"description of the data a long"):
        raw = bytearray((tmp_path / "c.h5").read_bytes())
        at = raw.find(needle)
        assert at > 0
        raw[at + 1] ^= 0x20
        (tmp_path / "bad.h5").write_bytes(bytes(raw))
        with pytest.raises(CacheError, match="bad.h5: damaged cache, cannot read it"):
            open_cache(tmp_path / "bad.h5")


def test_a_section_added_to_a_format_2_cache_makes_it_format_3(tmp_path):
    """What is added is written in today's layout, so the file says so: a projhead that reads
    format 2 only asks to be upgraded instead of misreading the new section."""
    from projhead.cache import add_section

    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    as_format_2(tmp_path / "c.h5")
    before = open_cache(tmp_path / "c.h5")
    assert before.attrs["format_version"] == 2
    negatives = np.zeros((len(pairs), 2), np.int64)
    add_section(tmp_path / "c.h5", "mined", {"negatives": negatives}, {"settings_json": "{}"}, instance="x")
    after = open_cache(tmp_path / "c.h5")
    assert after.attrs["format_version"] == 3 and after.attrs["fingerprint"] == before.attrs["fingerprint"]
    assert after.query_texts == before.query_texts
    np.testing.assert_array_equal(after.mined("x")["negatives"], negatives)
    np.testing.assert_array_equal(after.queries, before.queries)
    _assert_no_heap_strings(tmp_path / "c.h5")  # the whole file is format 3, not only what was added


def _assert_no_heap_strings(path) -> None:
    """No variable-length string dataset or attribute anywhere in the file."""
    from projhead.h5strings import PackedText, column

    with h5py.File(path, "r") as f:
        assert isinstance(column(f, "queries/text"), PackedText)
        objects = [f]
        f.visititems(lambda name, obj: objects.append(obj))
        for obj in objects:
            if isinstance(obj, h5py.Dataset):
                assert not h5py.check_string_dtype(obj.dtype), obj.name
            for k in obj.attrs:
                assert obj.attrs.get_id(k).dtype.kind != "O", (obj.name, k)


def test_upgrade_rewrites_a_format_2_cache_without_encoding(tmp_path):
    from projhead.cache import upgrade_cache

    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    as_format_2(tmp_path / "c.h5")
    before = open_cache(tmp_path / "c.h5")
    assert upgrade_cache(tmp_path / "c.h5") == 2
    after = open_cache(tmp_path / "c.h5")
    assert after.attrs["format_version"] == 3 and after.attrs["fingerprint"] == before.attrs["fingerprint"]
    assert (after.query_texts, after.query_ids, after.groups, after.context_texts) == (
        before.query_texts, before.query_ids, before.groups, before.context_texts)
    np.testing.assert_array_equal(after.contexts, before.contexts)
    _assert_no_heap_strings(tmp_path / "c.h5")
    kept = (tmp_path / "c.h5").read_bytes()
    assert upgrade_cache(tmp_path / "c.h5") == 3 and (tmp_path / "c.h5").read_bytes() == kept  # nothing to do
    as_format_2(tmp_path / "c.h5")
    (tmp_path / "link.h5").symlink_to(tmp_path / "c.h5")
    assert upgrade_cache(tmp_path / "link.h5") == 2  # the file the link points at, the link kept
    assert (tmp_path / "link.h5").is_symlink() and open_cache(tmp_path / "c.h5").attrs["format_version"] == 3
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(CacheError, match="format 1.*build it again"):
        upgrade_cache(tmp_path / "c.h5")
    # a damaged format 2 cache (a text its fingerprint disagrees with) is refused, not sealed under new checksums
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "d.h5", progress=False)
    as_format_2(tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        texts = list(f["contexts/text"][()])
        texts[1] = b"context edited"
        del f["contexts/text"]
        f.create_dataset("contexts/text", data=texts, dtype=h5py.string_dtype("utf-8"))
    damaged = (tmp_path / "d.h5").read_bytes()
    with pytest.raises(CacheError, match="d.h5: damaged cache"):
        upgrade_cache(tmp_path / "d.h5")
    from projhead.mine import mine
    with pytest.raises(CacheError, match="d.h5: damaged cache"):  # an addition rewrites the file too
        mine(tmp_path / "d.h5", progress=False)
    assert (tmp_path / "d.h5").read_bytes() == damaged


def test_a_short_write_is_completed_and_a_write_of_nothing_is_an_error(tmp_path, monkeypatch):
    """The writer's file is unbuffered: a write the system cuts short (a filling disk) is
    finished by writing the rest, and one that writes nothing fails the cache, naming it."""
    import io

    import projhead.cache_writer as cw

    cuts = {"n": 0, "zero": False}

    class Short(io.FileIO):
        def write(self, b):
            view = memoryview(b).cast("B")
            cuts["n"] += 1
            if cuts["zero"] and cuts["n"] > 3:
                return 0
            return super().write(view[:max(1, len(view) // 2)])  # every write cut to half

    def short_open(path, mode, buffering=-1):
        return Short(path, mode.replace("b", ""))

    pairs = planted_pairs(n_groups=3)
    monkeypatch.setattr(cw, "open", short_open, raising=False)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    assert cuts["n"] > 10
    monkeypatch.undo()
    c = open_cache(tmp_path / "c.h5")
    assert c.query_texts == pairs.queries
    np.testing.assert_allclose(c.queries, PlantedEncoder(pairs).encode(pairs.queries), atol=1e-6)

    monkeypatch.setattr(cw, "open", short_open, raising=False)
    cuts.update(n=0, zero=True)
    with pytest.raises(CacheError, match="c2.h5.*wrote .* of .* bytes"):
        build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c2.h5", progress=False)
    assert not (tmp_path / "c2.h5").exists()


def test_format_2_caches_are_read_and_their_damaged_texts_caught_by_the_fingerprint(tmp_path):
    """Caches written before texts were packed (variable-length strings, which no HDF5
    checksum covers) still read the same; there the fingerprint catches a flipped byte."""
    pairs = planted_pairs(n_groups=2)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    new = open_cache(tmp_path / "c.h5")
    as_format_2(tmp_path / "c.h5")
    old = open_cache(tmp_path / "c.h5")
    assert old.attrs["format_version"] == 2 and old.attrs["fingerprint"] == new.attrs["fingerprint"]
    assert list(old.query_texts) == pairs.queries and list(old.context_texts) == pairs.contexts
    np.testing.assert_array_equal(old.queries, new.queries)
    raw = bytearray((tmp_path / "c.h5").read_bytes())
    at = raw.find(b"question 1 about 1-3")
    assert at > 0
    raw[at] = ord("Q")
    (tmp_path / "bad.h5").write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="bad.h5: damaged cache, its texts or index do not match their checksum"):
        open_cache(tmp_path / "bad.h5")


def test_changed_groups_are_new_work_not_an_already_complete_cache(tmp_path):
    """Groups drive the dev split and group batching: a cache of the same texts with other
    groups must not be reused as if it were the same data."""
    pairs = planted_pairs(n_groups=4)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    regrouped = planted_pairs(n_groups=4)
    regrouped.groups = ["one document"] * len(regrouped)
    with pytest.raises(CacheError, match="fingerprint"):
        build_cache(regrouped, PlantedEncoder(regrouped), tmp_path / "c.h5", progress=False)
    build_cache(regrouped, PlantedEncoder(regrouped), tmp_path / "c.h5", progress=False, overwrite=True)
    assert set(open_cache(tmp_path / "c.h5").groups) == {"one document"}


def test_a_damaged_group_or_index_is_caught_on_read(tmp_path):
    import h5py

    pairs = planted_pairs(n_groups=3)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f["queries/context"][0] = f["queries/context"][1] + 1  # another context, still in range
    with pytest.raises(CacheError, match="do not match their checksum \\(fingerprint\\)"):
        open_cache(tmp_path / "c.h5")


def test_subset_keeps_only_its_rows_and_their_contexts(tmp_path):
    pairs = planted_pairs(n_groups=3)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    c = open_cache(tmp_path / "c.h5")
    rows = np.array([7, 3, 20])
    s = c.subset(rows)
    assert s.query_texts == [c.query_texts[i] for i in rows]
    np.testing.assert_array_equal(s.contexts[s.q2c], c.contexts[c.q2c[rows]])
    assert [s.context_texts[i] for i in s.q2c] == [c.context_texts[i] for i in c.q2c[rows]]
    assert s.attrs["n_queries"] == 3 and s.attrs["fingerprint"] != c.attrs["fingerprint"]


def test_cache_dataset_names_builds_and_reuses(tmp_path):
    from conftest import FIXTURES
    from projhead.cache import cache_dataset
    from projhead.data import load_jsonl

    src = FIXTURES / "pairs-tiny.jsonl"
    enc = PlantedEncoder(load_jsonl(src))
    c = cache_dataset("jsonl", "", "", enc, tmp_path, data=src)
    assert c.path == tmp_path / "pairs-tiny-planted.h5" and len(c.q2c) == len(load_jsonl(src))
    calls = enc.calls
    assert cache_dataset("jsonl", "", "", enc, tmp_path, data=src).attrs["fingerprint"] == c.attrs["fingerprint"]
    assert enc.calls == calls  # already there: nothing encoded again


def test_the_file_is_written_in_blocks_from_the_shards(tmp_path, monkeypatch):
    import projhead.cache_build as pc

    pairs = planted_pairs(n_groups=20)
    ref = tmp_path / "ref.h5"
    build_cache(pairs, PlantedEncoder(pairs), ref, shard_size=16, progress=False)
    sizes = []
    real = pc.ShardedVectors.rows

    def rows(self, idx):
        sizes.append(len(idx))
        return real(self, idx)

    monkeypatch.setattr(pc, "WRITE_BLOCK", 32)
    monkeypatch.setattr(pc.ShardedVectors, "rows", rows)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", shard_size=16, progress=False)
    assert max(sizes) == 32 and sum(sizes) == len(pairs) + len(pairs.contexts)  # never all vectors at once
    a, b = open_cache(tmp_path / "c.h5"), open_cache(ref)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_cache_writer_makes_a_readable_cache_block_by_block(tmp_path):
    from projhead.cache import CacheWriter, cache_attrs, write_texts

    pairs = planted_pairs(n_groups=4)
    enc = PlantedEncoder(pairs)
    qv, cv = enc.encode(pairs.queries), enc.encode(pairs.contexts)
    out = tmp_path / "w.h5"
    with CacheWriter(out, len(pairs), len(pairs.contexts), enc.dim, "float16", block=8) as w:
        for a in range(0, len(pairs), 7):  # blocks that do not line up with the chunks
            w.write("queries/vectors", a, qv[a:a + 7])
        w.write("contexts/vectors", 0, cv)
        write_texts(w, pairs)
        w.finish(cache_attrs(pairs.meta, enc.describe(), pairs.fingerprint(), 0.0))
        assert not out.exists()  # renamed into place only when whole
    c = open_cache(out)  # checks format, fingerprint of the texts, finite vectors
    assert c.attrs["dtype"] == "float16" and bool(c.attrs["normalized"])
    np.testing.assert_allclose(c.queries, qv, atol=1e-3)
    with pytest.raises(ValueError, match="boom"):
        with CacheWriter(tmp_path / "x.h5", 2, 2, 4, "float32") as w:
            raise ValueError("boom")
    assert not list(tmp_path.glob("x.h5*"))  # nothing left behind


def test_turns_and_ray_shards_beyond_float16_are_refused_before_anything_is_written(tmp_path):
    """The turns section of a float16 cache and a Ray actor's float16 shard: refused with the
    text named, nothing stored (they stored Inf, found only when read)."""
    from projhead.distributed import ShardEncoder
    from projhead.turns import add_turns

    pairs = planted_pairs(n_groups=4)
    enc = PlantedEncoder(pairs)
    build_cache(pairs, enc, tmp_path / "h.h5", dtype="float16", progress=False)
    real = enc.encode
    enc.encode = lambda texts, **kw: real(texts, **kw) * 1e6
    slots = [[q, f"earlier {i}"] for i, q in enumerate(pairs.queries)]
    with pytest.raises(CacheError, match="the turn text '.+' does not fit float16.*--dtype float32 --overwrite"):
        add_turns(tmp_path / "h.h5", enc, slots, ["question", "question-1"])
    assert "turns" not in open_cache(tmp_path / "h.h5").sections
    np.save(tmp_path / "v.npy", np.array([[1, 0], [7e4, 0], [0, 1]], np.float32))
    (tmp_path / "v.jsonl").write_text('"a"\n"b"\n"c"\n')
    actor = ShardEncoder("vectors:x", {"files": [tmp_path / "v.npy"], "normalize": False}, 64, "float16")
    with pytest.raises(CacheError, match="the text 'b' does not fit float16.*with --overwrite: the shards of a Ray run"):
        actor({"path": [str(tmp_path / "q-0.h5")], "role": ["queries"], "texts": [["a", "b", "c"]]})
    assert not (tmp_path / "q-0.h5").exists()


def test_query_rows_of_a_subset_are_integers_or_a_mask(tmp_path):
    from projhead.cache import build_cache, open_cache
    from projhead.recipe import train_recipe

    pairs = planted_pairs(n_groups=4)
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False)
    c = open_cache(tmp_path / "c.h5")
    mask = np.zeros(len(c.q2c), bool)
    mask[[1, 4, 5]] = True
    assert c.subset(mask).query_texts == [c.query_texts[i] for i in (1, 4, 5)]  # not rows 0 and 1
    assert c.subset([-1]).query_texts == [c.query_texts[-1]]
    for bad, message in ((mask[:-1], "one value per query"), ([1.5], "list of integers"),
                         ([len(c.q2c)], "beyond its"), ([[1, 2]], "list of integers")):
        with pytest.raises(CacheError, match=message):
            c.subset(bad)
    with pytest.raises(CacheError, match="one value per query"):
        train_recipe(c, mask[:3], epochs=1)


def _ray_here(monkeypatch):
    """Ray's API as build_cache_ray uses it, run in this process (the shard encoder is the real one)."""
    import types

    class Shards:
        def __init__(self, items):
            self.items = items

        def map_batches(self, actor, fn_constructor_kwargs, **_):
            enc = actor(**fn_constructor_kwargs)
            self.done = [enc({"path": [w["path"]], "role": [w["role"]], "texts": [w["texts"]]}) for w in self.items]
            return self

        def take_all(self):
            return [{"path": p} for d in self.done for p in d["path"]]
    data = types.SimpleNamespace(from_items=lambda items, **_: Shards(items),
                                 DataContext=types.SimpleNamespace(get_current=lambda: types.SimpleNamespace()))
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True, data=data))


def test_a_cache_of_linked_shards_never_reads_another_jobs_shards_and_says_which_are_gone(tmp_path, monkeypatch):
    """cache --ray: the shards' names carry the job, so a copy of the cache made with other
    settings fails clearly instead of reading the shards of the run that replaced it; shards gone
    are named, and a rerun does not call such a cache complete."""
    from projhead.distributed import build_cache_ray

    import projhead.encoders

    _ray_here(monkeypatch)
    pairs = planted_pairs(n_groups=6)
    enc = PlantedEncoder(pairs, dim=8)
    monkeypatch.setattr(projhead.encoders, "get_encoder", lambda name, **settings: enc)
    out = tmp_path / "ray.h5"
    settings = {}
    assert build_cache_ray(pairs, "planted", out, settings=settings, shard_size=5, progress=False).status == "written"
    first = open_cache(out)
    np.testing.assert_allclose(first.queries, enc.encode(pairs.queries, role="query"), atol=1e-6)
    shutil.copy(out, tmp_path / "backup.h5")
    # the same pairs again with other settings (float16): --overwrite replaces the shards
    build_cache_ray(pairs, "planted", out, settings=settings, shard_size=5, dtype="float16", overwrite=True,
                    progress=False)
    with pytest.raises(CacheError, match=r"shard files: \d+ missing, first ray\.h5\.parts/queries-"):
        open_cache(tmp_path / "backup.h5")  # its own shards are gone: refused, not the new run's read as its own
    gone = sorted((tmp_path / "ray.h5.parts").glob("contexts-*.h5"))[0]
    gone.unlink()
    with pytest.raises(CacheError, match=f"shard files: 1 missing, first ray.h5.parts/{gone.name}"):
        open_cache(out)
    with pytest.raises(CacheError, match=f"1 of the shard files .* are gone \\(first: ray.h5.parts/{gone.name}"):
        build_cache_ray(pairs, "planted", out, settings=settings, shard_size=5, dtype="float16", progress=False)
    pytest.importorskip("faiss")
    from projhead.config import TrainConfig, TrainError
    from projhead.evaluate import evaluate_streamed
    from projhead.heads import HeadConfig
    from projhead.train import train_head

    with pytest.raises(CacheError, match=f"NaN or Inf .*shard files its vectors are linked from are gone \\(first: "
                                         f"ray.h5.parts/{gone.name}"):
        evaluate_streamed(out, index="Flat")  # the streamed readers name them too
    with pytest.raises(TrainError, match="NaN or Inf .*shard files its vectors are linked from are gone"):
        train_head(out, HeadConfig(kind="linear"), TrainConfig(stream=True, epochs=1, batch_size=8), progress=False)
