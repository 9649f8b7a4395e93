"""projhead eval --report: the files, and numbers that agree with the metrics."""
import json

import pytest

from projhead.cache import open_cache
from projhead.cli import main
from projhead.heads import HeadConfig
from projhead.train import TrainConfig, train_head


def test_report_writes_plots_and_consistent_examples(planted_cache, tmp_path):
    path = planted_cache(n_groups=30)
    train_head(path, HeadConfig(kind="linear", towers="query"),
               TrainConfig(epochs=5, batch_size=64, lr=0.02, patience=5), out=tmp_path / "head", progress=False)
    out = tmp_path / "report"
    assert main(["eval", str(path), "--head", str(tmp_path / "head"), "--bm25", "--report", str(out),
                 "--json-out", str(tmp_path / "r.json")]) == 0
    for name in ("report.md", "training_curve.png", "recall_at_k.png", "top1_similarity.png", "towers_2d.png"):
        assert (out / name).stat().st_size > 500, name
    md = (out / "report.md").read_text()
    assert "### Wins" in md and "![recall at k](recall_at_k.png)" in md
    rep = json.loads((out / "report.json").read_text())
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    n = len(open_cache(path).q2c)
    # wins - losses is exactly the change in full-corpus R@1
    delta = res["head"]["full_corpus"]["R@1"] - res["frozen"]["full_corpus"]["R@1"]
    assert rep["wins"] - rep["losses"] == pytest.approx(delta * n, abs=1e-6)
    assert rep["wins"] > rep["losses"]


def test_report_needs_a_head(planted_cache, tmp_path):
    assert main(["eval", str(planted_cache(n_groups=4)), "--report", str(tmp_path / "r")]) == 2
