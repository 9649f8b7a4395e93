"""Fusion of dense and BM25 scores: the arithmetic, the spec saved with a head, evaluation
rows, the weight chosen on held-out queries, and the retriever."""
import json
import sys
from fractions import Fraction

import numpy as np
import pytest

from projhead.fusion import (BM25Settings, FusionError, FusionSpec, bm25_scorer, fuse, read_fusion, rrf)
from projhead.heads import Head, HeadConfig, HeadError, load_head

RNG = np.random.default_rng(0)


def _plain_norm(row, how):
    row = [float(x) for x in row]
    if how == "zscore":
        mu = sum(row) / len(row)
        sd = (sum((x - mu) ** 2 for x in row) / len(row)) ** 0.5
        return [(x - mu) / sd for x in row]
    if how == "minmax":
        lo, hi = min(row), max(row)
        return [(x - lo) / (hi - lo) for x in row]
    return row


@pytest.mark.parametrize("how", ["zscore", "minmax", "fixed"])
def test_fused_scores_equal_a_plain_computation(how):
    d, b = RNG.normal(size=(4, 9)), RNG.gamma(2.0, 3.0, size=(4, 9))
    spec = FusionSpec(weight=0.3, normalisation=how)
    got = fuse(d, b, spec)
    for i in range(4):
        dn, bn = _plain_norm(d[i], how), _plain_norm(b[i], how)
        if how == "fixed":
            bn = [x / 10.0 for x in bn]
        want = [0.3 * x + 0.7 * y for x, y in zip(dn, bn)]
        np.testing.assert_allclose(got[i], want, rtol=1e-12)
    np.testing.assert_allclose(fuse(d, b, spec, weight=1.0), np.array([_plain_norm(r, how) for r in d]))


def test_a_constant_row_normalises_to_zero_instead_of_nan():
    got = fuse(np.ones((1, 5)), np.zeros((1, 5)), FusionSpec(weight=0.5))
    assert np.isfinite(got).all() and (got == 0).all()


def test_rrf_equals_a_plain_loop():
    d = RNG.normal(size=(3, 12))
    b = np.round(RNG.gamma(1.0, 2.0, size=(3, 12)))  # ties: equal BM25 scores share a rank
    b[:, :4] = 0.0
    got = rrf(d, b, k=60)
    for i in range(3):
        for j in range(12):
            rd = 1 + sum(x > d[i, j] for x in d[i])
            rb = 1 + sum(x > b[i, j] for x in b[i])
            assert got[i, j] == pytest.approx(1 / (60 + rd) + 1 / (60 + rb))


