"""The per-query gate and the preference for heads that leave contexts alone."""
import os

import numpy as np
import pytest
import torch

from projhead.evaluate import PER_QUERY
from projhead.export import _run_modules, export_onnx, tower_modules
from projhead.gate import MIN_RAMP, QueryGate, fit_fold_gates, fit_gate
from projhead.heads import Head, HeadConfig, HeadError, load_head
from projhead.select import auto_train, prefer_query_side
from projhead.soup import as_saved
from projhead.train import TrainConfig

DIM = 32


def _field(n, centre, seed, spread=0.6):
    """Unit vectors around ``centre``: one field's queries."""
    rng = np.random.default_rng(seed)
    x = centre + spread * rng.normal(size=(n, len(centre))) / np.sqrt(len(centre))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _centre(seed):
    c = np.random.default_rng(seed).normal(size=DIM)
    return c / np.linalg.norm(c)


def _fitted():
    home = _centre(1)
    gate, report = fit_gate(_field(2000, home, 2), _field(300, home, 3), [_field(300, _centre(4), 5)])
    return gate, report, home


def _gated_head(gate, **kw):
    torch.manual_seed(0)
    head = Head(HeadConfig(in_dim=DIM, hidden=48, towers="query", **kw)).eval()
    for p in head.query.parameters():  # away from the identity, so the gate's effect shows
        torch.nn.init.normal_(p, std=0.2)
    return head.set_gate(gate)


def test_the_gate_is_one_on_the_training_field_and_near_zero_far_away():
    gate, report, home = _fitted()
    with torch.no_grad():
        like = gate(torch.from_numpy(_field(500, home, 6))).numpy()  # new queries of the training field
        far = gate(torch.from_numpy(_field(500, _centre(7), 8))).numpy()  # a field calibration never saw
    assert np.median(like) == 1.0 and like.mean() > 0.9
    assert np.median(far) == 0.0 and far.mean() < 0.05
    assert report["mean_gate_held"] > 0.9 and report["mean_gate_other"][0] < 0.1
    assert report["lo"] < report["hi"]


def test_the_gated_query_blends_head_and_frozen_by_the_gate():
    gate, _, home = _fitted()
    head = _gated_head(gate, kind="linear")
    x = np.concatenate([_field(50, home, 9), _field(50, _centre(7), 10)])
    g = head.gate_values(x)
    assert (g == 1).any() and (g == 0).any()
    with torch.no_grad():
        t = torch.from_numpy(x)
        y = t + torch.from_numpy(g)[:, None] * (head.query(t) - t)
    np.testing.assert_allclose(head.encode_queries(x), torch.nn.functional.normalize(y, dim=1).numpy(), atol=1e-6)
    off = g == 0  # far away: exactly the frozen vectors
    np.testing.assert_allclose(head.encode_queries(x)[off], x[off] / np.linalg.norm(x[off], axis=1, keepdims=True),
                               atol=1e-6)
    np.testing.assert_array_equal(head.encode_contexts(x), head.encode_contexts(x))
    assert np.abs(head.encode_queries(x)[g == 1] - x[g == 1]).max() > 0.05  # the head does act where g = 1


def test_a_gate_needs_a_query_side_head():
    with pytest.raises(HeadError, match="needs towers='query'"):
        HeadConfig(towers="separate", gate=True)
    with pytest.raises(HeadError, match="needs a query-side head"):
        Head(HeadConfig(in_dim=DIM, towers="separate")).set_gate(QueryGate(DIM))


def test_without_other_fields_the_ramp_starts_at_the_training_edge():
    home = _centre(1)
    gate, report = fit_gate(_field(2000, home, 2), _field(300, home, 3), [])
    assert report["hi"] == pytest.approx(report["lo"] * (1 + MIN_RAMP))
    with torch.no_grad():
        assert np.median(gate(torch.from_numpy(_field(500, _centre(7), 8))).numpy()) == 0.0
    with pytest.raises(ValueError, match="held-out training queries"):
        fit_gate(_field(100, home, 2), np.zeros((0, DIM), np.float32), [])


