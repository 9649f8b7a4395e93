import json
import pickle

import numpy as np
import pytest
import torch

from projhead.heads import Head, HeadConfig, HeadError, load_head


def _vecs(n=20, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["linear", "residual"])
def test_identity_init_equals_frozen_vectors(kind):
    head = Head(HeadConfig(kind=kind, in_dim=16, hidden=32))
    x = _vecs()
    np.testing.assert_allclose(head.encode_queries(x), x, atol=1e-6)
    np.testing.assert_allclose(head.encode_contexts(x), x, atol=1e-6)


def test_the_frozen_side_of_a_head_is_the_frozen_vector_itself_on_unnormalised_vectors(tmp_path):
    """On a cache of unnormalised vectors (--no-normalize, an API's raw vectors) the identity is
    the frozen encoder and a query-side head leaves contexts as they are: no normalisation
    either (it changed the ranking of a dot-product index). What a tower computes is normalised."""
    pytest.importorskip("onnxruntime")
    from projhead.export import export_onnx

    x = _vecs() * np.linspace(0.5, 2.0, 20, dtype=np.float32)[:, None]
    query_side = Head(HeadConfig(kind="linear", towers="query", in_dim=16))
    identity = Head(HeadConfig(kind="residual", towers="separate", in_dim=16, hidden=32)).reset_to_identity()
    two_towers = Head(HeadConfig(kind="linear", towers="separate", in_dim=16))
    np.testing.assert_array_equal(query_side.encode_contexts(x), x)
    np.testing.assert_array_equal(identity.encode_queries(x), x)
    np.testing.assert_array_equal(identity.encode_contexts(x), x)
    np.testing.assert_allclose(np.linalg.norm(query_side.encode_queries(x), axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(two_towers.encode_contexts(x), axis=1), 1, atol=1e-6)
    import onnxruntime as ort
    for name, head in (("q", query_side), ("i", identity)):
        export_onnx(head, tmp_path / name)
        for role, want in (("context", x), ("query", head.encode_queries(x))):
            sess = ort.InferenceSession(str(tmp_path / name / f"{role}.onnx"))
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind, towers, out_dim, init", [
    ("linear", "separate", 8, "identity"), ("mlp", "shared", 24, "random"), ("residual", "separate", None, "random"),
    ("linear", "shared", None, "identity")])
def test_a_head_reset_to_identity_is_the_frozen_encoder_in_config_and_weights(tmp_path, kind, towers, out_dim, init):
    """Kept as the identity, a head with no identity weights of its own (another width, an MLP,
    random init) is saved as a plain query-side identity: its config, output width and weights
    are the frozen encoder's, so an index sized by its config fits what it outputs."""
    torch.manual_seed(0)
    head = Head(HeadConfig(kind=kind, towers=towers, in_dim=16, out_dim=out_dim, hidden=32, init=init))
    head.reset_to_identity()
    x = _vecs()
    for h in (head, (head.save(tmp_path / "h"), load_head(tmp_path / "h"))[1]):
        assert h.config.passthrough and h.config.output_dim == 16 and not h.changes_contexts()
        np.testing.assert_allclose(h.encode_queries(x), x, atol=1e-6)
        np.testing.assert_allclose(h.encode_contexts(x), x, atol=1e-6)
        np.testing.assert_allclose(h.query.weight.detach().numpy(), np.eye(16), atol=1e-6)  # the weights say it too
    card = (tmp_path / "h" / "README.md").read_text()
    assert "16 -> 16" in card and "identity" in card


@pytest.mark.parametrize("kind, towers, out_dim", [
    ("linear", "separate", 8), ("mlp", "separate", 24), ("mlp", "shared", None), ("residual", "query", None),
    ("residual", "shared", None), ("linear", "query", None)])
def test_save_load_roundtrip(tmp_path, kind, towers, out_dim):
    torch.manual_seed(0)
    head = Head(HeadConfig(kind=kind, towers=towers, in_dim=16, out_dim=out_dim, hidden=32, layers=3,
                           init="random", encoder="st:x", encoder_weights_sha256="ab" * 32), info={"metrics": {}})
    head.save(tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_head(tmp_path / "h")
    x = _vecs()
    np.testing.assert_allclose(loaded.encode_queries(x), head.encode_queries(x), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_contexts(x), head.encode_contexts(x), atol=1e-6)
    assert loaded.encode_queries(x).shape == (20, out_dim or 16)
    if towers == "shared":
        assert loaded.context is loaded.query
    if towers == "query":
        np.testing.assert_allclose(loaded.encode_contexts(x), x, atol=1e-6)  # contexts stay frozen


@pytest.mark.parametrize("fails", ["card", "weights"])
def test_a_failed_save_leaves_the_head_there_whole(tmp_path, monkeypatch, fails):
    """A full disk half-way through a save: the head saved before is still whole, no temporary
    file is left, and the error is one line (safetensors' own error included)."""
    import safetensors.torch
    from safetensors import SafetensorError

    import projhead.heads as H

    old = Head(HeadConfig(kind="linear", towers="query", in_dim=16, encoder="st:x"), info={"metrics": {}})
    old.save(tmp_path / "h")
    before = {p.name: p.read_bytes() for p in (tmp_path / "h").iterdir()}
    real = H.write_file

    def full(path, data):
        if path.name.startswith("README.md"):
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    if fails == "card":
        monkeypatch.setattr(H, "write_file", full)
    else:
        monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(
            SafetensorError("Error while serializing: IoError(No space left on device)")))
    torch.manual_seed(1)
    new = Head(HeadConfig(kind="residual", towers="separate", in_dim=16, hidden=8, init="random", encoder="st:x"))
    with pytest.raises(HeadError, match="cannot save the head .*No space left on device.*as they were"):
        new.save(tmp_path / "h")
    assert {p.name: p.read_bytes() for p in (tmp_path / "h").iterdir()} == before
    assert load_head(tmp_path / "h").config.kind == "linear"