def test_shapes_must_agree():
    with pytest.raises(FusionError, match="same shape"):
        fuse(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(FusionError, match="same shape"):
        rrf(np.zeros((2, 3)), np.zeros((3, 3)))


def test_spec_round_trips_and_rejects_bad_values():
    spec = FusionSpec(weight=0.65, normalisation="minmax", bm25=BM25Settings(k1=1.2, b=0.6, stemmer="", stopwords=""),
                      frozen_weight=0.7, chosen={"queries": 10})
    assert FusionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad in ({"weight": 1.5}, {"normalisation": "l2"}, {"colour": 1}, {"bm25": {"k2": 1}}, {"rrf_k": 0},
                {"weight": True}, {"frozen_weight": float("nan")}, {"weight": "0.5"}):
        with pytest.raises(FusionError):
            FusionSpec.from_dict({**FusionSpec().to_dict(), **bad})
    # the weight rule of search and fuse: a numpy number is a weight, stored as a float (JSON)
    spec = FusionSpec(weight=np.float32(0.5), frozen_weight=np.int64(1))
    assert type(spec.weight) is float and type(spec.frozen_weight) is float
    assert FusionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(FusionError, match="fusion frozen_weight must be a number in"):
        FusionSpec(frozen_weight=False)


def test_bm25_settings_change_the_scores():
    texts = ["the runner runs", "a dog", "running dogs run far and long today"]
    a = bm25_scorer(["runs"], texts)(np.array([0]))
    b = bm25_scorer(["runs"], texts, BM25Settings(stemmer=""))(np.array([0]))
    assert a[0, 2] > 0 and b[0, 2] == 0  # only the stemmer matches "runs" to "running"/"run"
    c = bm25_scorer(["runs"], texts, BM25Settings(k1=0.5, b=0.0))(np.array([0]))
    assert not np.allclose(a, c)


def _head(tmp_path, fusion=None):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    head = Head(HeadConfig(kind="residual", in_dim=16, hidden=8), info={"fusion": fusion} if fusion else {})
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    head.save(tmp_path / "head")
    return head


def test_head_saves_and_loads_its_fusion(tmp_path):
    spec = FusionSpec(weight=0.8, frozen_weight=0.7, chosen={"queries": 50, "metric": "mrr10"})
    _head(tmp_path, spec.to_dict())
    head = load_head(tmp_path / "head")
    assert head.fusion == spec
    d, b = RNG.normal(size=(2, 6)), RNG.gamma(2.0, 1.0, size=(2, 6))
    np.testing.assert_allclose(head.fuse(d, b), fuse(d, b, spec))
    card = (tmp_path / "head" / "README.md").read_text()
    assert "Fusion with BM25" in card and "0.8 x dense" in card and "50 held-out queries" in card
    assert Head(HeadConfig(kind="linear", in_dim=4)).fusion is None  # none chosen: None, fuse uses defaults


def test_bad_fusion_in_config_names_the_file(tmp_path):
    _head(tmp_path, FusionSpec().to_dict())
    cfg = json.loads((tmp_path / "head" / "config.json").read_text())
    cfg["fusion"]["weight"] = 7
    (tmp_path / "head" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadError, match=r"config.json: bad fusion settings .*weight"):
        load_head(tmp_path / "head")
    # each of these reached bm25s or a format call and failed there, or was used as it was
    for key, value, said in (("k1", "high", "BM25 k1 must be"), ("k1", -3, "BM25 k1 must be"), ("b", 7, "BM25 b must be"),
                             ("method", "nope", "BM25 method must be one of"), ("stemmer", 5, "BM25 stemmer must be")):
        bad = json.loads(json.dumps(cfg))
        bad["fusion"]["weight"] = 0.5
        bad["fusion"]["bm25"][key] = value
        (tmp_path / "head" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(HeadError, match=f"config.json: bad fusion settings \\({said}"):
            load_head(tmp_path / "head")
    bad = {**cfg, "fusion": {**cfg["fusion"], "weight": 0.5, "chosen": []}}
    (tmp_path / "head" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(HeadError, match=r"config.json: bad fusion settings \(chosen .* must be an object"):
        load_head(tmp_path / "head")


def test_onnx_export_keeps_the_fusion_in_a_side_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from projhead.export import export_onnx

    spec = FusionSpec(weight=0.45, normalisation="minmax", frozen_weight=0.5)
    _head(tmp_path, spec.to_dict())
    export_onnx(tmp_path / "head", tmp_path / "onnx", n_check=8)
    assert read_fusion(tmp_path / "onnx") == spec
    assert json.loads((tmp_path / "onnx" / "projhead_export.json").read_text())["fusion"] == spec.to_dict()
    _head(tmp_path)  # a head without a fusion: no fusion.json, and reading it says why
    export_onnx(tmp_path / "head", tmp_path / "onnx2", n_check=8)
    with pytest.raises(FusionError, match="fusion.json: no fusion settings"):
        read_fusion(tmp_path / "onnx2")
    export_onnx(tmp_path / "head", tmp_path / "onnx", n_check=8)  # exported again over the first folder
    with pytest.raises(FusionError, match="fusion.json: no fusion settings"):
        read_fusion(tmp_path / "onnx")  # the earlier head's weight is gone with it


@pytest.mark.slow
def test_sentence_transformers_export_keeps_the_fusion(tmp_path, minilm):
    from projhead.export import export_sentence_transformers

    info = minilm.describe()
    spec = FusionSpec(weight=0.6, frozen_weight=0.55)
    head = Head(HeadConfig(kind="residual", in_dim=384, hidden=32, encoder=info["name"],
                           encoder_weights_sha256=info["weights_sha256"]), info={"fusion": spec.to_dict()})
    head.save(tmp_path / "head")
    export_sentence_transformers(tmp_path / "head", tmp_path / "st", encoder=minilm)
    assert read_fusion(tmp_path / "st") == spec


# -- evaluation rows ----------------------------------------------------------------


def _reference_ranks(scores, q2c):
    """Full-corpus gold ranks by a plain loop (ties count against the gold)."""
    return np.array([sum(s >= row[g] for s in row) - 1 for row, g in zip(scores, q2c)])


def test_eval_adds_fused_rows_equal_to_a_plain_computation(planted_cache):
    from projhead.cache import open_cache
    from projhead.evaluate import block_metrics, corpus_metrics, evaluate_cache

    cache = open_cache(planted_cache(n_groups=12))
    head = _head_on(cache)
    spec = FusionSpec(weight=0.6, frozen_weight=0.3)
    res = evaluate_cache(cache, head=head, bm25=True, fusion=spec, block=50)
    assert list(res) == ["frozen", "head", "bm25", "frozen+bm25", "head+bm25", "rrf"]
    assert set(res["rrf"]) == {"out_of_50", "full_corpus"}
    b = bm25_scorer(cache.query_texts, cache.context_texts)(np.arange(len(cache.q2c)))
    dq, dc = head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)
    want = {"frozen+bm25": fuse(cache.queries @ cache.contexts.T, b, spec, 0.3),
            "head+bm25": fuse(dq @ dc.T, b, spec, 0.6), "rrf": rrf(dq @ dc.T, b)}
    for name, s in want.items():
        assert res[name]["full_corpus"] == corpus_metrics(_reference_ranks(s, cache.q2c)), name
        assert res[name]["out_of_50"] == block_metrics(_block_ranks(s, cache.q2c, 50)), name


def _block_ranks(scores, q2c, block):
    out = []
    for a in range(0, len(q2c), block):
        s, g = scores[a:a + block], q2c[a:a + block]
        cand = np.unique(g)
        out.append(_reference_ranks(s[:, cand], np.searchsorted(cand, g)))
    return np.concatenate(out)


def _head_on(cache):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    head = Head(HeadConfig(kind="residual", in_dim=cache.dim, hidden=8, encoder=cache.encoder))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return head


def test_cli_eval_prints_fused_rows_with_the_given_weight(planted_cache, capsys):
    from projhead.cli import main

    path = planted_cache(n_groups=6)
    assert main(["eval", str(path), "--bm25", "--fusion-weight", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "fusion: zscore scores, dense weight 0.4 (--fusion-weight); RRF k=60; BM25 k1 1.5, b 0.75" in out
    for row in ("| bm25 |", "| frozen+bm25 |", "| rrf |"):
        assert row in out
    assert main(["eval", str(path), "--bm25", "--fusion-weight", "2"]) == 2


# -- the weight chosen on held-out queries ------------------------------------------


def test_choose_weight_keeps_the_best_weight_of_a_plain_search(planted_cache):
    from projhead.cache import open_cache
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    head = _head_on(cache)
    rows = np.arange(0, len(cache.q2c), 2)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    spec = choose_weight(cache, rows, head, grid=grid, block=7)
    b = bm25_scorer(cache.query_texts, cache.context_texts)(rows)
    for name, (q, c), w in (("head", (head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)),
                             spec.weight), ("frozen", (cache.queries, cache.contexts), spec.frozen_weight)):
        means = [PER_QUERY["mrr10"](_reference_ranks(fuse(q[rows] @ c.T, b, weight=g), cache.q2c[rows])).mean()
                 for g in grid]
        assert w == grid[int(np.argmax(means))], name
        np.testing.assert_allclose(spec.chosen["scores"][name], means, atol=1e-5)
    assert spec.chosen["queries"] == len(rows) and spec.chosen["system"] == "head"


def test_the_default_weight_anchors_z_scores_only(planted_cache):
    """0.8 was measured for z-scores: min-max and fixed scales keep their own highest mean."""
    from projhead.cache import open_cache
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    rows = np.arange(len(cache.q2c))
    assert choose_weight(cache, rows, block=7).chosen["stay"] == 0.8
    b = bm25_scorer(cache.query_texts, cache.context_texts)(rows)
    for how in ("minmax", "fixed"):
        spec = choose_weight(cache, rows, spec=FusionSpec(normalisation=how), block=7)
        fused = [fuse(cache.queries @ cache.contexts.T, b, FusionSpec(normalisation=how), weight=g)
                 for g in spec.chosen["grid"]]
        means = [PER_QUERY["mrr10"](_reference_ranks(f, cache.q2c)).mean() for f in fused]
        assert spec.chosen["stay"] is None and spec.weight == spec.chosen["grid"][int(np.argmax(means))]
        assert choose_weight(cache, rows, spec=FusionSpec(normalisation=how), block=7, stay=0.8).chosen["stay"] == 0.8
    with pytest.raises(FusionError, match="stay must be"):
        choose_weight(cache, rows, stay="high")


def test_the_best_weight_replaces_the_default_only_beyond_noise():
    """The best weight is chosen on one half of the queries and must beat the default on the other."""
    from projhead.hybrid import kept_weight

    rng = np.random.default_rng(0)
    grid = (0.6, 0.7, 0.8, 0.9)
    base = rng.uniform(0, 1, (300, 1))
    noisy = np.hstack([base + rng.normal(0, 0.3, (300, 1)) for _ in grid])  # every weight alike, one highest by chance
    noisy[:, 2] = base[:, 0]
    w, vs = kept_weight(noisy, grid, 0.8)
    assert w == 0.8 and (vs is None or (vs["low"] <= 0 and vs["n"] == 150 and vs["chosen_on"] == 150))
    half = np.random.default_rng(0).permutation(300)[:150]  # the choosing half, as kept_weight draws it
    lucky = noisy.copy()
    lucky[half, 0] += 0.3  # 0.6 far ahead on the choosing half only: chosen there, level on the other half
    w, vs = kept_weight(lucky, grid, 0.8)
    assert w == 0.8 and vs["best"] == 0.6 and vs["low"] <= 0
    assert lucky.mean(axis=0).argmax() == 0  # on every query 0.6 is the highest
    clear = noisy.copy()
    clear[:, 0] = base[:, 0] + 0.05  # 0.6 better for every query
    w, vs = kept_weight(clear, grid, 0.8)
    assert w == 0.6 and vs["low"] > 0 and vs["gain"] == pytest.approx(0.05)
    top = float(grid[int(np.argmax(noisy.mean(axis=0)))])
    assert kept_weight(noisy, grid, None) == (top, None)  # no default: the highest, whatever the margin
    other = (0.6, 0.7, 0.9, 1.0)
    assert kept_weight(noisy, other, 0.8) == (float(other[int(np.argmax(noisy.mean(0)))]), None)  # 0.8 not in the grid
    assert kept_weight(np.repeat(base, 4, axis=1), grid, 0.8) == (0.8, None)  # level with the highest: no comparison
    assert kept_weight(np.repeat(base, 4, axis=1), grid, None) == (0.6, None)  # ties: the lowest


def test_choose_weight_keeps_the_default_weight_unless_the_best_beats_it_beyond_noise(planted_cache, monkeypatch):
    from projhead import hybrid
    from projhead.cache import open_cache

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    rows = np.arange(len(cache.q2c))
    grid = (0.25, 0.5, 0.8, 1.0)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, (len(rows), 1))
    for spread, moves in ((0.01, True), (0.2, False)):
        per = np.hstack([base, base - 0.1, base, base - 0.2])
        e = rng.normal(0, spread, len(rows))
        per[:, 0] += 0.005 + e - e.mean()  # 0.25: ahead by 0.005 on average, for every query or by chance
        monkeypatch.setattr(hybrid, "_fused_scores", lambda *a, **k: [{"frozen": per}])
        said = []
        spec = FusionSpec.from_dict(hybrid.tune_after_selection(None, cache, rows, "mrr10", say=said.append, grid=grid,
                                                                 bm25_grid=None)["fusion"])
        vs = spec.chosen["against_stay"]["frozen"]
        assert vs["best"] == 0.25 and (vs["low"] > 0) is moves and spec.chosen["stay"] == 0.8
        assert spec.weight == spec.frozen_weight == (0.25 if moves else 0.8)
        assert any("0.80, the default: the best on half of these queries, 0.25, does not beat it beyond noise on the "
                   "other" in t for t in said) is not moves
        plain = hybrid.choose_weight(cache, rows, None, grid=grid, stay=None)
        assert plain.weight == 0.25 and "against_stay" not in plain.chosen  # no default: the highest


def test_the_head_is_judged_and_saved_at_the_weight_the_rule_keeps(planted_cache, monkeypatch):
    """Head and frozen encoder each by the rule; the comparison with frozen + BM25 is made at the
    weights saved: the head's default 0.8 (its best, 0.25, only by chance), the frozen encoder's
    0.25 (ahead for every query)."""
    from projhead import hybrid
    from projhead.cache import open_cache

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    rows = np.arange(len(cache.q2c))
    head = _head_on(cache)
    grid = (0.25, 0.5, 0.8, 1.0)
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, len(rows))
    e = rng.normal(0, 0.2, len(rows))
    table = {"head": np.stack([base + 0.005 + e - e.mean(), base - 0.1, base, base - 0.2], axis=1),
             "frozen": np.stack([base + 0.05, base - 0.1, base, base - 0.2], axis=1)}
    judged = []

    def scripted(cache, some, towers, indexes, texts, weights, *rest):
        cols = [grid.index(round(float(w), 2)) for w in weights]
        if len(weights) == 1:
            judged.extend((name, float(weights[0])) for name in towers)
        return [{name: table[name][np.asarray(some)][:, cols] for name in towers} for _ in indexes]

    monkeypatch.setattr(hybrid, "_fused_scores", scripted)
    spec = FusionSpec.from_dict(hybrid.tune_after_selection(head, cache, rows, "mrr10", say=lambda t: None, grid=grid,
                                                             bm25_grid=None, judge=rows[::2])["fusion"])
    assert spec.weight == 0.8 and spec.frozen_weight == 0.25
    moved = spec.chosen["against_stay"]
    assert moved.get("head", {"low": 0})["low"] <= 0 and moved["frozen"]["low"] > 0
    assert sorted(judged) == [("frozen", 0.25), ("head", 0.8)]  # judged at the weights saved
    vs = spec.chosen["against_frozen"]
    assert vs["frozen"]["weight"] == 0.25 and vs["gain"] == pytest.approx(-0.05, abs=1e-9)


def test_bm25_settings_are_chosen_by_their_best_fusion_then_the_weight_by_the_rule(planted_cache, monkeypatch):
    """k1 0.5 has the highest fusion (at 0.25, by chance), so it is chosen; its weight is then the
    default 0.8, which 0.25 does not beat beyond noise (at 0.8, k1 1.5 would score higher: the
    settings are scored by their best fusion, which chose better on the test questions)."""
    from projhead import hybrid
    from projhead.cache import open_cache

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    rows = np.arange(len(cache.q2c))
    grid = (0.25, 0.5, 0.8)  # the search tries every other one: 0.25 and 0.8
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, len(rows))
    e = rng.normal(0, 0.3, len(rows))
    table = {1.5: np.stack([base - 0.1, base - 0.2, base + 0.02], axis=1),
             0.5: np.stack([base + 0.03 + e - e.mean(), base - 0.2, base], axis=1)}

    def scripted(cache, some, towers, indexes, texts, weights, *rest):
        cols = [grid.index(round(float(w), 2)) for w in weights]
        return [{name: table[ix.settings.k1][np.asarray(some)][:, cols] for name in towers} for ix in indexes]

    monkeypatch.setattr(hybrid, "_fused_scores", scripted)
    settings = ((1.5, 0.75), (0.5, 0.75))
    spec = hybrid.choose_weight(cache, rows, None, grid=grid, bm25_grid=settings)
    assert (spec.bm25.k1, spec.weight) == (0.5, 0.8) and spec.chosen["against_stay"]["frozen"]["best"] == 0.25
    assert spec.chosen["bm25_search"]["best"] == [pytest.approx(base.mean() + 0.02, abs=1e-5),
                                                  pytest.approx(base.mean() + 0.03, abs=1e-5)]
    plain = hybrid.choose_weight(cache, rows, None, grid=grid, bm25_grid=settings, stay=None)
    assert (plain.bm25.k1, plain.weight) == (0.5, 0.25)


