"""Metrics against a slow reference written straight from the protocol's definition."""
import math

import numpy as np
import pytest

from projhead.evaluate import dense_scorer, full_corpus, out_of_n


def _case(seed=0, nq=1234, nc=300, d=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(nq, d)).astype(np.float32)
    c = rng.normal(size=(nc, d)).astype(np.float32)
    q2c = rng.integers(0, nc, size=nq)
    q[: nq // 2] += 2 * c[q2c[: nq // 2]]  # half the queries point at their gold context
    return q, c, q2c


def slow_out_of_n(q, c, q2c, n):
    hits = {1: 0, 5: 0, 10: 0}
    rr = 0.0
    for start in range(0, len(q), n):
        block = range(start, min(start + n, len(q)))
        cands = sorted({int(q2c[i]) for i in block})
        for i in block:
            gold = float(q[i] @ c[q2c[i]])
            rank = sum(1 for j in cands if j != q2c[i] and float(q[i] @ c[j]) >= gold)
            for k in hits:
                hits[k] += rank < k
            rr += 1 / (rank + 1) if rank < 10 else 0
    return {f"top{k}": v / len(q) for k, v in hits.items()} | {"mrr10": rr / len(q)}


def slow_full(q, c, q2c):
    out = {"R@1": 0, "R@5": 0, "R@10": 0, "R@100": 0, "MRR@10": 0.0, "nDCG@10": 0.0}
    for i in range(len(q)):
        s = c @ q[i]
        rank = sum(1 for j in range(len(c)) if j != q2c[i] and s[j] >= s[q2c[i]])
        for k in (1, 5, 10, 100):
            out[f"R@{k}"] += rank < k
        if rank < 10:
            out["MRR@10"] += 1 / (rank + 1)
            out["nDCG@10"] += 1 / math.log2(rank + 2)
    return {k: v / len(q) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_out_of_n_matches_slow_reference(seed):
    q, c, q2c = _case(seed)
    got = out_of_n(dense_scorer(q, c), q2c, n=500)
    want = slow_out_of_n(q, c, q2c, 500)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.1 < got["top1"] < 0.9  # the case is neither trivial nor hopeless


def test_full_corpus_matches_slow_reference():
    q, c, q2c = _case(2, nq=400)
    assert full_corpus(dense_scorer(q, c), q2c, chunk=64) == pytest.approx(slow_full(q, c, q2c), abs=1e-12)


def test_ties_count_against_the_gold_context():
    q = np.ones((4, 3), np.float32)
    c = np.ones((4, 3), np.float32)
    r = out_of_n(dense_scorer(q, c), np.arange(4), n=500)
    assert r["top1"] == 0.0 and r["top5"] == 1.0


def test_bm25_scorer_ranks_lexical_match_first():
    from projhead.evaluate import bm25_scorer

    contexts = ["the cat sat on the mat", "dogs bark at night", "stock markets fell sharply"]
    s = bm25_scorer(["why do dogs bark", "what did the markets do"], contexts)(np.array([0, 1]))
    assert s.shape == (2, 3) and s[0].argmax() == 1 and s[1].argmax() == 2


def test_bm25_query_of_stopwords_only_scores_zero():
    from projhead.evaluate import bm25_scorer

    contexts = ["Dogs bark at night.", "Markets fell on Monday."]
    s = bm25_scorer(["What is it?", "why do dogs bark"], contexts)(np.array([0, 1]))
    assert (s[0] == 0).all() and s[1, 0] > 0


def test_a_non_finite_gold_score_is_a_miss_not_a_hit():
    from projhead.evaluate import MISS, full_corpus, gold_ranks, out_of_n

    scores = np.array([[0.1, np.nan, 0.3], [np.nan, np.nan, np.nan], [0.9, 0.2, np.inf], [0.1, 0.5, 0.2]])
    r = gold_ranks(scores, np.array([1, 0, 2, 1]))
    assert r.tolist() == [MISS, MISS, MISS, 0]  # never counted as found, at any depth
    nan_scorer = lambda rows, cols=None: np.full((len(rows), 4 if cols is None else len(cols)), np.nan)  # noqa: E731
    q2c = np.array([0, 1, 2, 3])
    assert out_of_n(nan_scorer, q2c) == {"top1": 0.0, "top5": 0.0, "top10": 0.0, "mrr10": 0.0}
    assert full_corpus(nan_scorer, q2c)["MRR@10"] == 0.0 and full_corpus(nan_scorer, q2c)["nDCG@10"] == 0.0


def test_a_query_never_retrieves_its_own_text():
    from projhead.evaluate import excluding, full_corpus, self_matches

    # query 0's text is context 1; its gold is context 0, scored below itself
    ex = self_matches(["a", "zz"], ["b", "a", "c"])
    assert ex.tolist() == [1, -1]
    scorer = lambda rows, cols=None: np.array([[0.5, 1.0, 0.1], [0.1, 0.2, 0.9]])[rows][:, slice(None) if cols is None else cols]  # noqa: E731
    q2c = np.array([0, 2])
    assert full_corpus(scorer, q2c)["R@1"] == 0.5
    assert full_corpus(excluding(scorer, ex), q2c)["R@1"] == 1.0
    # texts not kept (empty or blank) are not one text: nothing is left out for them
    assert self_matches(["", "a", "  "], ["x", "", "a", " "]).tolist() == [-1, 2, -1]


def test_paired_bootstrap_sees_a_real_gain_and_not_noise():
    from projhead.evaluate import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.random(400)
    real = paired_bootstrap(base + 0.05 + 0.01 * rng.standard_normal(400), base)
    assert real["low"] > 0 and real["gain"] == pytest.approx(0.05, abs=0.005)
    noise = paired_bootstrap(base + 0.2 * rng.standard_normal(400), base)
    assert noise["low"] < 0 < noise["high"]


def test_bm25_stems_with_the_declared_stemmer():
    from projhead.evaluate import bm25_scorer

    s = bm25_scorer(["running shoes"], ["she runs daily", "a red car", "the blue sky"])
    assert s(np.array([0]))[0].argmax() == 0  # "running" reaches "runs" only through the stemmer


def test_one_pass_gives_both_protocols_and_the_top1():
    from projhead.evaluate import corpus_metrics, block_metrics, system_ranks

    rng = np.random.default_rng(3)
    q, c = rng.normal(size=(1100, 8)).astype(np.float32), rng.normal(size=(700, 8)).astype(np.float32)
    q2c = rng.integers(0, 700, 1100)
    r = system_ranks(dense_scorer(q, c), q2c, 500)
    assert block_metrics(r.block) == out_of_n(dense_scorer(q, c), q2c, n=500)
    assert corpus_metrics(r.full) == full_corpus(dense_scorer(q, c), q2c)
    np.testing.assert_array_equal(r.top, (q @ c.T).argmax(1))


def test_out_of_n_scores_only_the_candidate_columns():
    seen = []
    q, c = np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)

    def scorer(rows, cols=None):
        seen.append(cols)
        return dense_scorer(q, c)(rows, cols)

    assert out_of_n(scorer, np.array([0, 0, 2, 2]), n=2)["top1"] == 1.0
    assert [list(x) for x in seen] == [[0], [2]]  # never all 4 contexts


def test_excluded_context_among_candidate_columns():
    from projhead.evaluate import excluding

    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    c = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    s = excluding(dense_scorer(q, c), np.array([0, -1]))
    got = s(np.array([0, 1]), np.array([2, 0, 1]))  # columns in another order
    assert np.isneginf(got[0, 1]) and np.isfinite(got[0, [0, 2]]).all() and np.isfinite(got[1]).all()


def test_top_k_lists_count_ties_against_the_gold():
    from projhead.evaluate import MISS, topk_ranks

    ids = np.array([[3, 1, 2], [3, 1, 2], [0, 4, 5]])
    scores = np.array([[0.9, 0.9, 0.5], [0.9, 0.8, 0.5], [0.9, 0.8, np.nan]], np.float32)
    # query 0: gold 1 tied with 3 listed first: rank 1 as gold_ranks gives; query 1: rank 1; query 2: absent
    np.testing.assert_array_equal(topk_ranks(ids, scores, np.array([1, 1, 7])), [1, 1, MISS])
    np.testing.assert_array_equal(topk_ranks(ids[:1], scores[:1], np.array([3])), [1])  # the tie counts both ways


def test_tables_head_their_columns_with_the_block_size_used(planted_cache):
    from projhead.cache import open_cache
    from projhead.evaluate import evaluate_cache, format_changes, format_table
    from projhead.heads import Head, HeadConfig

    cache = open_cache(planted_cache(n_groups=10))
    head = Head(HeadConfig(kind="linear", towers="query", in_dim=cache.dim))
    for block in (50, 500):
        r = evaluate_cache(cache, head=head, block=block)
        header = format_table(r).splitlines()[0]
        assert f"| {block} top1 |" in header and "| full R@1 |" in header
        assert f"| {block} top1 | {block} top10 | full R@1 |" in format_changes({"c": r}).splitlines()[0]
    assert "| 500 top1 |" not in format_table(evaluate_cache(cache, block=50)).splitlines()[0]
