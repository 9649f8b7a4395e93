"""Dialog heads on QuAC: the default of `projhead train` on a cache with a turns section.

    PROJHEAD_DATA=../shared/data python bench/bench_quac_dialog.py [--seeds 0 1 2] [--turns 2]
        [--work bench/work] [--out bench/results/quac_dialog]

Builds (or reuses) the caches `projhead cache --dataset quac --split val-train|val-test --turns K`
makes: sentence contexts, all-MiniLM-L6-v2, each question's K earlier turns (question and answer)
and the whole dialog so far as vectors of their own, each sentence's neighbours and section too. Then, per
seed, what `projhead train` does on val-train (model selection among the dialog candidates,
k-fold, the identity kept unless the held-out gain is above noise), and the saved head scored on
val-test by out-of-500 top-1 / top-10 beside the frozen question alone, and fused with BM25 of the
question (the fusion ``projhead train`` saved with it, as ``projhead eval --bm25`` applies it:
frozen + BM25, BM25 alone and head + BM25 rows). Also a fixed dialog head
per candidate (`projhead train --no-auto --kind dialog --towers T --batching random --lr 1e-3 --batch-size 64
--temperature 0.1`: the candidates' settings, ``turns.DIALOG_TRAIN``).
Prints one line per (system, seed); writes OUT.json and OUT.md. Timings: one CPU thread.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from projhead.cache import open_cache
from projhead.data import load_pairs
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import dense_scorer, evaluate_cache, out_of_n
from projhead.heads import HeadConfig
from projhead.select import auto_train
from projhead.train import TrainConfig, train_head
from projhead.turns import DIALOG_TRAIN, build_with_turns, dialog_view


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--out", default="bench/results/quac_dialog")
    args = ap.parse_args(argv)
    if not os.environ.get("PROJHEAD_DATA"):
        raise SystemExit("set PROJHEAD_DATA to the shared data folder (it holds quac/)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    paths = {}
    for split in ("val-train", "val-test"):
        paths[split] = work / f"quac-turns{args.turns}-{split}.h5"  # as `projhead cache --turns K` writes it
        build_with_turns(load_pairs("quac", split, "sentence"), enc, paths[split], args.turns, progress=False)
    test = dialog_view(open_cache(paths["val-test"]))

    def score(head):
        q = test.queries if head is None else head.encode_queries(test.queries)
        c = test.contexts if head is None else head.encode_contexts(test.contexts)
        m = out_of_n(dense_scorer(q, c), test.q2c)
        return {"top1": 100 * m["top1"], "top10": 100 * m["top10"]}

    rows = [{"system": "frozen question alone", **score(None)}]
    print(f"{rows[0]['system']:<34} top1 {rows[0]['top1']:5.1f}  top10 {rows[0]['top10']:5.1f}", flush=True)
    systems = [("projhead train (default)", None)] + [
        (f"dialog-{t} (fixed)", t) for t in ("query", "separate")]
    for system, towers in systems:
        runs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg = TrainConfig(seed=seed, threads=1)
            if towers is None:
                head, log = auto_train(paths["val-train"], cfg, progress=False)
                chosen = log["selection"]["chosen"]
            else:
                head, log = train_head(paths["val-train"], HeadConfig(kind="dialog", towers=towers),
                                       TrainConfig(seed=seed, threads=1, **DIALOG_TRAIN),
                                       progress=False)
                chosen = f"epoch {log['best_epoch']}"
            run = {"seed": seed, "seconds": time.perf_counter() - t0, "chosen": chosen,
                   "kept": "identity" if head.config.passthrough else "head", **score(head)}
            if towers is None and head.fusion is not None:  # the saved fusion, as projhead eval --bm25 applies it
                res = evaluate_cache(test, head=head, bm25=True)
                run["fused"] = {k: {m: 100 * res[k]["out_of_500"][m] for m in ("top1", "top10")}
                                for k in ("bm25", "frozen+bm25", "head+bm25")}
                run["fusion"] = head.fusion.to_dict()
                print(f"{'  fused with BM25':<34} " + "  ".join(
                    f"{k} {v['top1']:.1f} / {v['top10']:.1f}" for k, v in run["fused"].items()), flush=True)
            runs.append(run)
            print(f"{system:<34} top1 {run['top1']:5.1f}  top10 {run['top10']:5.1f}  seed {seed}  "
                  f"{run['seconds']:.0f}s  {chosen}, {run['kept']}", flush=True)
        rows.append({"system": system, "runs": runs, **{k: float(np.mean([r[k] for r in runs]))
                                                      for k in ("top1", "top10", "seconds")}})
        if all("fused" in r for r in runs):
            for k in ("bm25", "frozen+bm25", "head+bm25"):
                rows.append({"system": f"{system}: {k}, its saved fusion", **{
                    m: float(np.mean([r["fused"][k][m] for r in runs])) for m in ("top1", "top10")}})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"turns": args.turns, "seeds": args.seeds,
                                                    "test_queries": len(test.q2c), "rows": rows}, indent=1))
    lines = [f"QuAC val-test ({len(test.q2c)} questions), sentence contexts, {DEFAULT_ENCODER}; turns section of "
             f"{args.turns} earlier turns + the dialog so far + sentence neighbours and section; out-of-500 top-1 / top-10, "
             f"mean of seeds {', '.join(map(str, args.seeds))}; training seconds on one CPU thread", "",
             "| system | top-1 | top-10 | training s |", "|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['top1']:.1f} | {r['top10']:.1f} | {r.get('seconds', 0):.0f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