def test_the_weight_rule_is_seeded_by_the_run_on_every_path(planted_cache, monkeypatch):
    """The halves and bootstraps of the rule follow ``boot_seed`` in ``tune_after_selection`` and
    ``seed`` in ``best_weight`` (``--hybrid``), so a run's weight is its seed's; ``--hybrid``
    ranks at the rule's weight, not the highest."""
    from projhead import hybrid
    from projhead.cache import open_cache

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    rows = np.arange(len(cache.q2c))
    grid = (0.25, 0.5, 0.8, 1.0)
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, len(rows))
    per = np.stack([base + 0.02 + rng.normal(0, 0.1, len(rows)), base - 0.1, base, base - 0.2], axis=1)
    by_seed = {seed: hybrid.kept_weight(per, grid, 0.8, seed)[0] for seed in range(40)}
    a = next(k for k, w in by_seed.items() if w == 0.8)
    b = next(k for k, w in by_seed.items() if w == 0.25)  # a lead near noise: moved or not by the halves drawn
    monkeypatch.setattr(hybrid, "_fused_scores", lambda *x, **k: [{"frozen": per[np.asarray(x[1])]}])
    for seed in (a, b):
        spec = FusionSpec.from_dict(hybrid.tune_after_selection(None, cache, rows, "mrr10", say=lambda t: None,
                                                                 grid=grid, bm25_grid=None, boot_seed=seed)["fusion"])
        assert spec.weight == by_seed[seed]

    class Dev:  # a held-out set ranked fused: its per-query metric at each weight is a column of ``per``
        bm25, weight = object(), None

        def ranks(self, head):
            return per[:, grid.index(self.weight)]

    assert [hybrid.best_weight(Dev(), None, grid, lambda m: m, seed=seed) for seed in (a, b)] == [0.8, 0.25]
    assert hybrid.best_weight(Dev(), None, grid, lambda m: m, stay=None) == 0.25  # the highest mean
    from projhead import hybrid_select
    from projhead.config import TrainConfig

    asked = []
    monkeypatch.setattr(hybrid_select, "best_weight", lambda *x, **k: asked.append(k) or 0.8)
    monkeypatch.setattr(hybrid_select, "training_bm25", lambda *x, **k: None)
    monkeypatch.setattr(hybrid_select, "bm25_share", lambda *x, **k: 0.1)
    monkeypatch.setattr(hybrid_select, "held_out", lambda cache, rows, cfg: rows)
    hybrid_select.hybrid_settings(cache, TrainConfig(hybrid=True, seed=7, bm25_k1=1.5, bm25_b=0.75), [], rows, rows,
                                  {}, say=lambda t: None)
    assert asked == [{"seed": 7}]  # the rule (its default stay), with the run's seed