def test_torch_in_torch_out_with_gradients():
    head = Head(HeadConfig(kind="mlp", in_dim=16, init="random"))
    x = torch.from_numpy(_vecs()).requires_grad_()
    y = head.encode_queries(x)
    assert isinstance(y, torch.Tensor)
    y.sum().backward()
    assert x.grad is not None


def test_wrong_dimension_and_encoder_are_refused():
    head = Head(HeadConfig(in_dim=16, encoder="st:all-MiniLM-L6-v2", encoder_weights_sha256="aa" * 32))
    with pytest.raises(HeadError, match=r"expects vectors of shape \(N, 16\) from encoder st:all-MiniLM-L6-v2, got \(20, 8\)"):
        head.encode_queries(_vecs(d=8))
    with pytest.raises(HeadError, match="trained on 'st:all-MiniLM-L6-v2'"):
        head.check_encoder("openclip:ViT-B-32")
    with pytest.raises(HeadError, match="other weights"):
        head.check_encoder("st:all-MiniLM-L6-v2", "bb" * 32)
    head.check_encoder("st:all-MiniLM-L6-v2", "aa" * 32)


@pytest.mark.parametrize("settings, message", [
    ({"kind": "conv"}, "unknown head kind 'conv'"),
    ({"kind": "residual", "out_dim": 8}, "residual head keeps the dimension"),
    ({"towers": "both"}, "unknown towers"),
    ({"hidden": 0}, "hidden must be a positive integer"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"passthrough": "false"}, "passthrough must be true or false"),  # a string read as true: the identity
    ({"normalize": 0}, "normalize must be true or false"),
    ({"encoder": 5}, "encoder must be a string"),
])
def test_bad_head_settings(settings, message):
    with pytest.raises(HeadError, match=message):
        HeadConfig(in_dim=16, **settings)


def test_a_config_of_the_wrong_types_names_the_file(tmp_path):
    Head(HeadConfig(in_dim=16)).save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    for edit, said in ((lambda c: c["head"].update(passthrough="false"), "passthrough must be true or false"),
                       (lambda c: c.update(encoder_build="fp32"), "encoder_build must be an object")):
        bad = json.loads(json.dumps(cfg))
        edit(bad)
        (tmp_path / "h" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(HeadError, match=f"h/config.json: .*{said}"):
            load_head(tmp_path / "h")


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_tampered_folders_are_refused_and_run_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = Head(HeadConfig(kind="linear", in_dim=16))
    good = head.save(tmp_path / "good")

    planted = head.save(tmp_path / "planted")
    (planted / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(HeadError, match=r"pickle-format files \['pytorch_model.bin'\]"):
        load_head(planted)
    assert not (tmp_path / "PWNED").exists()

    bad_json = head.save(tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(HeadError, match="malformed JSON"):
        load_head(bad_json)

    wrong_shape = head.save(tmp_path / "wrong_shape")
    cfg = json.loads((good / "config.json").read_text())
    cfg["head"]["out_dim"] = 8
    (wrong_shape / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadError, match=r"wrong shape \['context.bias', 'context.weight', 'query.bias', 'query.weight'\]"):
        load_head(wrong_shape)

    extra = head.save(tmp_path / "extra")
    from safetensors.torch import save_file

    tensors = dict(head.tensors(), sneaky=torch.zeros(3))
    save_file(tensors, str(extra / "model.safetensors"))
    with pytest.raises(HeadError, match=r"unexpected \['sneaky'\]"):
        load_head(extra)

    unknown = head.save(tmp_path / "unknown")
    cfg = json.loads((good / "config.json").read_text())
    cfg["head"]["exec"] = "print('hi')"
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadError, match=r"unknown head settings \['exec'\]"):
        load_head(unknown)

    broken = head.save(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(HeadError, match="not a readable safetensors file"):
        load_head(broken)

    with pytest.raises(HeadError, match="not a head folder"):
        load_head(tmp_path / "nowhere")
    assert not (tmp_path / "PWNED").exists()


def test_the_model_card_states_the_decision_rule_and_whose_canary_scores_it_shows():
    """The card's keep rule is the run's (--decision), and canary scores of a head that was not
    kept are labelled so."""
    from projhead.card import model_card

    gain = {"gain": 0.02, "low": -0.01, "high": 0.05, "n": 40}
    canaries = {"other.h5": {"frozen": 0.5, "head": 0.48}}
    head = {"kind": "linear", "towers": "query", "in_dim": 16, "out_dim": None, "encoder": "st:x"}
    cards = {rule: model_card({"head": head, "training": {"decision": rule}, "decision": {
        "kept": "head", "alpha": 1.0, "dev_gain": gain, "canaries": canaries}}) for rule in ("bootstrap", "better")}
    assert "a head is kept only when the interval is above 0" in cards["bootstrap"]
    assert "a head is kept only when the gain is above 0 (decision 'better')" in cards["better"]
    assert "| canary | frozen | head |" in cards["better"]
    identity = model_card({"head": {**head, "passthrough": True}, "decision": {
        "kept": "identity", "dev_gain": gain, "canaries": canaries}})
    assert "| canary | frozen | head not kept |" in identity and "interval is above 0" in identity
