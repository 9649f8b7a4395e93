"""The whole CLI in-process: cache -> info -> train -> eval on tiny data."""
import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from projhead.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("cache", "info", "train", "eval"):
        assert cmd in out
    assert main(["cache", "--help"]) == 0
    assert "--granularity" in capsys.readouterr().out


def test_end_to_end_with_minilm(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "squad-v1.1-tiny.json", data / "train-v1.1.json")
    shutil.copy(FIXTURES / "squad-v1.1-tiny.json", data / "dev-v1.1.json")
    assert main(["cache", "--split", "train", "--data", str(data), "--quiet"]) == 0
    out = capsys.readouterr().out
    cache = tmp_path / "cache" / "squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5"
    assert f"{cache.relative_to(tmp_path)}: wrote 5 query and 4 context vectors (dim 384, float32)" in out
    assert main(["cache", "--split", "train", "--data", str(data), "--quiet"]) == 0
    assert "already complete with these settings; nothing to do" in capsys.readouterr().out

    assert main(["info", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "st:all-MiniLM-L6-v2" in out and "dim 384, float32, normalised: True" in out and "4 distinct" in out
    assert main(["info", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_queries"] == 5

    assert main(["train", str(cache), "--out", "head", "--epochs", "2", "--batch-size", "4",
                 "--dev-fraction", "0.5", "--quiet"]) == 0
    assert "dev mrr10 frozen" in capsys.readouterr().out
    for f in ("config.json", "model.safetensors", "README.md", "train_log.json", "training_curve.png"):
        assert (tmp_path / "head" / f).is_file()

    assert main(["eval", str(cache), "--head", "head", "--bm25", "--json-out", "res.json"]) == 0
    out = capsys.readouterr().out
    assert "| frozen |" in out and "| head |" in out and "| bm25 |" in out
    res = json.loads((tmp_path / "res.json").read_text())["results"]
    assert set(res) == {"frozen", "head", "bm25"}
    assert set(res["frozen"]) == {"out_of_500", "full_corpus"}
    assert 0 <= res["head"]["out_of_500"]["top1"] <= 1


def test_encoded_head_puts_the_head_behind_the_encoder(tmp_path, minilm):
    import projhead
    from projhead.cache import build_cache, open_cache
    from projhead.data import load_jsonl

    pairs = load_jsonl(FIXTURES / "pairs-tiny.jsonl")
    build_cache(pairs, minilm, tmp_path / "c.h5", progress=False)
    head, _ = projhead.train_head(tmp_path / "c.h5", projhead.HeadConfig(kind="residual", init="random"),
                                  projhead.TrainConfig(epochs=1, batch_size=2, dev_fraction=0),
                                  out=tmp_path / "h", progress=False)
    model = projhead.EncodedHead(tmp_path / "h", encoder=minilm)
    c = open_cache(tmp_path / "c.h5")
    np.testing.assert_allclose(model.encode_queries(pairs.queries), head.encode_queries(c.queries), atol=1e-5)
    np.testing.assert_allclose(model.encode_contexts(pairs.contexts), head.encode_contexts(c.contexts), atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["cache", "--dataset", "jsonl", "--data", "missing.jsonl"], "missing.jsonl: no such file"),
    (["cache", "--dataset", "jsonl", "--data", "bad.jsonl"], "bad.jsonl: line 1: malformed JSON"),
    (["cache", "--dataset", "jsonl", "--data", "ok.jsonl", "--encoder", "word2vec"], "unknown encoder 'word2vec'"),
    (["info", "nothing.h5"], "nothing.h5: no such cache file"),
    (["eval", "nothing.h5"], "nothing.h5: no such cache file"),
    (["eval", "text.h5"], "text.h5: not a readable HDF5 file"),
])
def test_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"query": \n')
    (tmp_path / "text.h5").write_text("not hdf5")
    shutil.copy(FIXTURES / "pairs-tiny.jsonl", tmp_path / "ok.jsonl")
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err


def test_unknown_loss_is_a_usage_error(capsys):
    assert main(["train", "x.h5", "--out", "h", "--loss", "magic"]) == 2
    assert "'magic' is not one of" in capsys.readouterr().err