def test_choose_weight_compares_head_and_frozen_fused_on_the_judging_queries(planted_cache):
    """Each system at its own chosen weight, query by query, on the judging rows only."""
    from projhead.cache import open_cache
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight
    from projhead.metrics import paired_bootstrap

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    head = _head_on(cache)
    rows, judge = np.arange(0, len(cache.q2c), 2), np.arange(0, len(cache.q2c), 4)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    spec = choose_weight(cache, rows, head, grid=grid, block=7, judge=judge)
    b = bm25_scorer(cache.query_texts, cache.context_texts)(judge)
    per = {name: PER_QUERY["mrr10"](_reference_ranks(fuse(q[judge] @ c.T, b, weight=w), cache.q2c[judge]))
           for name, (q, c), w in (("head", (head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)),
                                    spec.weight), ("frozen", (cache.queries, cache.contexts), spec.frozen_weight))}
    vs = spec.chosen["against_frozen"]
    assert vs["n"] == len(judge) and vs["metric"] == "mrr10"
    assert vs["gain"] == pytest.approx(float((per["head"] - per["frozen"]).mean()), abs=1e-9)
    assert vs["gain"] != 0  # the two systems rank these queries differently: the check can tell them apart
    expected = paired_bootstrap(per["head"], per["frozen"], seed=0)
    assert (vs["low"], vs["high"]) == pytest.approx((expected["low"], expected["high"]), abs=1e-9)
    assert "against_frozen" not in choose_weight(cache, rows, head, grid=grid).chosen  # not asked: not made
    assert "against_frozen" not in choose_weight(cache, rows, None, grid=grid, judge=judge).chosen  # no head
    with pytest.raises(FusionError, match="judging queries must be among"):
        choose_weight(cache, rows, head, grid=grid, judge=rows + 1)  # odd rows: not chosen on


def test_the_frozen_side_of_the_comparison_is_frozen_plus_bm25_as_the_identity_would_be_saved(tmp_path):
    """With BM25's settings chosen, the head's fusion and the identity's may pick different k1 and
    b: the frozen side is compared with its own pick and weight, on every judging row."""
    from projhead.evaluate import PER_QUERY
    from projhead.fusion import BM25_GRID
    from projhead.hybrid import choose_weight

    for seed in range(4):  # a cache and head where the two BM25 choices differ (seed 0 here)
        cache, head, rows, judge = _wordy_case(tmp_path, seed)
        sh = choose_weight(cache, rows, head, bm25_grid=BM25_GRID, judge=judge, max_queries=30)  # judge beyond the sample
        sf = choose_weight(cache, rows, None, bm25_grid=BM25_GRID, max_queries=30)  # the identity's fusion
        if (sh.bm25.k1, sh.bm25.b) != (sf.bm25.k1, sf.bm25.b):
            break
    else:
        pytest.fail("no cache where the head's and the frozen encoder's BM25 choices differ")
    vs = sh.chosen["against_frozen"]
    assert {k: vs["frozen"][k] for k in ("k1", "b", "weight")} == {"k1": sf.bm25.k1, "b": sf.bm25.b,
                                                                   "weight": sf.frozen_weight}
    assert vs["n"] == len(judge)
    f = PER_QUERY["mrr10"]
    per = {name: f(_reference_ranks(fuse(q[judge] @ c.T, bm25_scorer(cache.query_texts, cache.context_texts, bm)(judge),
                                         weight=w), cache.q2c[judge]))
           for name, (q, c), bm, w in (
               ("head", (head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)), sh.bm25, sh.weight),
               ("frozen", (cache.queries, cache.contexts), sf.bm25, sf.frozen_weight))}
    assert vs["gain"] == pytest.approx(float((per["head"] - per["frozen"]).mean()), abs=1e-9)
    # saved as the baseline: an evaluation's frozen + BM25 row is the identity's system, not the
    # frozen encoder at the head's BM25
    assert (sh.frozen_bm25, sh.frozen_weight) == (sf.bm25, sf.frozen_weight) and sh.baseline == (sf.weight, sf.bm25)
    assert FusionSpec.from_dict(json.loads(json.dumps(sh.to_dict()))) == sh
    from projhead.evaluate import evaluate_cache

    with_head = evaluate_cache(cache, head=head, bm25=True, fusion=sh)
    identity = evaluate_cache(cache, bm25=True, fusion=sf)
    assert with_head["frozen+bm25"] == identity["frozen+bm25"]
    assert with_head["bm25"] != identity["bm25"]  # BM25 alone is at the head's settings: they differ here


def test_the_identitys_fusion_rebuilt_from_the_comparison_equals_choosing_it_again(tmp_path):
    """When a head gives way, the identity is saved with the fusion the comparison chose for it;
    that equals choosing the frozen encoder's fusion on the same queries anew: BM25 chosen for
    both, pinned for the head alone (a head trained beside one BM25), or set for both."""
    from projhead.fusion import BM25_GRID, BM25Settings
    from projhead.hybrid import choose_weight, identity_spec

    def plain(spec):
        d = spec.to_dict()
        d["chosen"].pop("seconds")
        return d

    differ = False
    for seed in range(3):
        cache, head, rows, judge = _wordy_case(tmp_path, seed)
        pinned = FusionSpec(bm25=BM25Settings(k1=0.9, b=0.4))
        for head_grid, frozen_grid, spec in ((BM25_GRID, BM25_GRID, None), (None, BM25_GRID, pinned),
                                             (None, None, pinned)):
            sh = choose_weight(cache, rows, head, spec=spec, bm25_grid=head_grid, judge=judge, max_queries=30,
                               max_settings_queries=40, frozen_bm25_grid=frozen_grid)
            sf = choose_weight(cache, rows, None, spec=None if frozen_grid else spec, bm25_grid=frozen_grid,
                               max_queries=30, max_settings_queries=40)
            assert plain(identity_spec(sh)) == plain(sf)
            differ |= (sh.bm25.k1, sh.bm25.b) != (sf.bm25.k1, sf.bm25.b)
    assert differ  # in some case the identity's BM25 is not the head's: the rebuilt one is not the head's copied
    with pytest.raises(FusionError, match="not compared with frozen"):
        identity_spec(choose_weight(cache, rows, head, bm25_grid=BM25_GRID))


def _wordy_case(tmp_path, seed: int):
    """A wordy cache of 90 pairs, a random residual head over it, every row to choose on and the
    odd rows to judge on."""
    torch = pytest.importorskip("torch")
    cache = _wordy_cache(tmp_path / f"w{seed}.h5", n=90, seed=seed, noise=1.0, rotate=0.0)
    torch.manual_seed(seed)
    head = Head(HeadConfig(kind="residual", in_dim=cache.dim, hidden=8, encoder=cache.encoder))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return cache, head, np.arange(len(cache.q2c)), np.arange(1, len(cache.q2c), 2)


def _wordy_cache(path, n: int = 60, seed: int = 0, noise: float = 2.0, rotate: float = 1.0):
    """Contexts of 4 to 40 words of a small vocabulary, each asked for by a query of 3 of its words
    and 2 others: BM25's saturation and length normalisation change its rankings."""
    from conftest import PlantedEncoder

    from projhead.cache import build_cache, open_cache
    from projhead.data import Pairs

    rng = np.random.default_rng(seed)
    vocab = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(8) for j in range(8)]
    contexts = [" ".join(rng.choice(vocab, int(rng.integers(4, 41)))) for _ in range(n)]
    queries = [" ".join(list(rng.choice(c.split(), 3)) + list(rng.choice(vocab, 2))) for c in contexts]
    pairs = Pairs(queries, [f"q{i}" for i in range(n)], [f"g{i // 3}" for i in range(n)], contexts, np.arange(n),
                  {"dataset": "wordy", "split": "train", "granularity": "sentence"})
    build_cache(pairs, PlantedEncoder(pairs, noise=noise, rotate=rotate), path, progress=False)
    return open_cache(path)


