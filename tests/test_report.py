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


def test_the_report_agrees_with_the_table_on_ties_corpus_rows_and_a_query_s_own_text(tmp_path):
    """Contexts that share a vector (a tie with the gold counts against it), corpus rows (said
    as such, not counted as contexts) and a query that is also a context (never its own answer):
    the report's counts are the table's, through the CLI and through write_report alone."""
    import numpy as np

    from conftest import PlantedEncoder, planted_pairs
    from projhead.cache import build_cache
    from projhead.corpus import CorpusFile, with_corpus
    from projhead.data import Pairs
    from projhead.evaluate import evaluate_cache
    from projhead.heads import Head, load_head
    from projhead.report import write_report

    p = planted_pairs(n_groups=6, contexts_per_group=2)
    queries = p.queries + [p.contexts[3]]  # a query whose own text is a context
    q2c = np.concatenate([p.q2c, [2]]).astype(np.int64)
    pairs = Pairs(queries, [f"id{i}" for i in range(len(queries))], p.groups + ["article 1"], p.contexts, q2c, p.meta)
    enc = PlantedEncoder(pairs)
    enc.table[("context", p.contexts[1])] = enc.table[("context", p.contexts[0])]  # ties with a gold
    (tmp_path / "more.txt").write_text("".join(f"other {i}\n" for i in range(7)))
    build_cache(pairs, enc, tmp_path / "c.h5", progress=False, corpus=CorpusFile(tmp_path / "more.txt"))
    torch_head = Head(HeadConfig(kind="linear", towers="query", in_dim=16))
    torch_head.query.weight.data += 0.3  # a head that changes the answers
    torch_head.save(tmp_path / "h")
    out = tmp_path / "r"
    assert main(["eval", str(tmp_path / "c.h5"), "--head", str(tmp_path / "h"), "--report", str(out), "--bm25",
                 "--json-out", str(tmp_path / "r.json")]) == 0
    assert (f"{len(q2c)} queries, {len(p.contexts)} distinct contexts + 7 corpus texts (distractors"
            in (out / "report.md").read_text())
    head = load_head(tmp_path / "h")
    c = with_corpus(open_cache(tmp_path / "c.h5"))
    write_report(c, head, tmp_path / "api", evaluate_cache(c, head=head), head_path=tmp_path / "h")  # the README's call
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    for report_dir in (out, tmp_path / "api"):
        rep = json.loads((report_dir / "report.json").read_text())
        change = results["head"]["full_corpus"]["R@1"] - results["frozen"]["full_corpus"]["R@1"]
        assert rep["wins"] - rep["losses"] == pytest.approx(change * len(q2c), abs=1e-6), report_dir
    assert results["frozen"]["full_corpus"]["R@1"] < 1  # the ties and the own text are in play


def test_a_report_that_fails_leaves_the_folder_as_it_was_and_an_empty_curve_is_not_drawn(planted_cache, tmp_path,
                                                                                           monkeypatch):
    import projhead.report as report

    path = planted_cache(n_groups=10)
    train_head(path, HeadConfig(kind="linear", towers="query"), TrainConfig(epochs=2, batch_size=32, dev_fraction=0),
               out=tmp_path / "head", progress=False)  # no held-out queries: a loss curve alone
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("an earlier report")
    (out / "notes.txt").write_text("mine")

    def boom(*a, **k):
        raise RuntimeError("SVD did not converge")
    monkeypatch.setattr(report, "_pca2", boom)
    with pytest.raises(RuntimeError):
        main(["eval", str(path), "--head", str(tmp_path / "head"), "--report", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md"]
    assert (out / "report.md").read_text() == "an earlier report"
    with pytest.raises(RuntimeError):  # a folder that was not there is not left behind
        main(["eval", str(path), "--head", str(tmp_path / "head"), "--report", str(tmp_path / "new")])
    assert sorted(p.name for p in tmp_path.iterdir() if "new" in p.name or "report.tmp" in p.name) == []
    monkeypatch.undo()
    assert main(["eval", str(path), "--head", str(tmp_path / "head"), "--report", str(out)]) == 0
    assert "## Training" in (out / "report.md").read_text() and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if "report.tmp" in p.name]
    log = json.loads((tmp_path / "head" / "train_log.json").read_text())
    assert report.plot_log({**log, "epochs": []}, tmp_path / "none.png", "mrr10") is None  # nothing trained


def test_an_example_shows_what_the_counts_judged_a_tie_with_the_gold_included():
    import numpy as np

    from projhead.report import _answer

    class Cache:
        q2c = np.array([0, 1])
        context_texts = ["gold of q0", "gold of q1", "ties with q0's gold"]

    C = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # context 2 ties with context 0
    Q = np.array([[1.0, 0.0], [0.0, 1.0]])
    none = np.array([-1, -1])
    assert _answer(Cache, 0, Q, C, 1, none) == "ties with q0's gold"  # ranked wrong: not the gold (argmax's pick)
    assert _answer(Cache, 1, Q, C, 0, none) == "gold of q1"
    assert _answer(Cache, 0, Q * np.nan, C, 1, none) == "(scores not finite)"
    assert _answer(Cache, 0, Q, C, 1, np.array([2, -1])) == "gold of q1"  # never the query's own text