def test_the_full_head_reaches_the_asked_share_of_held_out_training_queries():
    home = _centre(1)
    train, held = _field(2000, home, 2), _field(1000, home, 3)
    for q in (0.9, 0.95, 0.5):
        gate, report = fit_gate(train, held, [], in_quantile=q)
        with torch.no_grad():
            full = (gate(torch.from_numpy(held)).numpy() == 1.0).mean()
        assert full == pytest.approx(q, abs=0.002) and report["in_quantile"] == q
    with pytest.raises(ValueError, match="in_quantile .* not 0"):
        fit_gate(train, held, [], in_quantile=0)


@pytest.mark.parametrize("kind", ["linear", "residual"])
def test_the_gate_survives_save_load_and_both_exports(tmp_path, kind):
    import onnxruntime as ort

    from projhead.st_module import HeadModule

    gate, _, home = _fitted()
    head = _gated_head(gate, kind=kind)
    head.save(tmp_path / "head")
    x = np.concatenate([_field(40, home, 11), _field(40, _centre(7), 12), _field(40, 0.5 * home + 0.5 * _centre(7), 13)])
    want = head.encode_queries(x)
    assert 0 < head.gate_values(x).mean() < 1
    loaded = load_head(tmp_path / "head")
    assert loaded.config.gate and loaded.gate is not None
    np.testing.assert_allclose(loaded.encode_queries(x), want, atol=1e-6)
    np.testing.assert_allclose(loaded.gate_values(x), head.gate_values(x), atol=1e-6)
    assert "Per-query gate" in (tmp_path / "head" / "README.md").read_text()
    export_onnx(tmp_path / "head", tmp_path / "onnx")
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "query.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"vectors": x})[0], want, atol=1e-5)
    mods = tower_modules(loaded, "query")
    with torch.no_grad():
        np.testing.assert_allclose(_run_modules(mods, torch.from_numpy(x)).numpy(), want, atol=1e-5)
    mods[0].save(str(tmp_path / "st_query"))  # as sentence-transformers saves the route's module
    again = HeadModule.load(str(tmp_path), subfolder="st_query")
    with torch.no_grad():
        np.testing.assert_allclose(_run_modules([again], torch.from_numpy(x)).numpy(), want, atol=1e-5)