def test_choose_weight_picks_the_bm25_setting_of_the_best_fusion(tmp_path):
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight

    cache = _wordy_cache(tmp_path / "wordy.h5")
    head = _head_on(cache)
    rows = np.arange(1, len(cache.q2c), 2)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    settings = ((1.5, 0.75), (0.5, 0.3), (3.0, 1.0), (0.2, 0.0))
    spec = choose_weight(cache, rows, head, grid=grid, block=5, bm25_grid=settings)
    q, c = head.encode_queries(cache.queries[rows]), head.encode_contexts(cache.contexts)
    best = []
    for k1, b in settings:
        bm = bm25_scorer(cache.query_texts, cache.context_texts, BM25Settings(k1=k1, b=b))(rows)
        best.append(max(PER_QUERY["mrr10"](_reference_ranks(fuse(q @ c.T, bm, weight=g), cache.q2c[rows])).mean()
                        for g in grid[::2]))
    search = spec.chosen["bm25_search"]
    np.testing.assert_allclose(search["best"], best, atol=1e-5)
    assert len({round(x, 4) for x in best}) > 1  # the settings rank differently here
    assert (spec.bm25.k1, spec.bm25.b) == settings[int(np.argmax(best))]
    bm = bm25_scorer(cache.query_texts, cache.context_texts, spec.bm25)(rows)  # the weight: at that BM25
    means = [PER_QUERY["mrr10"](_reference_ranks(fuse(q @ c.T, bm, weight=g), cache.q2c[rows])).mean() for g in grid]
    assert spec.weight == grid[int(np.argmax(means))]


def test_choose_weight_on_fold_heads_scores_each_query_with_its_own_fold(planted_cache):
    from projhead.cache import open_cache
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight

    cache = open_cache(planted_cache(n_groups=10, noise=1.0))
    n, grid = len(cache.q2c), (0.0, 0.25, 0.5, 0.75, 1.0)
    folds = [np.arange(0, n, 3), np.arange(1, n, 3), np.arange(2, n, 3)]
    heads = []
    for seed in range(3):  # three different heads, one per fold
        torch = pytest.importorskip("torch")
        torch.manual_seed(seed)
        h = Head(HeadConfig(kind="residual", in_dim=cache.dim, hidden=8, towers="separate", encoder=cache.encoder))
        for p in h.parameters():
            torch.nn.init.normal_(p, std=0.3)
        heads.append(h)
    spec = choose_weight(cache, np.arange(n), heads[0], grid=grid, block=4, folds=list(zip(folds, heads)))
    f = PER_QUERY["mrr10"]
    total = np.zeros(len(grid))
    for rows, h in zip(folds, heads):
        b = bm25_scorer(cache.query_texts, cache.context_texts)(rows)
        d = h.encode_queries(cache.queries[rows]) @ h.encode_contexts(cache.contexts).T
        total += [f(_reference_ranks(fuse(d, b, weight=g), cache.q2c[rows])).sum() for g in grid]
    np.testing.assert_allclose(spec.chosen["scores"]["head"], total / n, atol=1e-5)
    assert spec.weight == grid[int(np.argmax(total))] and spec.chosen["folds"] == 3
    alone = choose_weight(cache, np.arange(n), heads[0], grid=grid)  # one head for every query ranks otherwise
    assert alone.chosen["scores"]["head"] != spec.chosen["scores"]["head"]
    np.testing.assert_allclose(alone.chosen["scores"]["frozen"], spec.chosen["scores"]["frozen"], atol=1e-9)
    with pytest.raises(FusionError, match="each query once"):  # overlapping folds would count a query twice
        choose_weight(cache, np.arange(n), folds=[(folds[0], heads[0]), (np.arange(n), heads[1])])
    with pytest.raises(FusionError, match="miss some"):
        choose_weight(cache, np.arange(n), folds=[(folds[0], heads[0])])


def test_train_with_folds_chooses_a_kept_heads_weight_on_its_fold_heads(planted_cache, tmp_path):
    """k-fold: the saved head was refit on every query; its fusion weight is chosen on each
    query scored by the head of the fold that held it out, as saved (that epoch, that alpha)."""
    from dataclasses import replace

    from projhead.cache import open_cache
    from projhead.config import TrainConfig
    from projhead.evaluate import PER_QUERY
    from projhead.gate import fit_fold_gates
    from projhead.select import CANDIDATES, auto_train, group_folds, split_groups
    from projhead.soup import fold_runs

    path = planted_cache(n_groups=40)  # a real gain: a head is kept
    cfg, fixed = TrainConfig(epochs=6), {"kind": "linear", "towers": "query", "lr": 1e-2}
    head, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "h", progress=False)
    sel, spec = log["selection"], load_head(tmp_path / "h").fusion
    assert log["decision"]["kept"] == "head" and sel["mode"] == "5-fold"
    assert spec.chosen["system"] == "head" and spec.chosen["folds"] == 5 and spec.chosen["queries"] == 400
    assert ("held-out queries (mrr10), each scored by the head of the fold that held it out (5 folds): 0.8 unless "
            "another beats it beyond noise.") in (
        tmp_path / "h" / "README.md").read_text()  # the model card
    cache = open_cache(path)  # the fold heads again, by hand
    folds = group_folds(split_groups(cache, need=5), 5, cfg.seed)
    _, hc, t = next(c for c in CANDIDATES if c[0] == "linear-query")
    tc = replace(cfg, **{**t, "lr": 1e-2}).sized(len(cache.q2c) - len(cache.q2c) // 5)
    tc = replace(tc, patience=tc.epochs + 1, batch_size=sel["candidates"][0]["batch_size"])
    runs = fold_runs(cache, HeadConfig(in_dim=cache.dim, encoder=cache.encoder, **hc), tc, folds,
                     sel["candidates"][0]["best_epoch"])
    grid, total = spec.chosen["grid"], np.zeros(len(spec.chosen["grid"]))
    gates = fit_fold_gates(cache.queries, folds, [])[2]  # each fold head as saved: gated by its fold's gate
    assert head.gate is not None
    for rows, run, gate in zip(folds, runs, gates):
        h = run["head"].interpolate(log["decision"]["alpha"]).set_gate(gate)
        b = bm25_scorer(cache.query_texts, cache.context_texts, spec.bm25)(rows)
        d = h.encode_queries(cache.queries[rows]) @ h.encode_contexts(cache.contexts).T
        total += [PER_QUERY["mrr10"](_reference_ranks(fuse(d, b, weight=g), cache.q2c[rows])).sum() for g in grid]
    np.testing.assert_allclose(spec.chosen["scores"]["head"], total / 400, atol=1e-5)
    assert spec.weight == grid[int(np.argmax(total))]


def test_a_kept_head_that_cannot_interpolate_gets_its_fold_weight_too(planted_cache, tmp_path):
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    path = planted_cache(n_groups=40)  # a real gain: an MLP head (no frozen encoder inside: alpha 1) is kept
    head, log = auto_train(path, TrainConfig(epochs=6), fixed={"kind": "mlp", "lr": 1e-2}, out=tmp_path / "h",
                           progress=False)
    assert log["decision"]["kept"] == "head" and log["decision"]["alpha"] == 1.0
    assert head.fusion.chosen["system"] == "head" and head.fusion.chosen["folds"] == 5


def test_choose_weight_ranks_the_corpus_rows_attached_for_selection(tmp_path):
    from projhead.evaluate import PER_QUERY
    from projhead.hybrid import choose_weight

    cache = _wordy_cache(tmp_path / "wordy.h5")
    rng = np.random.default_rng(1)
    extra = [" ".join(rng.choice(cache.context_texts[i].split(), 6)) for i in range(20)]  # near the contexts
    vecs = rng.normal(size=(20, cache.dim)).astype(np.float32)
    cache.attach_distractors(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), extra)
    rows, grid = np.arange(len(cache.q2c)), (0.0, 0.5, 0.8, 1.0)
    spec = choose_weight(cache, rows, None, grid=grid, bm25_grid=((1.5, 0.75), (0.5, 0.3)))
    c = np.concatenate([cache.contexts, cache.distractors[0]])
    bm = bm25_scorer(cache.query_texts, list(cache.context_texts) + extra, spec.bm25)(rows)
    means = [PER_QUERY["mrr10"](_reference_ranks(fuse(cache.queries @ c.T, bm, weight=g), cache.q2c)).mean() for g in grid]
    np.testing.assert_allclose(spec.chosen["scores"]["frozen"], means, atol=1e-5)
    assert spec.chosen["distractors"] == 20 and spec.chosen["ranked"] == len(cache.contexts) + 20
    cache.attach_distractors(None, None)  # the contexts alone rank otherwise
    alone = choose_weight(cache, rows, None, spec=FusionSpec(bm25=spec.bm25), grid=grid)
    assert alone.chosen["distractors"] == 0 and alone.chosen["scores"]["frozen"] != spec.chosen["scores"]["frozen"]


