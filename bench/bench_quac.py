"""QuAC: does a head help questions that need their dialog? Frozen encoder, BM25 and the default
head (what ``projhead train`` saves) with 0, 1, 2 and all earlier turns prepended.

    PROJHEAD_DATA=../shared/data python bench/bench_quac.py [--histories 0 1 2 all] [--seeds 0 1 2]
        [--work bench/work] [--out bench/results/quac] [--curves]

Data: the QuAC validation dialogs (``--dataset quac``), split by dialog: ``val-train`` (796
dialogs) to train on, ``val-test`` (every 5th dialog, with the dialogs whose sections share a
sentence with it: 204) to score; sentence contexts (the
sentence holding each answerable turn's first reference). all-MiniLM-L6-v2. Each history
setting is its own pair of caches (the query texts change), under ``--work``.

Systems, scored on ``val-test`` by out-of-500 top-1 / top-10 (blocks of 500 consecutive
questions, candidates = their distinct gold sentences):
- ``frozen``: the encoder as it is; ``bm25``: BM25 over the same texts;
- ``head``: ``projhead.select.auto_train`` on ``val-train`` with ``TrainConfig(seed=S)``: the
  candidates' out-of-fold search and the bootstrap decision, exactly as ``projhead train``;
  mean over seeds, each seed's figures, the candidate chosen, whether a head or the identity
  was kept (and why), the best out-of-fold epoch of every candidate, training seconds.

``--curves``: why the default keeps the identity with history. For each history, fold 1 of the
5 out-of-fold folds (seed 0), the query adapter (``linear-query``, lr 1e-3, the candidates'
schedule) is trained with batches of whole dialogs (``--batching group``, the default) and
with random batches; its out-of-fold MRR@10 (against every context of ``val-train``) is printed
for every epoch (epoch 0 = frozen) and written to ``OUT-curves.json``.

``--overlap``: for each history, on ``val-train``'s frozen vectors, the mean cosine of a question
with its own gold sentence and with the gold sentence of the previous query of its dialog (turns whose golds
differ), how often the previous one is closer, and the share of ``val-test`` questions longer
than the encoder reads (its ``max_seq_length`` tokens: the end, the question itself, is cut);
written to ``OUT-overlap.json``.

Each finished (history, seed) run is kept in ``WORK/quac-runs/`` (keyed by the cache's
fingerprint, stamped with the projhead code that trained it: ``reuse.py``), so more seeds can be
added later without training the first ones again; a run of other code is trained again.
Prints one line per (history, system); writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from projhead.cache import build_cache, open_cache
from projhead.config import TrainConfig
from projhead.data import load_pairs
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import evaluate_cache
from projhead.heads import HeadConfig
from projhead.select import auto_train, group_folds
from projhead.train import fit, split_groups
from reuse import code_key, current


def quac_cache(split: str, history: str, enc, work: Path):
    pairs = load_pairs("quac", split, "sentence", quac_history=history)
    path = work / f"quac-history{history}-{split}-sentence-{enc.name.split(':', 1)[-1]}.h5"
    build_cache(pairs, enc, path, progress=False)
    return open_cache(path)


def top(m: dict) -> dict:
    return {"top1": 100 * m["out_of_500"]["top1"], "top10": 100 * m["out_of_500"]["top10"]}


def train_run(train, test, seed: int, runs: Path, done_only: bool = False) -> dict | None:
    """One auto_train run on ``train`` scored on ``test``, reused when this version of projhead
    did it already (``done_only``: None instead of training)."""
    done = runs / f"{train.attrs['fingerprint'][:16]}-{test.attrs['fingerprint'][:16]}-seed{seed}.json"
    if done.is_file():
        run = json.loads(done.read_text())
        if current(run.get("projhead_tree"), done):
            return run
    if done_only:
        return None
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    head, log = auto_train(train, TrainConfig(seed=seed), progress=True)
    seconds = time.perf_counter() - t0
    sel = log["selection"]
    run = {"seed": seed, "projhead_tree": code_key(), "train_seconds": seconds, **top(evaluate_cache(test, head=head)["head"]),
           "kept": log["decision"]["kept"], "why": log["decision"].get("why", ""), "chosen": sel.get("chosen"),
           "dev_gain": sel.get("dev_gain"),
           "candidates": [{k: c[k] for k in ("name", "best_epoch", "epochs", "score", "frozen", "batch_size")}
                          for c in sel["candidates"]]}
    runs.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(run, indent=1))
    return run


def curves(train, seed: int = 0) -> dict:
    """Out-of-fold MRR@10 per epoch of the query adapter on fold 1, group and random batches."""
    from dataclasses import replace

    from projhead.evaluate import PER_QUERY

    dev = group_folds(split_groups(train, need=5), 5, seed)[0]
    rows = (np.setdiff1d(np.arange(len(train.q2c)), dev), dev)
    hc = HeadConfig(in_dim=train.dim, encoder=train.encoder, kind="linear", towers="query")
    out = {}
    for batching in ("group", "random"):
        tc = TrainConfig(lr=1e-3, seed=seed, batching=batching).sized(len(rows[0]))
        run = fit(train, hc, replace(tc, patience=tc.epochs + 1), rows=rows, progress=False, keep_later=False)
        er = run["epoch_ranks"]
        out[batching] = [float(PER_QUERY["mrr10"](er[e]).mean()) for e in sorted(er)]
    return out


def overlap(train, test, enc) -> dict:
    """Frozen cosines of each question with its gold and with the previous turn's gold; the
    share of test questions the encoder truncates."""
    from transformers import AutoTokenizer

    info = enc.describe()
    tok = AutoTokenizer.from_pretrained(info["resolved"])
    limit = info["settings"]["max_seq_length"]
    lengths = np.array([len(ids) for ids in tok(list(test.query_texts))["input_ids"]])
    g, q, c, q2c = np.asarray(train.groups), train.queries, train.contexts, train.q2c
    rows = np.flatnonzero((g[1:] == g[:-1]) & (q2c[1:] != q2c[:-1])) + 1  # turns after a turn of the same dialog
    own, prev = (q[rows] * c[q2c[rows]]).sum(1), (q[rows] * c[q2c[rows - 1]]).sum(1)
    return {"turns": len(rows), "cos_own_gold": float(own.mean()), "cos_previous_gold": float(prev.mean()),
            "previous_closer": float((prev > own).mean()), "max_seq_length": limit,
            "test_truncated": float((lengths > limit).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--histories", nargs="+", default=["0", "1", "2", "all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--out", default="bench/results/quac")
    ap.add_argument("--done-only", action="store_true",
                    help="tabulate the finished runs of --seeds (kept in WORK/quac-runs), train none")
    ap.add_argument("--overlap", action="store_true", help="only the frozen cosines with own and previous gold")
    ap.add_argument("--curves", action="store_true", help="only the out-of-fold curves, group against random batches")
    args = ap.parse_args(argv)
    if not os.environ.get("PROJHEAD_DATA"):
        raise SystemExit("set PROJHEAD_DATA to the shared data folder (it holds quac/)")
    work = Path(args.work)
    enc = get_encoder(DEFAULT_ENCODER)
    rows = []
    if args.overlap:
        every = {h: overlap(quac_cache("val-train", h, enc, work), quac_cache("val-test", h, enc, work), enc)
                 for h in args.histories}
        for h, o in every.items():
            print(f"history {h:>3}  cos(question, own gold) {o['cos_own_gold']:.3f}  cos(question, previous turn's gold) "
                  f"{o['cos_previous_gold']:.3f}  previous closer in {100 * o['previous_closer']:.0f}% of "
                  f"{o['turns']} turns; test questions over {o['max_seq_length']} tokens: "
                  f"{100 * o['test_truncated']:.1f}%", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + "-overlap.json").write_text(json.dumps(every, indent=1))
        return
    if args.curves:
        every = {}
        for h in args.histories:
            every[h] = curves(quac_cache("val-train", h, enc, work))
            for batching, c in every[h].items():
                print(f"history {h:>3}  {batching:<6} out-of-fold mrr10 by epoch: " + " ".join(f"{x:.3f}" for x in c),
                      flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + "-curves.json").write_text(json.dumps(every, indent=1))
        return
    for h in args.histories:
        t0 = time.perf_counter()
        train, test = quac_cache("val-train", h, enc, work), quac_cache("val-test", h, enc, work)
        base = evaluate_cache(test, bm25=True)
        row = {"history": h, "train_queries": len(train.q2c), "test_queries": len(test.q2c),
               "test_dialogs": len(set(np.asarray(test.groups).tolist())),
               "test_contexts": len(test.contexts), "cache_seconds": time.perf_counter() - t0,
               "frozen": top(base["frozen"]), "bm25": top(base["bm25"]), "runs": []}
        for name in ("frozen", "bm25"):
            print(f"history {h:>3}  {name:<6} top1 {row[name]['top1']:5.1f}  top10 {row[name]['top10']:5.1f}", flush=True)
        for seed in args.seeds:
            run = train_run(train, test, seed, work / "quac-runs", args.done_only)
            if run is None:
                continue
            row["runs"].append(run)
            epochs = ", ".join(f"{c['name']} {c['best_epoch']}/{c['epochs']}" for c in run["candidates"])
            print(f"history {h:>3}  head   top1 {run['top1']:5.1f}  top10 {run['top10']:5.1f}  seed {seed}  "
                  f"{run['train_seconds']:.0f}s  chosen {run['chosen']}, kept {run['kept']}; best out-of-fold "
                  f"epochs: {epochs}", flush=True)
        row["seeds"] = [r["seed"] for r in row["runs"]]
        row["head"] = {k: float(np.mean([r[k] for r in row["runs"]])) for k in ("top1", "top10", "train_seconds")
                       } if row["runs"] else None
        rows.append(row)
    result = {"encoder": DEFAULT_ENCODER, "data": "QuAC validation, val-train -> val-test, sentence contexts",
              "seeds": args.seeds, "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"QuAC val-test ({rows[0]['test_queries'] if rows else 0} questions, {rows[0]['test_dialogs'] if rows else 0} "
             "dialogs), sentence contexts, "
             f"{DEFAULT_ENCODER}; out-of-500 top-1 / top-10; head = default `projhead train` on val-train, mean over "
             "the seeds listed", "",
             "| history | frozen | BM25 | default head | seeds | kept (per seed) | training s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = ", ".join(f"{x['kept']}" + (f" ({x['chosen']})" if x["kept"] != "identity" else "") for x in r["runs"])
        hd = r["head"] or {"top1": math.nan, "top10": math.nan, "train_seconds": math.nan}
        lines.append(f"| {r['history']} | {r['frozen']['top1']:.1f} / {r['frozen']['top10']:.1f} | "
                     f"{r['bm25']['top1']:.1f} / {r['bm25']['top10']:.1f} | {hd['top1']:.1f} / {hd['top10']:.1f} | "
                     f"{', '.join(map(str, r['seeds']))} | {kept} | {hd['train_seconds']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
