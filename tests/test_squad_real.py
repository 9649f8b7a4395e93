"""The real pipeline on real data: SQuAD v1.1 dev (shared files) through the real MiniLM."""
import numpy as np
import pytest

from projhead.cache import build_cache, open_cache
from projhead.data import Pairs, load_pairs
from projhead.evaluate import evaluate_cache
from projhead.heads import HeadConfig
from projhead.train import TrainConfig, train_head


@pytest.mark.slow
def test_real_squad_subset_cache_train_eval(data_dir, minilm, tmp_path):
    full = load_pairs("squad-v1.1", "dev", "sentence", data=data_dir)
    n = 1500  # the first articles of dev, in order
    ctx, local = np.unique(full.q2c[:n], return_inverse=True)
    pairs = Pairs(full.queries[:n], full.query_ids[:n], full.groups[:n], [full.contexts[i] for i in ctx], local,
                  dict(full.meta, split="dev[:1500]"))
    build_cache(pairs, minilm, tmp_path / "dev.h5", progress=False)
    c = open_cache(tmp_path / "dev.h5")
    res = evaluate_cache(c, bm25=True)
    # MiniLM retrieves the answer sentence among a block's candidates most of the time, and
    # BM25 is strong on SQuAD: both far above chance (~1/300)
    assert res["frozen"]["out_of_500"]["top1"] > 0.5 and res["bm25"]["out_of_500"]["top1"] > 0.5
    head, log = train_head(c, HeadConfig(), TrainConfig(epochs=3, batch_size=256, dev_fraction=0.3),
                           out=tmp_path / "head", progress=False)
    after = evaluate_cache(c, head=head)
    # selection on the held-out articles never ships a head worse than frozen there
    assert head.info["metrics"]["head"]["mrr10"] >= head.info["metrics"]["frozen"]["mrr10"]
    assert set(after) == {"frozen", "head"}
