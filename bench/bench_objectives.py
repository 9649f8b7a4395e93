"""Every training objective on the same cached vectors: one table.

    PROJHEAD_DATA=../shared/data python bench/bench_objectives.py [--cache-dir bench/work] [--seed 0]

Needs the SQuAD v1.1 train and dev sentence caches that bench/bench_squad.py makes. Mines
two sets into the train cache (``projhead mine``: semantic and BM25 candidates, k 8, margin
0.05, hybrid teacher = frozen MiniLM + 0.3 BM25, silver pairs at teacher probability >= 0.5),
then trains one head per row (default head: residual MLP, separate towers, 8 epochs max,
early stopping on a held-out 5% of train articles) and scores it on SQuAD v1.1 dev, both
protocols, beside the frozen encoder and BM25. Rows are appended to the JSON as they finish.
Writes bench/results/objectives.json and objectives.md.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import projhead
from projhead.mine import mine
from squad_runs import md_row, squad_run

MINED = {
    "semantic": dict(method="semantic", k=8, margin=0.05, teacher="hybrid", silver=0.5),
    "bm25": dict(method="bm25", k=8, margin=0.05, teacher="hybrid", silver=0.5),
}

# name: (train settings, head settings)
ROWS = {
    "clip": {},
    "samtone": {"loss": "samtone"},
    "siglip": {"loss": "siglip"},
    "byol (augmented views)": {"loss": "byol"},
    "byol (query/context pairs as views)": {"loss": "byol", "loss_settings": {"views": "pair"}},
    "clip + semantic hard negatives": {"mined": "semantic", "hard_negatives": 1},
    "clip + bm25 hard negatives": {"mined": "bm25", "hard_negatives": 1},
    "samtone + semantic hard negatives": {"loss": "samtone", "mined": "semantic", "hard_negatives": 1},
    "siglip + semantic hard negatives": {"loss": "siglip", "mined": "semantic", "hard_negatives": 1},
    "clip + silver pairs": {"mined": "semantic", "silver": True},
    "clip + semantic hard negatives + silver": {"mined": "semantic", "hard_negatives": 1, "silver": True},
    "distill (KL, hybrid teacher) + clip": {"loss": "distill", "mined": "semantic", "hard_negatives": 4},
    "distill (KL, hybrid teacher) only": {"loss": "distill", "mined": "semantic", "hard_negatives": 4,
                                          "loss_settings": {"contrastive_weight": 0.0}},
    "distill (margin-MSE, hybrid teacher) + clip": {"loss": "distill", "mined": "semantic", "hard_negatives": 4,
                                                    "loss_settings": {"mode": "margin_mse"}},
    **{f"clip, batch {b}": {"batch_size": b, **({"loss_settings": {"chunk_size": 4096}} if b > 4096 else {})}
       for b in (256, 512, 1024, 4096, 8192, 16384, 32768)},
}


def pct(x):
    return f"{100 * x:.1f}"


def main():
    args, train_path, dev_path = squad_run("bench/results/objectives.json", "row names to run")
    dev = projhead.open_cache(dev_path)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(bench="objectives", seed=args.seed, mined=result.get("mined", {}), rows=result.get("rows", {}))
    have = projhead.open_cache(train_path, load=False).mined_sets
    for name, settings in MINED.items():
        if name not in have or result["mined"].get(name, {}).get("settings") != settings:
            r = mine(train_path, name=name, progress=False, overwrite=True, **settings)
            result["mined"][name] = {"settings": settings, "summary": r}
            print(f"mined {name}: {r['negatives_per_query']:.2f} negatives/query, {r['silver_pairs']} silver pairs, "
                  f"{r['seconds']:.0f}s", flush=True)
    if "baselines" not in result:
        result["baselines"] = projhead.evaluate_cache(dev, bm25=True)
    if "hybrid" not in result["baselines"]:
        # the teacher of the mined sets, scored on dev: frozen MiniLM + 0.3 BM25, standardised per query
        from projhead.evaluate import both_protocols
        from projhead.mine import CandidateScorer

        teacher = CandidateScorer(dev, {"hybrid"}, MINED["semantic"].get("bm25_weight", 0.3))
        result["baselines"]["hybrid"] = both_protocols(lambda rows: teacher(rows)["hybrid"].numpy(), dev.q2c)
    train = projhead.open_cache(train_path)
    for name, tkw in ROWS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        tcfg = projhead.TrainConfig(seed=args.seed, **tkw)
        head, log = projhead.train_head(train, projhead.HeadConfig(), tcfg, progress=False)
        seconds = time.perf_counter() - t0
        res = projhead.evaluate_cache(dev, head=head)["head"]
        best = next((e for e in log["epochs"] if e["epoch"] == log["best_epoch"]), None)
        result["rows"][name] = {"train": asdict(tcfg), "best_epoch": log["best_epoch"], "passthrough":
                                log["passthrough"], "train_seconds": seconds, "spread": best["spread"] if best else
                                log["frozen_spread"], "frozen_spread": log["frozen_spread"], "n_silver": log["n_silver"],
                                "results": res,
                                "epochs": [{"epoch": e["epoch"], "dev": e["dev"], "spread": e["spread"]}
                                           for e in log["epochs"]], "frozen_dev": log["frozen_dev"]}
        o, f = res["out_of_500"], res["full_corpus"]
        print(f"{name:46s} top1 {pct(o['top1'])} top10 {pct(o['top10'])} R@1 {pct(f['R@1'])} "
              f"nDCG@10 {pct(f['nDCG@10'])} spread {result['rows'][name]['spread']:.2f} "
              f"(epoch {log['best_epoch']}, {seconds:.0f}s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(result) -> str:
    lines = [md_row("objective", "500 top-1", "500 top-10", "full R@1", "full nDCG@10", "spread", "best epoch",
                    "train s"), md_row(*["---"] * 8).replace(" ", "")]
    labels = {"frozen": "frozen MiniLM (no head)", "bm25": "BM25", "hybrid": "hybrid teacher (frozen + 0.3 BM25; not a head)"}

    def figures(res):
        o, f = res["out_of_500"], res["full_corpus"]
        return pct(o["top1"]), pct(o["top10"]), pct(f["R@1"]), pct(f["nDCG@10"])

    for sys_name, res in result["baselines"].items():
        lines.append(md_row(labels[sys_name], *figures(res), "", "", ""))
    for name, row in result["rows"].items():
        kept = " (frozen kept)" if row["passthrough"] else ""
        lines.append(md_row(name, *figures(row["results"]), f"{row['spread']:.2f}", f"{row['best_epoch']}{kept}",
                            f"{row['train_seconds']:.0f}"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