def test_fused_ranks_of_the_candidates_above_the_gold_equal_the_full_ranking():
    from projhead.hybrid import _fused_ranks
    from projhead.metrics import MISS, gold_ranks

    rng = np.random.default_rng(0)
    d = np.round(rng.normal(size=(40, 300)), 1)  # rounded: ties on each side
    b = np.where(rng.random((40, 300)) < 0.8, 0.0, rng.gamma(2.0, size=(40, 300)))  # BM25: mostly no overlap
    gold = rng.integers(0, 300, 40)
    exclude = np.where(rng.random(40) < 0.3, rng.integers(0, 300, 40), -1)
    exclude[:3] = gold[:3]  # the gold is the query's own text
    d[5, (gold[5] + 1) % 300], b[5, (gold[5] + 1) % 300] = -np.inf, b[5, gold[5]]  # no tie at weight 0 (0 x -inf)
    d[6, (gold[6] + 1) % 300], b[6, (gold[6] + 1) % 300] = np.nan, b[6, gold[6]]
    grid = (0.0, 0.05, 0.3, 0.5, 0.8, 1.0)
    with np.errstate(invalid="ignore"):  # 0 x inf
        fast = list(_fused_ranks(d, b, gold, exclude, grid))
    for w, got in zip(grid, fast):
        with np.errstate(invalid="ignore"):
            s = w * d + (1 - w) * b
        own = np.flatnonzero(exclude >= 0)
        s[own, exclude[own]] = -np.inf
        np.testing.assert_array_equal(got, gold_ranks(s, gold))
        assert (got[:3] == MISS).all()


def test_no_texts_means_no_fusion_with_a_clear_message():
    from types import SimpleNamespace

    from projhead.hybrid import choose_weight, tune_after_selection

    cache = SimpleNamespace(path="vectors.h5", context_texts=["", " ", ""])  # vectors brought without their texts
    said = []
    assert tune_after_selection(None, cache, np.arange(5), "mrr10", say=said.append) == {}
    assert "fusion with BM25 needs texts" in said[0]
    with pytest.raises(FusionError, match="needs texts"):
        choose_weight(cache, np.arange(5))
    # texts of stop words alone: BM25 has nothing to index, so no fusion either (not a failure
    # after the whole of model selection)
    words = SimpleNamespace(path="words.h5", context_texts=["The", "of the", "a", "", "it is"] * 900)
    said.clear()
    assert tune_after_selection(None, words, np.arange(5), "mrr10", say=said.append) == {}
    assert "stop words alone" in said[0]
    words.context_texts[-1] = "it is Lisbon"  # one text in the last chunk BM25 can index
    with pytest.raises(FusionError, match="no held-out queries"):
        choose_weight(words, [])  # past the texts' check


def test_the_chosen_weight_is_said_of_the_system_that_will_be_served(planted_cache):
    from projhead.cache import open_cache
    from projhead.hybrid import tune_after_selection

    cache = open_cache(planted_cache(n_groups=20))
    rows = np.arange(len(cache.q2c))
    said = []
    tune_after_selection(None, cache, rows, "mrr10", say=said.append)  # the identity kept: one dense system
    assert "dense weight" in said[-1] and "for the frozen encoder (the identity head), chosen on" in said[-1]
    head = Head(HeadConfig(in_dim=cache.dim, kind="linear", towers="query"))
    tune_after_selection(head, cache, rows, "mrr10", say=said.append)  # a head: its weight, then the frozen one's
    assert " for the head, " in said[-1] and " for the frozen encoder, chosen on" in said[-1]


@pytest.mark.parametrize("folds", [None, 0])
def test_a_head_not_above_frozen_plus_bm25_fused_gives_way_to_the_identity(planted_cache, tmp_path, monkeypatch,
                                                                           folds, capsys):
    """A head kept on its own is compared fused with frozen + BM25 on the deciding queries; when
    the interval is not above 0 the identity is saved, with the frozen encoder's fusion."""
    from dataclasses import replace

    from projhead import hybrid
    from projhead.config import TrainConfig, TrainError
    from projhead.select import auto_train

    path = planted_cache(n_groups=40)  # a real gain alone: a head is kept
    cfg = TrainConfig(epochs=6, after_folds="average" if folds is None else "refit")  # folds: fold heads averaged
    fixed = {"kind": "linear", "towers": "query", "lr": 1e-2}
    real, asked = hybrid.paired_bootstrap, []

    def scripted(a, b, **kw):  # the fused comparison's verdict, scripted; its queries recorded (not the weights')
        if sys._getframe(1).f_code.co_name != "_against_frozen":
            return real(a, b, **kw)
        asked.append(len(a))
        return {**real(a, b, **kw), "gain": -0.01, "low": -0.02, "high": 0.0}
    monkeypatch.setattr(hybrid, "paired_bootstrap", scripted)
    head, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "h", progress=True, folds=folds)
    d, saved, out = log["decision"], load_head(tmp_path / "h"), capsys.readouterr().out
    assert "the frozen encoder's fusion, chosen beside the head's:" in out and "saved: the weights" not in out
    assert out.count("dense weight") == 2 and "for the frozen encoder (the identity head)" in out
    assert len(asked) == 1 and 0 < asked[0] < log["selection"]["n_queries"]  # the deciding queries only
    assert d["kept"] == "identity" and "not above frozen + BM25" in d["why"] and d["fused_gain"]["gain"] == -0.01
    assert d["dev_gain"]["low"] > 0 and d["alpha"] < 1  # alone, the head (interpolated) was above the frozen encoder
    assert head.config.passthrough and saved.config.passthrough and saved.gate is None
    assert saved.fusion.chosen["system"] == "frozen" and saved.fusion.weight == saved.fusion.frozen_weight
    card = (tmp_path / "h" / "README.md").read_text()
    assert "not above frozen + BM25" in card and "(dense, the head alone)" in card  # the model card says why
    assert "Interpolated toward" not in card and "Saved: the weights" not in card  # nothing of the head is saved
    assert "Measured on the head not kept (" in card and "as saved" not in card

    asked.clear()  # served by dense search alone: no fused comparison, the head decided on its own stays
    head, log = auto_train(path, replace(cfg, dense_only=True), fixed=fixed, out=tmp_path / "d", progress=False,
                           folds=folds)
    assert log["decision"]["kept"] == "head" and not asked and "fused_gain" not in log["decision"]
    assert "against_frozen" not in load_head(tmp_path / "d").fusion.chosen  # its fusion is still saved
    with pytest.raises(TrainError, match="--dense-only or --hybrid"):
        TrainConfig(dense_only=True, hybrid=True)

    monkeypatch.setattr(hybrid, "paired_bootstrap", lambda a, b, **kw: {**real(a, b, **kw), "low": 0.001})
    head, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "k", progress=True, folds=folds)
    assert log["decision"]["kept"] == "head" and not head.config.passthrough  # above it: the head stays
    assert ("saved: the weights of the 5 fold heads" in capsys.readouterr().out) == (folds is None)
    assert load_head(tmp_path / "k").fusion.chosen["against_frozen"]["low"] == 0.001


