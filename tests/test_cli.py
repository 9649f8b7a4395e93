"""The whole CLI in-process: cache -> info -> train -> eval on tiny data."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import FIXTURES, as_format_2
from projhead.cli import main
from projhead.encoders import cpu_flags


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
    ran = "bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "fp32"  # --precision auto
    assert f"{cache.relative_to(tmp_path)}: wrote 5 query and 4 context vectors (dim 384, float32, encoded in {ran})" in out
    assert main(["cache", "--split", "train", "--data", str(data), "--quiet"]) == 0
    assert "already complete with these settings; nothing to do" in capsys.readouterr().out

    assert main(["info", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "st:all-MiniLM-L6-v2" in out and "dim 384, float32, normalised: True" in out and "4 distinct" in out
    assert main(["info", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_queries"] == 5

    assert main(["train", str(cache), "--out", "head", "--no-auto", "--epochs", "2", "--batch-size", "4",
                 "--dev-fraction", "0.5", "--quiet"]) == 0
    assert "dev mrr10 frozen" in capsys.readouterr().out
    for f in ("config.json", "model.safetensors", "README.md", "train_log.json", "training_curve.png"):
        assert (tmp_path / "head" / f).is_file()
    # the last line speaks of the head as saved: a kept head's score after the frozen one; for the
    # identity the frozen score alone (a rejected head's gain is in the reason it gives)
    quick = ["--no-auto", "--epochs", "2", "--batch-size", "4", "--quiet"]
    assert main(["train", str(cache), "--out", "kept", "--dev-fraction", "0", *quick]) == 0  # kept untested
    assert "kept epoch" in (out := capsys.readouterr().out) and "not judged by held-out queries" in out
    assert "nan" not in out
    assert main(["train", str(cache), "--out", "same", "--alpha", "0", "--dev-fraction", "0.5", *quick]) == 0
    out = capsys.readouterr().out  # alpha 0 is the frozen encoder: never a gain above 0
    assert "kept the frozen encoder (identity head)" in out and "dev mrr10 frozen " in out and "-> head" not in out

    assert main(["eval", str(cache), "--head", "head", "--bm25", "--json-out", "res.json"]) == 0
    out = capsys.readouterr().out
    assert "| frozen |" in out and "| head |" in out and "| bm25 |" in out
    res = json.loads((tmp_path / "res.json").read_text())["results"]
    assert set(res) == {"frozen", "head", "bm25", "frozen+bm25", "head+bm25", "rrf"}
    assert set(res["frozen"]) == {"out_of_500", "full_corpus"}
    # the JSON holds what the library computes for this head on this cache, number for number
    from projhead.cache import open_cache
    from projhead.evaluate import evaluate_cache
    from projhead.heads import load_head

    again = evaluate_cache(open_cache(cache), head=load_head(tmp_path / "head"))
    assert res["head"] == again["head"] and res["frozen"] == again["frozen"]


def test_precision_is_recorded_shown_and_part_of_the_cache_identity(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "squad-v1.1-tiny.json", tmp_path / "dev-v1.1.json")
    args = ["cache", "--data", str(tmp_path), "--out", "c.h5", "--quiet"]
    assert main(args + ["--precision", "bf16"]) == 0
    assert "(dim 384, float32, encoded in bf16)" in capsys.readouterr().out
    assert main(["info", "c.h5"]) == 0
    assert "precision    bf16 (the encoder's arithmetic; vectors stored as float32)" in capsys.readouterr().out
    before = (tmp_path / "c.h5").read_bytes()
    assert main(args + ["--precision", "fp32"]) == 2  # other arithmetic, other vectors: not the same work
    err = capsys.readouterr().err
    assert "c.h5: exists and holds other work (settings:" in err and "'precision': 'bf16'" in err
    assert (tmp_path / "c.h5").read_bytes() == before

    # a head trained on the bf16 cache runs behind an encoder of any precision
    import projhead
    from projhead.cache import open_cache

    projhead.train_head("c.h5", projhead.HeadConfig(kind="linear"), projhead.TrainConfig(epochs=1, batch_size=2,
                        dev_fraction=0), out="h", progress=False)
    assert projhead.load_head("h").info["encoder_build"]["precision"] == "bf16"
    assert "encoded in bf16" in (tmp_path / "h" / "README.md").read_text()
    model = projhead.EncodedHead("h", device="cpu", precision="fp32")
    assert model.encoder.precision == "fp32"
    c = open_cache("c.h5")
    texts = [t.decode() if isinstance(t, bytes) else t for t in c.context_texts]
    fp32 = model.encode_contexts(texts)  # (4, 384) from fp32 arithmetic, bf16 vectors in the cache
    from_cache = model.head.encode_contexts(c.contexts)
    cos = (fp32 * from_cache).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(from_cache, axis=1)
    assert cos.min() > 0.995


def test_cache_written_before_precision_was_recorded_reads_as_fp32(tmp_path, capsys, monkeypatch):
    import h5py

    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURES / "squad-v1.1-tiny.json", tmp_path / "dev-v1.1.json")
    args = ["cache", "--data", str(tmp_path), "--out", "c.h5", "--quiet", "--precision", "fp32"]
    assert main(args) == 0
    as_format_2(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r+") as f:  # as an older projhead wrote it
        info = json.loads(f.attrs["encoder_json"])
        del info["settings"]["precision"], info["build"]["precision"]
        f.attrs["encoder_json"] = json.dumps(info)
    capsys.readouterr()
    assert main(args) == 0
    assert ("already complete with these settings; nothing to do (cache format 2, whose texts and attributes HDF5 "
            "cannot checksum: `projhead upgrade c.h5` rewrites it in format 3 without encoding anything)"
            ) in capsys.readouterr().out
    assert main(["info", "c.h5"]) == 0
    assert "format projhead-cache v2" in capsys.readouterr().out
    assert main(["upgrade", "c.h5"]) == 0
    assert "c.h5: format 2 rewritten in format 3" in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("already complete with these settings; nothing to do")
    assert main(["upgrade", "c.h5"]) == 0
    assert "c.h5: already format 3; nothing to do" in capsys.readouterr().out
    assert main(["info", "c.h5"]) == 0
    assert "precision    fp32" in capsys.readouterr().out


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
    one = model.encode_queries(pairs.queries[0])  # one text: one vector, not one per character
    np.testing.assert_allclose(one, head.encode_queries(c.queries)[0], atol=1e-5)
    with pytest.raises(TypeError, match="not bytes"):
        model.encode_contexts(pairs.contexts[0].encode())


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


@pytest.mark.parametrize("argv, message", [
    (["train", "{cache}", "--out", "h", "--lr", "-1"], "Invalid value for '--lr'"),
    (["train", "{cache}", "--out", "h", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["train", "{cache}", "--out", "h", "--dev-fraction", "1.5"], "Invalid value for '--dev-fraction'"),
    (["train", "{cache}", "--out", "h", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["train", "{cache}", "--out", "h", "--alpha", "2"], "Invalid value for '--alpha'"),
    (["eval", "{cache}", "--block", "0"], "Invalid value for '--block'"),
    (["eval", "{cache}", "--fusion-weight", "0.3"], "set the fusion with BM25: pass --bm25"),
    (["cache", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["mine", "{cache}", "--k", "0"], "Invalid value for '--k'"),
    (["cache", "--dataset", "jsonl", "--data", "{cache}", "--turns", "1"], "--turns are QuAC's dialog turns"),
    (["cache", "--quac-history", "2"], "they go with --dataset quac"),
    (["cache", "--dataset", "quac", "--quac-history", "2", "--turns", "1"], "--quac-history and --turns: one or the other"),
    (["train", "{cache}", "--out", "h", "--no-auto", "--device", "banana"], "training setting device must be a torch"),
    (["eval", "{cache}", "--index", "IVF1024,Flat"], "IVF1024,Flat"),
    (["train", "{cache}", "--out", "h", "--no-auto", "--after-folds", "average", "--no-gate"],
     "--after-folds average, --no-gate: settings of model selection"),
    (["train", "{cache}", "--out", "h", "--no-auto", "--no-recipe"], "--no-recipe: settings of model selection"),
    (["train", "{cache}", "--out", "h", "--corpus-sample", "100"], "has no corpus section to sample"),
    (["train", "{cache}", "--out", "h", "--no-auto", "--stream", "--corpus-sample", "5"], "--stream ranks its dev split"),
    (["eval", "{cache}", "--corpus-sample", "10"], "has no corpus section (projhead cache --corpus FILE adds one)"),
])
def test_bad_arguments_name_the_option_without_a_traceback(planted_cache, tmp_path, capsys, argv, message):
    cache = planted_cache(n_groups=2)
    assert main([a.format(cache=cache) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "h").exists()  # nothing was written


def test_eval_of_several_caches_shows_every_change(planted_cache, tmp_path, capsys):
    from projhead.heads import HeadConfig
    from projhead.train import TrainConfig, train_head

    a, b = planted_cache("a.h5", n_groups=20), planted_cache("b.h5", n_groups=10, rotate=0.0)
    train_head(a, HeadConfig(kind="linear"), TrainConfig(epochs=3, lr=0.05, decision="better"), out=tmp_path / "h",
               progress=False)
    assert main(["eval", str(a), str(b), "--head", str(tmp_path / "h"), "--json-out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "head - frozen, points:" in out and f"| {a} |" in out and f"| {b} |" in out
    assert set(json.loads((tmp_path / "r.json").read_text())["caches"]) == {str(a), str(b)}
    # a corpus sample across caches, one of which has a corpus: that one is sampled, the other ranks its contexts
    from conftest import PlantedEncoder, planted_pairs
    from projhead.cache import build_cache
    from projhead.corpus import CorpusFile

    pairs = planted_pairs(n_groups=10)
    (tmp_path / "more.txt").write_text("".join(f"other text {i}\n" for i in range(30)))
    build_cache(pairs, PlantedEncoder(pairs), tmp_path / "c.h5", progress=False, corpus=CorpusFile(tmp_path / "more.txt"))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "c.h5"), str(b), "--corpus-sample", "10"]) == 0
    out = capsys.readouterr().out
    assert "+ 10 corpus texts" in out and "+ 0 corpus texts" in out
    assert main(["eval", str(a), str(b), "--corpus-sample", "10"]) == 2
    assert "none of the caches has a corpus section" in capsys.readouterr().err


def test_help_and_info_start_without_torch(planted_cache):
    """`projhead --help` and `projhead info` need no torch: they start fast (bench_startup.py)."""
    import subprocess
    import sys

    path = planted_cache()
    probe = ("import sys; from projhead.cli import main\n"
             "for argv in (['--help'], ['cache', '--help'], ['train', '--help'], ['info', sys.argv[1]]):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr
    assert "encoder" in res.stdout and "--precision" in res.stdout


def test_lr_help_says_the_defaults_each_mode_uses(capsys):
    from projhead.config import TrainConfig
    from projhead.select import CANDIDATES

    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split()).replace("--no- auto", "--no-auto")  # wrapped at a hyphen
    lrs = {h["kind"]: t["lr"] for _, h, t in CANDIDATES}
    assert (f"[model selection: {lrs['linear']:g} for linear heads, {lrs['residual']:g} for others; "
            f"--no-auto: {TrainConfig.lr:g}]") in out


def test_restart_is_refused_in_model_selection(planted_cache, tmp_path, capsys):
    assert main(["train", str(planted_cache()), "--out", str(tmp_path / "h"), "--restart"]) == 2
    assert "model selection writes none" in capsys.readouterr().err


def test_settings_model_selection_does_not_use_are_printed(planted_cache, tmp_path, capsys):
    assert main(["train", str(planted_cache(n_groups=10)), "--out", str(tmp_path / "h"), "--patience", "3",
                 "--epochs", "2", "--kind", "linear", "--towers", "query", "--quiet"]) == 0
    assert "not used: patience 3: in 5-fold selection" in capsys.readouterr().err


def test_the_last_line_of_train_gives_a_gain_once_and_only_a_kept_heads_score():
    from types import SimpleNamespace

    from projhead.train import summary_line

    def head(passthrough):
        return SimpleNamespace(config=SimpleNamespace(passthrough=passthrough), gate=None, changes_contexts=lambda: False,
                               info={"metrics": {"frozen": {"mrr10": 0.5}, "head": {"mrr10": 0.6}}})

    gain = {"gain": 0.01, "low": 0.0035, "high": 0.0183}
    base = {"best_epoch": 3, "seconds": 1.0}
    kept = summary_line("h", head(False), {**base, "decision": {"dev_gain": gain}}, "mrr10")
    assert "kept epoch 3; dev mrr10 frozen 0.5000 -> head 0.6000, gain +0.0100 (95% interval +0.0035 to +0.0183)" in kept
    few = summary_line("h", head(True), {**base, "decision": {"dev_gain": gain, "why": "the pairs come from 3 document(s)"}},
                       "mrr10")  # a reason without the gain: the rejected head's gain still said
    assert "dev mrr10 frozen 0.5000, the rejected head: gain +0.0100 (95% interval" in few and "-> head" not in few
    why = "dev mrr10 gain +0.0100 (95% interval +0.0035 to +0.0183) is not above 0"
    once = summary_line("h", head(True), {**base, "decision": {"dev_gain": gain, "why": why}}, "mrr10")
    assert once.count("95% interval") == 1 and "dev mrr10 frozen 0.5000 (1.0s)" in once
    fused = summary_line("h", head(False), {**base, "decision": {"dev_gain": gain}, "selection": {"hybrid": {}}},
                         "mrr10")  # --hybrid: held-out queries ranked fused, the frozen encoder's score too
    assert "dev mrr10 frozen + BM25 0.5000 -> head 0.6000" in fused


def test_a_head_trained_without_held_out_queries_says_so_instead_of_nan(planted_cache, tmp_path, capsys):
    assert main(["train", str(planted_cache()), "--out", str(tmp_path / "h"), "--no-auto", "--dev-fraction", "0",
                 "--epochs", "1", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "kept epoch 1; not judged by held-out queries: dev_fraction 0 (--dev-fraction 0) holds out no queries" in line
    assert "nan" not in line
    one = planted_cache("one.h5", n_groups=1, contexts_per_group=1)  # one context: no held-out split at all
    assert main(["train", str(one), "--out", str(tmp_path / "i"), "--no-auto", "--dev-fraction", "0.2", "--epochs",
                 "1", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "identity head): the dev split holds no queries" in line and "not judged" not in line  # said once


def test_dense_only_reaches_selection_and_is_refused_with_hybrid(planted_cache, tmp_path, capsys):
    path = planted_cache(n_groups=20)
    assert main(["train", str(path), "--out", str(tmp_path / "h"), "--dense-only", "--hybrid"]) != 0
    assert "--dense-only or --hybrid" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(tmp_path / "n"), "--dense-only", "--no-auto"]) == 2
    assert "--dense-only is a setting of model selection" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(tmp_path / "d"), "--dense-only", "--epochs", "2", "--quiet"]) == 0
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["training"]["dense_only"] is True and "fused_gain" not in cfg["decision"]
    assert "against_frozen" not in cfg.get("fusion", {}).get("chosen", {})


@pytest.mark.parametrize("no_auto", [False, True])
def test_train_never_writes_a_head_over_other_files(planted_cache, tmp_path, capsys, no_auto):
    """--out of a folder holding the user's files is refused before training; a head's own
    folder (trained again) and a new or empty folder are fine."""
    path = planted_cache(n_groups=10)
    mode = ["--no-auto"] if no_auto else []
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    assert main(["train", str(path), "--out", str(mine), "--epochs", "1", *mode]) == 2
    err = capsys.readouterr().err
    assert f"{mine}: holds files that are not a projhead head (README.md)" in err and "Traceback" not in err
    assert [p.name for p in mine.iterdir()] == ["README.md"] and (mine / "README.md").read_text() == "my notes"
    (tmp_path / "empty").mkdir()
    (tmp_path / "killed").mkdir()  # a run killed while writing its first checkpoint left a temporary file
    (tmp_path / "killed" / "checkpoint.safetensors.tmp12345").write_bytes(b"half")
    (tmp_path / "shown").mkdir()  # an empty folder a desktop has shown
    for name in (".DS_Store", "._.DS_Store", "Desktop.ini"):
        (tmp_path / "shown" / name).write_bytes(b"\0\0\0\1Bud1")
    for out in (tmp_path / "empty", tmp_path / "killed", tmp_path / "shown", tmp_path / "new", tmp_path / "new"):
        assert main(["train", str(path), "--out", str(out), "--epochs", "1", *mode]) == 0


def test_head_settings_are_checked_against_the_cache_dimension(planted_cache, tmp_path, capsys):
    """A residual head of the cache's own dimension is what was asked for: not refused against 384."""
    assert main(["train", str(planted_cache(dim=16)), "--out", str(tmp_path / "h"), "--no-auto", "--kind", "residual",
                 "--out-dim", "16", "--epochs", "1"]) == 0
    assert main(["train", str(planted_cache(dim=16)), "--out", str(tmp_path / "h2"), "--no-auto", "--kind", "residual",
                 "--out-dim", "8", "--epochs", "1"]) == 2
    assert "out_dim 8 != in_dim 16" in capsys.readouterr().err


