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