def test_train_saves_the_weight_chosen_on_held_out_queries(planted_cache, tmp_path):
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    head, log = auto_train(planted_cache(n_groups=20), TrainConfig(epochs=2), out=tmp_path / "h", progress=False)
    spec = load_head(tmp_path / "h").fusion
    assert spec is not None and spec.chosen["queries"] == log["selection"]["n_queries"]  # folds: every query
    if head.config.passthrough:  # the identity: the frozen encoder's weight
        assert spec.chosen["system"] == "frozen" and spec.weight == spec.frozen_weight
    else:  # a kept head: its own, chosen on its fold heads
        assert spec.chosen["system"] == "head" and spec.chosen["folds"] == 5
    search = spec.chosen["bm25_search"]  # BM25's k1 and b chosen on the same queries, saved with the weight
    assert [spec.bm25.k1, spec.bm25.b] == search["grid"][int(np.argmax(search["best"]))]
    assert f"k1 {spec.bm25.k1}, b {spec.bm25.b}" in (tmp_path / "h" / "README.md").read_text()  # the model card
    assert "k1 and b chosen first, of 6 settings" in (tmp_path / "h" / "README.md").read_text()
    assert "Fusion with BM25" in (tmp_path / "h" / "README.md").read_text()


def test_train_with_a_dev_split_chooses_the_weight_on_that_split(planted_cache):
    from projhead.batches import MemorySource
    from projhead.cache import open_cache
    from projhead.config import TrainConfig
    from projhead.select import auto_train

    path = planted_cache(n_groups=20)
    cfg = TrainConfig(epochs=2, seed=2)
    head, log = auto_train(path, cfg, progress=False, folds=0)
    dev = MemorySource(open_cache(path), cfg).dev
    spec = head.fusion
    assert log["selection"]["mode"] == "dev split"
    assert spec.chosen["queries"] == len(dev) < log["selection"]["n_queries"]
    assert spec.chosen["system"] == ("frozen" if head.config.passthrough else "head")


def test_dev_split_rows_are_the_queries_training_held_out(planted_cache):
    from projhead.batches import MemorySource, dev_fraction, split_by_group
    from projhead.cache import open_cache
    from projhead.config import TrainConfig
    from projhead.train import split_groups

    cache = open_cache(planted_cache(n_groups=20))
    cfg = TrainConfig(seed=3)
    rows = split_by_group(split_groups(cache), dev_fraction(cfg, len(cache.q2c)), cfg.seed)[1]
    dev = MemorySource(cache, cfg).dev
    np.testing.assert_array_equal(dev.gold, cache.q2c[rows])
    np.testing.assert_array_equal(dev.q, cache.queries[rows])


def test_cli_eval_with_an_index_says_fused_rows_need_every_context(planted_cache, capsys):
    pytest.importorskip("faiss")
    from projhead.cli import main

    path = planted_cache(n_groups=6)
    assert main(["eval", str(path), "--bm25", "--index", "Flat"]) == 0
    out = capsys.readouterr().out
    assert "| bm25 |" in out and "| frozen+bm25 |" not in out
    assert "fused rows need every context's scores: evaluate without --index" in out


def _repeated_words_cache(path, n: int = 90, seed: int = 0, repeat: int = 8):
    """Contexts of 6 words, every other one repeating its second word ``repeat`` times; each
    query two words of its context and that second word of the next: little term-frequency
    saturation (a low k1) keeps the repeating neighbour below the gold."""
    from conftest import PlantedEncoder

    from projhead.cache import build_cache, open_cache
    from projhead.data import Pairs

    rng = np.random.default_rng(seed)
    vocab = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(16) for j in range(16)]
    own = rng.permutation(len(vocab))
    words = [[vocab[k] for k in own[2 * i % len(vocab):2 * i % len(vocab) + 2]] + list(rng.choice(vocab, 4))
             for i in range(n)]
    contexts = [" ".join(w + [w[1]] * (repeat if i % 2 else 0)) for i, w in enumerate(words)]
    queries = [f"{words[i][0]} {words[(i + 1) % n][1]} {words[i][2]}" for i in range(n)]
    pairs = Pairs(queries, [f"q{i}" for i in range(n)], [f"g{i // 3}" for i in range(n)], contexts, np.arange(n),
                  {"dataset": "repeated", "split": "train", "granularity": "sentence"})
    build_cache(pairs, PlantedEncoder(pairs, noise=2.0), path, progress=False)
    return open_cache(path)


def test_hybrid_selection_chooses_bm25_settings_before_training_and_trains_and_saves_that_bm25(tmp_path, monkeypatch):
    """--hybrid: BM25's k1 and b chosen with the frozen encoder on every held-out query (the
    search of a plain train, over fusion.BM25_GRID; with folds every query, not the choosing half), the BM25-aware candidates trained beside
    that BM25, the held-out rankings and the saved fusion at it; set in the config, kept."""
    import json

    from projhead import batches
    from projhead.cache import open_cache
    from projhead.config import TrainConfig
    from projhead.fusion import BM25_GRID
    from projhead.hybrid import choose_weight
    from projhead.lexical import training_bm25
    from projhead.select import _halves, auto_train, split_groups
    from projhead.train import dev_fraction, split_by_group

    path = tmp_path / "repeated.h5"
    cache = _repeated_words_cache(path)
    fixed = {"kind": "linear", "towers": "query", "lr": 1e-3}
    used = []  # the BM25 every BM25-aware run trains beside

    def recorded(cache, settings=None, **kw):
        used.append(settings)
        return training_bm25(cache, settings, **kw)

    monkeypatch.setattr(batches, "training_bm25", recorded)
    head, log = auto_train(path, TrainConfig(epochs=2, hybrid=True), fixed=fixed, out=tmp_path / "h", progress=False)
    bm = log["selection"]["hybrid"]["bm25"]
    assert [c["name"] for c in log["selection"]["candidates"]] == ["linear-query", "linear-query+bm25"]
    assert len(used) >= 5 and {(s.k1, s.b) for s in used} == {(bm["k1"], bm["b"])}
    every = np.arange(len(cache.q2c))  # with folds every query is held out once
    spec = choose_weight(cache, every, None, bm25_grid=BM25_GRID)  # the search of a plain projhead train
    assert len(set(spec.chosen["bm25_search"]["best"])) > 1  # the settings rank differently here
    assert bm["search"]["best"] == spec.chosen["bm25_search"]["best"] and bm["search"]["queries"] == len(every)
    choose, _ = _halves(split_groups(cache, need=5), every, 0, {})  # the choosing half alone searches otherwise
    assert choose_weight(cache, choose, None, bm25_grid=BM25_GRID).chosen["bm25_search"]["best"] != bm["search"]["best"]
    assert (bm["k1"], bm["b"]) == (spec.bm25.k1, spec.bm25.b) != (1.5, 0.75)  # not bm25s's defaults
    saved = json.loads((tmp_path / "h" / "config.json").read_text())
    assert (saved["fusion"]["bm25"]["k1"], saved["fusion"]["bm25"]["b"]) == (bm["k1"], bm["b"])
    assert (saved["training"]["bm25_k1"], saved["training"]["bm25_b"]) == (bm["k1"], bm["b"])
    assert f"BM25 k1 {bm['k1']:g}, b {bm['b']:g}" in (tmp_path / "h" / "README.md").read_text()
    section = open_cache(path).read("bm25")  # what the BM25-aware candidates trained beside
    assert json.loads(section["attrs"]["settings_json"])["k1"] == bm["k1"]
    assert json.loads(section["attrs"]["settings_json"])["b"] == bm["b"]
    _, log = auto_train(path, TrainConfig(epochs=2, hybrid=True, bm25_k1=1.5, bm25_b=0.75), fixed=fixed,
                        out=tmp_path / "h2", progress=False)
    assert log["selection"]["hybrid"]["bm25"] == {"k1": 1.5, "b": 0.75, "how": "as set"}
    assert load_head(tmp_path / "h2").fusion.bm25.k1 == 1.5
    _, log = auto_train(path, TrainConfig(epochs=2, hybrid=True, bm25_k1=0.9), fixed=fixed, out=tmp_path / "h3",
                        progress=False)  # k1 set, b chosen
    bm = log["selection"]["hybrid"]["bm25"]
    assert bm["search"]["grid"] == [[0.9, 0.75], [0.9, 0.3]] and bm["how"].startswith("k1 as set, b the frozen")
    # a dev split: every held-out query (choosing and deciding) chooses BM25 and the dense share
    cfg = TrainConfig(epochs=2, hybrid=True)
    _, log = auto_train(path, cfg, fixed=fixed, out=tmp_path / "h4", progress=False, folds=0)
    groups = split_groups(cache, need=5)
    _, held = split_by_group(groups, dev_fraction(cfg, len(cache.q2c)), cfg.seed)
    assert log["selection"]["mode"] == "dev split" and len(_halves(groups, held, cfg.seed, {})[0]) < len(held)
    assert log["selection"]["hybrid"]["bm25"]["search"]["queries"] == len(held)
    assert f"on {len(held)} of the {len(held)} held-out queries" in log["selection"]["hybrid"]["how"]


