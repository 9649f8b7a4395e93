"""Export to sentence-transformers and ONNX, checked against projhead itself."""
import re

import numpy as np
import pytest
import torch

from projhead.export import _run_modules, export_onnx, tower_modules
from projhead.heads import Head, HeadConfig, HeadError, load_head


def _random_head(**kw):
    torch.manual_seed(0)
    head = Head(HeadConfig(in_dim=32, hidden=48, **kw)).eval()
    for p in head.parameters():  # away from the identity start, so the test can fail
        torch.nn.init.normal_(p, std=0.2)
    return head


@pytest.mark.parametrize("kw", [
    {"kind": "residual"}, {"kind": "residual", "layers": 3, "activation": "relu"},
    {"kind": "residual", "activation": "silu"}, {"kind": "mlp", "init": "random", "out_dim": 16},
    {"kind": "linear", "towers": "query"}, {"kind": "linear", "towers": "shared", "out_dim": 8},
    {"kind": "residual", "passthrough": True}, {"kind": "mlp", "normalize": False, "layers": 3},
])
def test_sentence_transformers_modules_compute_the_head(kw):
    head = _random_head(**kw)
    x = torch.nn.functional.normalize(torch.randn(100, 32), dim=1)
    for role, want in (("query", head.encode_queries(x)), ("context", head.encode_contexts(x))):
        mods = tower_modules(head, role)
        with torch.no_grad():
            got = _run_modules(mods, x.clone()) if mods else x
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)


def test_residual_tanh_cannot_be_written_with_st_modules():
    with pytest.raises(HeadError, match="activation 'tanh'.*export ONNX instead"):
        tower_modules(_random_head(kind="residual", activation="tanh"), "query")


def test_sentence_transformers_folder_loads_offline_and_matches_projhead(tmp_path, minilm, capsys):
    from sentence_transformers import SentenceTransformer

    from projhead import EncodedHead

    info = minilm.describe()
    torch.manual_seed(0)
    head = Head(HeadConfig(kind="residual", in_dim=384, hidden=64, encoder=info["name"],
                           encoder_weights_sha256=info["weights_sha256"]),
                info={"encoder_build": info["build"]})
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    head.save(tmp_path / "head")
    from projhead.cli import main

    assert main(["export", str(tmp_path / "head"), "--format", "sentence-transformers", "--out",
                 str(tmp_path / "st")]) == 0
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    texts = ["When did the Normans conquer England?", "The Norman conquest of England began in 1066."]
    ref = EncodedHead(tmp_path / "head", encoder=minilm)
    q, c = model.encode_query(texts), model.encode_document(texts)
    np.testing.assert_allclose(q, ref.encode_queries(texts), atol=2e-5)
    np.testing.assert_allclose(c, ref.encode_contexts(texts), atol=2e-5)
    np.testing.assert_allclose(model.encode(texts), c, atol=1e-6)  # plain encode: the context side
    assert np.abs(q - minilm.encode(texts)).max() > 1e-2  # and the head did change the vectors
    # an export replaces a previous export; it never writes over a head or a user's own files
    assert main(["export", str(tmp_path / "head"), "--format", "sentence-transformers", "--out",
                 str(tmp_path / "st")]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "modules.json").write_text("[]")  # a sentence-transformers model of the user's, not an export
    before = {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()}
    for out, said in ((tmp_path / "head", "the head's own folder"), (mine, "not a sentence-transformers export (README.md, modules.json)")):
        assert main(["export", str(tmp_path / "head"), "--format", "sentence-transformers", "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "head").iterdir()} == before
    assert (mine / "README.md").read_text() == "my notes" and len(list(mine.iterdir())) == 2
    # with a context prefix, plain encode is still the context side: the prefix is its default prompt
    from projhead.encoders import get_encoder
    from projhead.export import export_sentence_transformers

    pre = get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="fp32", query_prefix="query: ",
                      context_prefix="passage: ")
    r = export_sentence_transformers(tmp_path / "head", tmp_path / "st", encoder=pre, check_texts=texts)
    assert r["max_abs_diff_plain_encode"] < 2e-5 and r["max_abs_diff_context"] < 2e-5
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    np.testing.assert_allclose(model.encode(texts), EncodedHead(tmp_path / "head", encoder=pre).encode_contexts(texts),
                               atol=2e-5)
    # model.similarity ranks as projhead does (the dot product): cosine only where every route gives unit vectors
    raw = get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="fp32", normalize=False)
    identity = Head(HeadConfig(kind="linear", towers="query", in_dim=384, passthrough=True, encoder=info["name"],
                               encoder_weights_sha256=info["weights_sha256"]), info={"encoder_build": info["build"]})
    for enc, want in ((minilm, "cosine"), (raw, "dot")):
        export_sentence_transformers(identity, tmp_path / "st-id", encoder=enc, check_texts=texts)
        m = SentenceTransformer(str(tmp_path / "st-id"), device="cpu", local_files_only=True)
        assert m.similarity_fn_name == want
        q, d = m.encode_query(texts), m.encode_document(texts)
        np.testing.assert_allclose(m.similarity(q, d).numpy(), q @ d.T, rtol=1e-4, atol=1e-5)  # projhead's scores
    # the folder as sentence-transformers loads it is checked on texts too: a mismatch writes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "st").iterdir() if p.is_file()}
    real = SentenceTransformer.encode_query
    try:
        SentenceTransformer.encode_query = lambda self, *a, **k: real(self, *a, **k) + 1e-3
        with pytest.raises(HeadError, match="export check failed: the saved folder's query vectors differ"):
            export_sentence_transformers(tmp_path / "head", tmp_path / "st", encoder=minilm, check_texts=texts)
    finally:
        SentenceTransformer.encode_query = real
    assert {p.name: p.read_bytes() for p in (tmp_path / "st").iterdir() if p.is_file()} == before