def test_a_file_that_cannot_be_written_is_one_line(planted_cache, tmp_path, capsys):
    """An OS error (here: --json-out under a path that is a file) names the path, no traceback."""
    (tmp_path / "afile").write_text("")
    assert main(["eval", str(planted_cache()), "--json-out", str(tmp_path / "afile" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "afile" in err and "Traceback" not in err


def test_the_default_batching_given_changes_nothing_on_a_cache_without_turns(planted_cache, tmp_path):
    """--batching goes into selection's fixed settings only for the dialog candidates (turns);
    elsewhere giving the default is not giving a setting: the recipe is judged as without it."""
    cache = planted_cache(n_groups=20)
    judged = []
    for extra in ([], ["--batching", "group"]):
        out = tmp_path / f"h{len(extra)}"
        assert main(["train", str(cache), "--out", str(out), "--quiet", "--seed", "0"] + extra) == 0
        judged.append(json.loads((out / "train_log.json").read_text())["selection"]["recipe"].get("not_tried"))
    assert judged == [None, None]


def test_quiet_cache_prints_no_progress_bar_not_even_the_model_loaders(tmp_path, capfd):
    from transformers.utils import logging as transformers_logging

    (tmp_path / "p.jsonl").write_text(json.dumps({"query": "who wrote hamlet?", "context": "Hamlet is a play."}) + "\n")
    assert transformers_logging.is_progress_bar_enabled()
    capfd.readouterr()
    assert main(["cache", "--dataset", "jsonl", "--data", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "in.h5"),
                 "--quiet"]) == 0  # in-process, the libraries already imported
    err = capfd.readouterr().err
    assert "it/s]" not in err and "texts/s]" not in err, err
    assert transformers_logging.is_progress_bar_enabled() and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # as before
    from huggingface_hub import utils as hub  # a user's own choice stays: the hub's bars off, transformers' on

    hub.disable_progress_bars()
    try:
        assert main(["cache", "--dataset", "jsonl", "--data", str(tmp_path / "p.jsonl"), "--out",
                     str(tmp_path / "in2.h5"), "--quiet"]) == 0
        assert hub.are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()
    finally:
        hub.enable_progress_bars()


def test_quiet_cache_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    (tmp_path / "p.jsonl").write_text(json.dumps({"query": "who wrote hamlet?", "context": "Hamlet is a play."}) + "\n")
    for quiet, bars in ((["--quiet"], False), ([], True)):
        out = tmp_path / f"c{len(quiet)}.h5"
        r = subprocess.run([sys.executable, "-m", "projhead.cli", "cache", "--dataset", "jsonl", "--data",
                            str(tmp_path / "p.jsonl"), "--out", str(out), *quiet], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr
        assert ("it/s]" in r.stderr or "texts/s]" in r.stderr) == bars, r.stderr  # tqdm's rate, any bar