def test_plain_selection_serves_a_head_with_the_bm25_it_was_trained_beside_or_set(tmp_path, planted_cache):
    """Without --hybrid the BM25 of the saved fusion is searched, unless k1 and b are set, or
    the saved head was trained beside BM25 (then that BM25)."""
    import json

    from projhead.config import TrainConfig
    from projhead.select import auto_train

    path = tmp_path / "repeated.h5"
    _repeated_words_cache(path)
    fixed = {"kind": "linear", "towers": "query", "lr": 1e-3}
    head, _ = auto_train(path, TrainConfig(epochs=2), fixed=fixed, out=tmp_path / "a", progress=False)
    assert (head.fusion.bm25.k1, head.fusion.bm25.b) == (0.5, 0.75)  # searched (the defaults lose here)
    head, _ = auto_train(path, TrainConfig(epochs=2, bm25_k1=0.9, bm25_b=0.3), fixed=fixed, out=tmp_path / "b",
                         progress=False)
    assert (head.fusion.bm25.k1, head.fusion.bm25.b) == (0.9, 0.3) and "bm25_search" not in head.fusion.chosen
    head, _ = auto_train(path, TrainConfig(epochs=2), fixed={**fixed, "bm25_aware": True}, out=tmp_path / "c",
                         progress=False)
    assert head.config.passthrough  # no head kept: the frozen encoder's fusion, searched
    assert (head.fusion.bm25.k1, head.fusion.bm25.b) == (0.5, 0.75) and "bm25_search" in head.fusion.chosen
    path = planted_cache(n_groups=40)  # a real gain: a BM25-aware head is kept
    head, _ = auto_train(path, TrainConfig(epochs=6), fixed={**fixed, "lr": 1e-2, "bm25_aware": True},
                         out=tmp_path / "d", progress=False)
    assert not head.config.passthrough
    training = json.loads((tmp_path / "d" / "config.json").read_text())["training"]
    assert training["bm25_aware"]
    assert "bm25_search" not in head.fusion.chosen
    assert (head.fusion.bm25.k1, head.fusion.bm25.b) == (1.5, 0.75)  # what it was trained beside
    from projhead.cache import open_cache
    from projhead.fusion import DEFAULT_WEIGHT
    from projhead.lexical import bm25_share

    c = open_cache(path)  # the BM25 share it was trained at: the refit's, on every pair (each fold has its own)
    assert training["loss_settings"]["bm25_weight"] == bm25_share(c.queries[:], c.contexts[:], DEFAULT_WEIGHT, 0)


@pytest.mark.parametrize("bad", [{"bm25_k1": float("inf")}, {"bm25_k1": -1.0}, {"bm25_k1": "1.2"}, {"bm25_k1": True},
                                 {"bm25_b": 1.5}, {"bm25_b": float("nan")}, {"fusion_weight": True},
                                 {"fusion_weight": 1.5}, {"fusion_weight": "0.5"}, {"bm25_b": Fraction(1, 2)}])
def test_bm25_settings_of_training_are_checked(bad):
    from projhead.config import TrainConfig, TrainError

    with pytest.raises(TrainError, match=f"training setting {next(iter(bad))} must be"):
        TrainConfig(**bad)
    cfg = TrainConfig(fusion_weight=np.float32(0.5), bm25_k1=np.int64(1), bm25_b=np.float64(0.5))  # numpy's: floats
    assert [type(v) for v in (cfg.fusion_weight, cfg.bm25_k1, cfg.bm25_b)] == [float] * 3


def test_cli_train_takes_bm25_as_the_search_engine_runs_it(tmp_path, capsys):
    from projhead.cli import main

    path = tmp_path / "repeated.h5"
    _repeated_words_cache(path)
    args = ["train", str(path), "--kind", "linear", "--towers", "query", "--epochs", "2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "h"), "--bm25", "1.2", "0.75"]) == 0
    spec = load_head(tmp_path / "h").fusion
    assert (spec.bm25.k1, spec.bm25.b) == (1.2, 0.75)
    assert main(args + ["--out", str(tmp_path / "bad"), "--bm25", "1.2", "2"]) != 0
    assert "--bm25" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "one"), "--no-auto", "--bm25", "0.9", "0.3"]) == 0
    spec = load_head(tmp_path / "one").fusion  # one configuration chooses no weight, but keeps the BM25 given
    assert (spec.bm25.k1, spec.bm25.b, spec.chosen["bm25"]) == (0.9, 0.3, "as set")
    capsys.readouterr()
    assert main(["eval", str(path), "--head", str(tmp_path / "one"), "--bm25"]) == 0
    assert "dense weight 0.8 (default; BM25 as saved with the head)" in capsys.readouterr().out


def test_hybrid_held_out_queries_are_ranked_with_the_bm25_of_the_configuration(tmp_path):
    from projhead.batches import held_out
    from projhead.config import TrainConfig

    cache = _repeated_words_cache(tmp_path / "repeated.h5")
    rows = np.arange(0, len(cache.q2c), 2)
    dense = cache.queries[rows] @ cache.contexts.T
    got = {}
    for k1, b in ((1.5, 0.75), (0.5, 0.75)):
        dev = held_out(cache, rows, TrainConfig(hybrid=True, fusion_weight=0.4, bm25_k1=k1, bm25_b=b))
        bm = bm25_scorer(cache.query_texts, cache.context_texts, BM25Settings(k1=k1, b=b))(rows)
        got[k1] = dev.ranks(None)
        np.testing.assert_array_equal(got[k1], _reference_ranks(fuse(dense, bm, weight=0.4), cache.q2c[rows]))
    assert not np.array_equal(got[1.5], got[0.5])  # the two BM25s rank these queries differently