@pytest.mark.parametrize("kw", [{"kind": "residual"}, {"kind": "mlp", "init": "random", "out_dim": 16},
                                {"kind": "linear", "towers": "query"}])
def test_onnx_matches_torch(tmp_path, kw):
    import onnxruntime as ort

    head = _random_head(**kw)
    head.save(tmp_path / "head")
    r = export_onnx(tmp_path / "head", tmp_path / "onnx", quantize=True)
    x = np.random.default_rng(1).normal(size=(37, 32)).astype(np.float32)  # another batch size than exported
    for role, want in (("query", head.encode_queries(x)), ("context", head.encode_contexts(x))):
        sess = ort.InferenceSession(str(tmp_path / "onnx" / f"{role}.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"vectors": x})[0], want, atol=1e-5)
        assert r["towers"][role]["int8"]["cosine_to_float32_mean"] > 0.99
    export_onnx(tmp_path / "head", tmp_path / "onnx")  # an earlier export of its own is replaced, whole
    assert not [p.name for p in (tmp_path / "onnx").iterdir() if "int8" in p.name]  # not the earlier export's
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fusion.json").write_text("my weights")
    for out, said in ((tmp_path / "head", "the head's own folder"), (mine, "not an ONNX export (fusion.json)")):
        with pytest.raises(HeadError, match=re.escape(said)):
            export_onnx(tmp_path / "head", out)
    assert (mine / "fusion.json").read_text() == "my weights" and load_head(tmp_path / "head") is not None


def test_a_failed_export_leaves_the_earlier_one_as_it_was(tmp_path, monkeypatch):
    import projhead.export as ex

    head = _random_head(kind="linear", towers="query")
    head.save(tmp_path / "head")
    export_onnx(tmp_path / "head", tmp_path / "onnx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "onnx").iterdir()}

    def broken(head, out, *a):
        (out / "query.onnx").write_bytes(b"half a file")
        raise HeadError("stopped half way")

    monkeypatch.setattr(ex, "_onnx_towers", broken)
    with pytest.raises(HeadError, match="stopped half way"):
        export_onnx(tmp_path / "head", tmp_path / "onnx")
    assert {p.name: p.read_bytes() for p in (tmp_path / "onnx").iterdir()} == before  # no temporary folder either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head", "onnx"]
    monkeypatch.undo()
    (tmp_path / "onnx" / "notes.txt").write_text("mine")  # a file of the user's beside an export: not the export's
    (tmp_path / "onnx" / "query.int8.onnx").write_text("an earlier export's")
    record = tmp_path / "onnx" / "projhead_export.json"
    import json

    record.write_text(json.dumps({**json.loads(record.read_text()),
                                  "files": json.loads(record.read_text())["files"] + ["query.int8.onnx"]}))
    export_onnx(tmp_path / "head", tmp_path / "onnx")
    assert (tmp_path / "onnx" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "onnx" / "query.int8.onnx").exists()


def test_a_gated_head_is_checked_where_its_gate_is_open(tmp_path):
    """Random unit vectors lie far from any field's queries, where the gate gives the frozen vector:
    the export is also checked around the training queries, with the gate open and ramping."""
    import onnxruntime as ort

    from projhead.export import check_vectors
    from projhead.gate import QueryGate

    head = _random_head(kind="linear", towers="query")
    gate = QueryGate(32)
    mean = torch.nn.functional.normalize(torch.randn(32), dim=0)
    gate.mean.copy_(mean)
    gate.whiten.copy_(torch.eye(32) * 20.0)
    gate.bounds.copy_(torch.tensor([1.0, 1.5]))
    head.set_gate(gate)
    x = check_vectors(head, 200, torch.Generator().manual_seed(0))
    g = head.gate_values(x.numpy())
    assert (g[:200] < 0.1).mean() > 0.9  # the random unit vectors: the gate closed on almost all
    assert (g[200:] == 1).sum() > 20 and ((g[200:] > 0) & (g[200:] < 1)).sum() > 20 and (g[200:] == 0).sum() > 20
    head.save(tmp_path / "head")
    r = export_onnx(tmp_path / "head", tmp_path / "onnx", n_check=200)
    assert r["towers"]["query"]["checked_with_gate_open"] > 20  # the export's own check ran where the head acts
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "query.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"vectors": x[200:].numpy()})[0], head.encode_queries(x[200:].numpy()),
                               atol=1e-5)
