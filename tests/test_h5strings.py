"""Text columns as checksummed UTF-8 bytes and offsets, read as h5py reads strings."""
import h5py
import numpy as np
import pytest

from projhead.h5strings import PackedText, column, create_text, read_attrs, write_attrs

TEXTS = ["", "plain", "ünïcödé ✓", "a much longer text " * 50, "", "last one"]


def _column(tmp_path, texts, blocks=(2, 3, 1)):
    f = h5py.File(tmp_path / "t.h5", "w", libver="latest")
    col = create_text(f, "g/text", len(texts))
    a = 0
    for k in blocks:
        col[a:a + k] = texts[a:a + k]
        a += k
    return f, col


def test_rows_read_back_as_written_by_every_kind_of_index(tmp_path):
    f, col = _column(tmp_path, TEXTS)
    want = np.array([t.encode("utf-8") for t in TEXTS], object)
    got = column(f, "g/text")
    assert isinstance(got, PackedText) and got.shape == (6,) and len(got) == 6 and got.dtype == object
    assert list(got[()]) == list(want) and list(got[...]) == list(want)
    assert got[2] == want[2] and got[-1] == want[-1] and got[0] == b""
    assert list(got[1:4]) == list(want[1:4]) and list(got[::2]) == list(want[::2]) and len(got[4:2]) == 0
    rows = np.array([5, 0, 2, 2, -1])
    assert list(got[rows]) == list(want[rows])
    assert list(got[[3]]) == [want[3]] and len(got[np.zeros(0, int)]) == 0
    with pytest.raises(IndexError):
        got[6]
    with pytest.raises(IndexError):
        got[[0, 6]]


def test_rows_far_apart_are_read_one_by_one_with_the_same_result(tmp_path):
    texts = [f"text {i}" for i in range(5000)]
    f, col = _column(tmp_path, texts, blocks=(4096, 904))
    rows = np.array([4999, 0, 2500])  # the span is far larger than the rows asked for
    assert [t.decode() for t in col[rows]] == [texts[i] for i in rows]


def test_texts_are_written_in_row_order_only(tmp_path):
    f = h5py.File(tmp_path / "t.h5", "w", libver="latest")
    col = create_text(f, "text", 4)
    col[0:2] = ["a", "b"]
    with pytest.raises(ValueError, match="row order"):
        col[0:2] = ["c", "d"]  # rewriting would leave bytes nobody points at
    with pytest.raises(ValueError, match="3 texts for rows 2..3"):
        col[2:4] = ["c", "d", "e"]
    with pytest.raises(TypeError, match="row blocks"):
        col[[2, 3]] = ["c", "d"]
    col[2:4] = [b"c", "d"]
    assert list(col[()]) == [b"a", b"b", b"c", b"d"]


def test_damaged_offsets_fail_to_read(tmp_path):
    f, col = _column(tmp_path, TEXTS)
    col.ends[3] = 1  # as a writer with other ideas could leave it: offsets out of order
    with pytest.raises(ValueError, match="damaged text offsets"):
        col[()]


def test_string_attributes_are_fixed_length_and_read_back(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w", libver="latest") as f:
        write_attrs(f, {"name": "ünï", "empty": "", "n": 3, "big": "x" * 100_000, "raw": b"bytes"})
        assert f.attrs.get_id("name").dtype.kind == "S"  # not h5py's variable-length str
        assert f.attrs.get_id("raw").dtype.kind == "S"
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert read_attrs(f) == {"name": "ünï", "empty": "", "n": 3, "big": "x" * 100_000, "raw": "bytes"}


def test_masks_and_other_index_kinds_read_as_h5py_reads_them(tmp_path):
    f, col = _column(tmp_path, TEXTS)
    want = np.array([t.encode("utf-8") for t in TEXTS], object)
    mask = np.array([True, False, True, False, False, True])
    assert list(col[mask]) == list(want[mask]) and list(col[(slice(1, 3),)]) == list(want[1:3])
    assert col[np.array(2)] == want[2]
    for bad in (2.0, True, np.array([0.5]), (1, 2)):
        with pytest.raises(TypeError):
            col[bad]
    with pytest.raises(IndexError, match="mask"):
        col[np.array([True, False])]


def test_long_string_attributes_are_checked_by_their_sha256(tmp_path):
    """HDF5 checksums attributes up to about 4 KiB, not longer ones: their sha256 does."""
    with h5py.File(tmp_path / "a.h5", "w", libver="latest") as f:
        write_attrs(f, {"long": "long text " * 10_000, "n": 1})
    raw = bytearray((tmp_path / "a.h5").read_bytes())
    at = raw.find(b"long text long")
    raw[at] ^= 0x20
    (tmp_path / "b.h5").write_bytes(bytes(raw))
    with h5py.File(tmp_path / "b.h5", "r") as f:
        with pytest.raises(ValueError, match="damaged attributes"):
            read_attrs(f)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        with pytest.raises(ValueError, match="NUL"):
            write_attrs(f, {"name": "ends with\x00"})
