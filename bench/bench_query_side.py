"""How far a head that leaves the index alone gets on SQuAD, on the caches bench_squad.py made.

    PROJHEAD_DATA=../shared/data python bench/bench_query_side.py --seed 0 [--cache-dir bench/work]
        [--only NAME ...] [--out bench/results/query_side-seed0.json]
    python bench/bench_query_side.py --merge bench/results/query_side-seed*.json --out bench/results/query_side

Each variant is ``projhead train``'s model selection with one candidate (``auto_train(fixed=...)``:
its dev split, kept epoch, keep-or-identity decision, alpha 0.9 and, for a query-side head, the
per-query gate without canaries), so a row is what the default would save if that candidate won.
Scored on SQuAD v1.1 dev (sentence contexts): out-of-500 top-1 / top-10 and full-corpus
nDCG@10, as saved (gated) and with the gate removed. ``--merge`` writes the mean over the seed
files as JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import projhead
from projhead.mine import mine
from projhead.select import auto_train
from squad_runs import DEV, TRAIN, md_row

MINED = "semantic"  # the hard-negative set mined into the train cache (frozen nearest contexts)
VARIANTS = {
    "linear-query (lr 1e-3)": {"kind": "linear", "towers": "query", "lr": 1e-3},
    "residual-query (lr 5e-4)": {"kind": "residual", "towers": "query", "lr": 5e-4},
    "linear-query, 16 epochs": {"kind": "linear", "towers": "query", "lr": 1e-3, "epochs": 16},
    "linear-query, 1 mined hard negative": {"kind": "linear", "towers": "query", "lr": 1e-3,
                                            "mined": MINED, "hard_negatives": 1},
    "residual-separate (two towers; contexts change)": {"kind": "residual", "towers": "separate", "lr": 5e-4},
}
METRICS = ("top1", "top10", "ndcg10")


def scores(dev, head) -> dict:
    r = projhead.evaluate_cache(dev, head=head)["head" if head is not None else "frozen"]
    return {"top1": 100 * r["out_of_500"]["top1"], "top10": 100 * r["out_of_500"]["top10"],
            "ndcg10": 100 * r["full_corpus"]["nDCG@10"]}


def run(args) -> None:
    d = Path(args.cache_dir)
    train, dev = projhead.open_cache(d / TRAIN), projhead.open_cache(d / DEV)
    if any("mined" in v for n, v in VARIANTS.items() if not args.only or n in args.only) \
            and MINED not in train.mined_sets:
        t0 = time.perf_counter()
        mine(train, method="semantic", k=8, name=MINED, progress=False)
        print(f"[{time.perf_counter() - t0:7.1f}s] mined {MINED!r} into {d / TRAIN}", flush=True)
        train = projhead.open_cache(d / TRAIN)
    rows = [{"variant": "frozen", "seed": args.seed, "saved": scores(dev, None)}]
    for name, fixed in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        head, log = auto_train(train, projhead.TrainConfig(seed=args.seed), fixed=fixed, progress=False)
        seconds = time.perf_counter() - t0
        row = {"variant": name, "seed": args.seed, "fixed": fixed, "kept": log["decision"].get("kept"),
               "dev_gain": log["decision"].get("dev_gain"), "best_epoch": log.get("best_epoch"),
               "seconds": seconds, "saved": scores(dev, head),
               "mean_gate_dev": float(np.mean(head.gate_values(dev.queries)))}
        if head.gate is not None:
            head.set_gate(None)
            row["ungated"] = scores(dev, head)
        rows.append(row)
        s = row["saved"]
        print(f"{name:50s} top1 {s['top1']:.2f} top10 {s['top10']:.2f} nDCG@10 {s['ndcg10']:.2f}"
              + (f" (ungated top1 {row['ungated']['top1']:.2f}; mean gate {row['mean_gate_dev']:.3f})"
                 if "ungated" in row else "") + f"  {seconds:.0f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "query_side", "seed": args.seed, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def merge(args) -> None:
    rows = list({(r["variant"], r["seed"]): r for p in args.merge  # a seed run in parts: its frozen row once
                 for r in json.loads(Path(p).read_text())["rows"]}.values())
    frozen = np.mean([r["saved"]["top1"] for r in rows if r["variant"] == "frozen"])
    table, out = [md_row("variant", "seeds", "top-1 (saved, gated)", "top-1 change", "top-1 ungated",
                         "top-10", "nDCG@10", "mean gate on dev", "heads kept", "seconds")], []
    table.append("|" + "---|" * 10)
    for name in ["frozen", *VARIANTS]:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        mean = {m: float(np.mean([r["saved"][m] for r in runs])) for m in METRICS}
        ungated = [r["ungated"]["top1"] for r in runs if "ungated" in r]
        entry = {"variant": name, "seeds": [r["seed"] for r in runs], "saved": mean,
                 "top1_by_seed": [r["saved"]["top1"] for r in runs],
                 "ungated_top1": float(np.mean(ungated)) if len(ungated) == len(runs) else None,
                 "kept": [r.get("kept") for r in runs]}
        out.append(entry)
        table.append(md_row(name, ",".join(str(s) for s in entry["seeds"]), f"{mean['top1']:.2f}",
                            f"{mean['top1'] - frozen:+.2f}" if name != "frozen" else "",
                            f"{entry['ungated_top1']:.2f}" if entry["ungated_top1"] is not None else "",
                            f"{mean['top10']:.2f}", f"{mean['ndcg10']:.2f}",
                            f"{np.mean([r['mean_gate_dev'] for r in runs]):.3f}" if ungated else "",
                            f"{entry['kept'].count('head')} of {len(runs)}" if name != "frozen" else "",
                            f"{np.mean([r['seconds'] for r in runs]):.0f}" if name != "frozen" else ""))
    Path(args.out + ".json").write_text(json.dumps({"bench": "query_side", "rows": out}, indent=1))
    Path(args.out + ".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="names of variants to run (default: all)")
    ap.add_argument("--merge", nargs="*", help="seed files to average into --out (.json and .md)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.merge:
        args.out = args.out or "bench/results/query_side"
        merge(args)
    else:
        args.out = args.out or f"bench/results/query_side-seed{args.seed}.json"
        run(args)


if __name__ == "__main__":
    main()