def test_sentence_transformers_export_of_a_gated_head_matches_projhead(tmp_path, minilm):
    from sentence_transformers import SentenceTransformer

    from projhead import EncodedHead
    from projhead.export import export_sentence_transformers

    texts = ["When did the Normans conquer England?", "What is the capital of France?",
             "Is my mortgage interest tax deductible?", "The Norman conquest of England began in 1066."]
    v = minilm.encode(texts, role="query")
    info = minilm.describe()
    torch.manual_seed(0)
    head = Head(HeadConfig(kind="linear", towers="query", in_dim=384, encoder=info["name"],
                           encoder_weights_sha256=info["weights_sha256"]), info={"encoder_build": info["build"]})
    torch.nn.init.normal_(head.query.weight, std=0.05)
    gate = QueryGate(384)
    gate.mean.copy_(torch.from_numpy(v[0]))
    d = gate.distance(torch.from_numpy(v)).detach().numpy()
    gate.bounds.copy_(torch.tensor([np.sort(d)[1] - 1e-3, np.sort(d)[-1] - 1e-3]))  # every kind of gate value
    head.set_gate(gate)
    g = head.gate_values(v)
    assert g.max() == 1 and g.min() == 0 and ((g > 0) & (g < 1)).any()
    export_sentence_transformers(head, tmp_path / "st", encoder=minilm)
    # the query route is projhead's own module: trusted as installed code, nothing runs from the folder
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True, trust_remote_code=True)
    ref = EncodedHead(head, encoder=minilm)
    np.testing.assert_allclose(model.encode_query(texts), ref.encode_queries(texts), atol=1e-5)
    np.testing.assert_allclose(model.encode_document(texts), ref.encode_contexts(texts), atol=1e-5)
    # shared on the Hub: loaded by model id (here from an offline Hub cache laid out as huggingface_hub
    # lays out a download), the head's module from its subfolder of the snapshot
    import shutil
    import subprocess
    import sys

    rev = "0" * 40
    snap = tmp_path / "hf" / "hub" / "models--me--gated" / "snapshots" / rev
    shutil.copytree(tmp_path / "st", snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(rev)
    code = ("from sentence_transformers import SentenceTransformer; import numpy as np; "
            "m = SentenceTransformer('me/gated', device='cpu', trust_remote_code=True); "
            f"np.save({str(tmp_path / 'q.npy')!r}, m.encode_query({texts!r}))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), ref.encode_queries(texts), atol=1e-5)


def _ranks(hit_rate, n, seed):
    """Scripted ranks: rank 0 for a ``hit_rate`` share of ``n`` queries, else rank 5."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < hit_rate, 0, 5)


def test_selection_keeps_the_query_side_head_unless_two_towers_are_better_beyond_noise():
    cfg = TrainConfig(select_metric="top1")
    f = PER_QUERY["top1"]
    q = _ranks(0.60, 400, 0)
    close = np.where(np.arange(400) < 6, 0, q)  # the two-tower head wins on 6 more queries of 400: noise
    clear = np.where(np.arange(400) < 80, 0, q)  # on 80 more: beyond noise
    for two_tower, want in ((close, "residual-query"), (clear, "residual-separate")):
        scored = [("linear-query", "query", float(f(q).mean()) - 0.01, q),
                  ("residual-query", "query", float(f(q).mean()), q),
                  ("residual-separate", "separate", float(f(two_tower).mean()), two_tower)]
        log = {}
        assert prefer_query_side(scored, cfg, log) == want
        assert log["towers"]["chosen"] == want and log["towers"]["query_side"] == "residual-query"
        assert ("contexts stay as they are" in log["towers"]["why"]) == (want == "residual-query")
    log = {}  # a query-side head on top, or no query-side candidate (--towers separate): the top one
    assert prefer_query_side([("a", "query", 0.7, q), ("b", "separate", 0.6, q)], cfg, log) == "a" and not log
    assert prefer_query_side([("b", "separate", 0.6, q), ("c", "separate", 0.65, q)], cfg, log) == "c"


def test_model_selection_gates_a_kept_query_side_head_with_canaries(planted_cache, tmp_path, folds=0):
    path = planted_cache(n_groups=40)
    canary = planted_cache(name="other.h5", dim=16, n_groups=6, rotate=0.0)
    fixed = {"kind": "linear", "towers": "query", "batch_size": 16, "lr": 0.01}
    cfg = TrainConfig(epochs=6, canaries=[str(canary)], canary_tolerance=0.5)
    head, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "h", progress=False, folds=folds)
    assert not head.config.passthrough and head.gate is not None
    assert ", gated, on the" in log["decision"]["measured"]  # decided on the head as saved
    saved = load_head(tmp_path / "h")
    assert saved.config.gate and saved.info["gate"]["other_names"] == ["other.h5"]
    card = (tmp_path / "h" / "README.md").read_text()
    assert "Per-query gate" in card and "Contexts are unchanged" in card
    plain, _ = auto_train(path, TrainConfig(epochs=6, canaries=[str(canary)], canary_tolerance=0.5, gate=False),
                          fixed=fixed, progress=False, folds=folds)
    assert plain.gate is None
    alone, _ = auto_train(path, TrainConfig(epochs=6), fixed=fixed, progress=False, folds=folds)  # no canaries
    assert alone.gate is not None and alone.info["gate"]["other_names"] == []
    folded, log = auto_train(path, cfg, fixed=fixed, progress=False, folds=5)  # k-fold: its edge out of fold
    assert folded.gate is not None and not folded.config.passthrough and ", gated, on the" in log["decision"]["measured"]
    assert folded.info["gate"]["folds"] == 5 and folded.info["gate"]["n_held"] == 400


def test_fold_gates_each_from_the_other_folds_and_the_saved_one_from_every_query_held_out_once():
    home = _centre(1)
    queries = _field(500, home, 2)
    folds = [np.arange(i, 500, 5) for i in range(5)]
    others = [_field(200, _centre(4), 5)]
    gate, report, gates = fit_fold_gates(queries, folds, others)
    held = []
    for rows, g in zip(folds, gates):  # each fold's gate: fit_gate on the other folds, its own fold held out
        want, _ = fit_gate(np.delete(queries, rows, axis=0), queries[rows], others)
        for name in ("mean", "whiten", "bounds"):
            np.testing.assert_allclose(getattr(g, name).numpy(), getattr(want, name).numpy(), rtol=1e-6)
        with torch.no_grad():
            held.append(g.distance(torch.from_numpy(queries[rows])).numpy())
    everything, _ = fit_gate(queries, queries[:1], others)  # the moments of every query
    np.testing.assert_allclose(gate.mean.numpy(), everything.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gate.whiten.numpy(), everything.whiten.numpy(), rtol=1e-6)
    assert report["lo"] == pytest.approx(float(np.quantile(np.concatenate(held), 0.95)))  # the edge out of fold
    with torch.no_grad():
        inside = gate.distance(torch.from_numpy(queries)).numpy()
    assert np.quantile(inside, 0.95) < report["lo"]  # measured on its own training queries the edge would be lower
    assert report["n_held"] == 500 and report["folds"] == 5 and 0.9 < report["mean_gate_held"] < 1.0
    with torch.no_grad():  # and it still tells the other field apart
        assert gate(torch.from_numpy(_field(300, _centre(4), 7))).mean() < 0.1


def test_kfold_selection_judges_each_fold_head_with_its_folds_gate(planted_cache, tmp_path, monkeypatch):
    """With folds the saved head is gated, and the decision ranks each deciding query by the
    head of the fold that held it out, as saved: its alpha and its fold's gate."""
    import projhead.select as S
    from projhead.batches import held_out
    from projhead.cache import open_cache

    seen = {}
    real_fold_runs, real_boot, real_tune = S.fold_runs, S.paired_bootstrap, S.tune_after_selection

    def fold_runs(*a):
        seen["fold_runs"] = a[3], real_fold_runs(*a)
        return seen["fold_runs"][1]

    def boot(a, b, **kw):
        seen.setdefault("boot", []).append(a)
        return real_boot(a, b, **kw)

    def tune(*a, folds=None, **kw):
        seen["weight_folds"] = folds
        return real_tune(*a, folds=folds, **kw)

    monkeypatch.setattr(S, "fold_runs", fold_runs)
    monkeypatch.setattr(S, "paired_bootstrap", boot)
    monkeypatch.setattr(S, "tune_after_selection", tune)
    path = planted_cache(n_groups=40)
    head, log = auto_train(path, TrainConfig(epochs=6), fixed={"kind": "linear", "towers": "query", "lr": 1e-2},
                           out=tmp_path / "h", progress=False, folds=5)
    d, cache = log["decision"], open_cache(path)
    assert d["kept"] == "head" and ", gated, on the" in d["measured"]
    fold_rows, runs = seen["fold_runs"]
    gate, _, gates = fit_fold_gates(cache.queries, fold_rows, [])
    saved = load_head(tmp_path / "h")
    np.testing.assert_allclose(saved.gate.bounds.numpy(), gate.bounds.numpy(), rtol=1e-6)
    decide = S._halves(S.split_groups(cache, need=5), np.arange(len(cache.q2c)), 0, {})[1]
    f = PER_QUERY["mrr10"]
    judged = as_saved(runs, d["alpha"], gates)
    want = np.concatenate([f(held_out(cache, np.intersect1d(rows, decide)).ranks(h)) for rows, h in zip(fold_rows, judged)])
    np.testing.assert_allclose(seen["boot"][0], want)
    plain = np.concatenate([f(held_out(cache, np.intersect1d(rows, decide)).ranks(h))
                            for rows, h in zip(fold_rows, as_saved(runs, d["alpha"]))])
    assert not np.array_equal(plain, want)  # the gates change some ranks: the check can tell
    assert all(h.gate is not None for _, h in seen["weight_folds"])  # the fusion weight: the fold heads as saved


def test_train_says_whether_contexts_change(planted_cache, tmp_path, capsys):
    from projhead.cli import main

    path = planted_cache(n_groups=40)
    for towers, said, card in (("query", "contexts unchanged", "Contexts are unchanged"),
                               ("separate", "re-encode the index", "Context vectors change")):
        assert main(["train", str(path), "--out", str(tmp_path / towers), "--towers", towers, "--kind", "linear",
                     "--epochs", "6", "--batch-size", "16", "--lr", "0.01", "--quiet"]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert not load_head(tmp_path / towers).config.passthrough  # a head was kept: what it changes is said
        assert said in last and card in (tmp_path / towers / "README.md").read_text()
