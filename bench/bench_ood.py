"""Out of domain: what a SQuAD head gains in domain against what it costs elsewhere, as the
head is interpolated toward the frozen encoder.

    PROJHEAD_DATA=../shared/data python bench/bench_ood.py [--seeds 0 1 2] [--alphas 1 0.75 0.5 0.25 0]
        [--canary-seeds 0] [--out bench/results/ood]

Takes ``projhead train``'s head on SQuAD v1.1 train (sentence contexts; ``--alpha 1``, no canaries),
one per seed (the heads ``bench_squad.py`` saved, or trained here the same way), then scores frozen + alpha x (head - frozen), in weight space (WiSE-FT), for
each alpha on:
- in domain: SQuAD v1.1 dev, sentence contexts (out-of-500 top-1, full-corpus nDCG@10);
- canaries: SQuAD v1.1 dev with paragraph contexts (a granularity the head never saw) and the
  Quora duplicate-question test pairs (another task: every question of the sample is a candidate);
  nDCG@10 over the whole corpus.
``--canary-seeds`` adds, for those seeds, a run of ``projhead train --canary`` with both
canaries (the head shrunk until neither loses more than half a point). Prints one line per (seed, alpha)
and writes ``OUT.json``, ``OUT.md`` and ``OUT.png`` (in-domain gain against canary change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import projhead
from projhead.cache import cache_dataset
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.select import auto_train
from projhead.train import ALPHA

WORK = Path("bench/work")


def score(evals: dict, head) -> dict:
    out = {}
    for name, c in evals.items():
        r = projhead.evaluate_cache(c, head=head)["head" if head is not None else "frozen"]
        out[name] = {"top1": r["out_of_500"]["top1"], "R@1": r["full_corpus"]["R@1"],
                     "nDCG@10": r["full_corpus"]["nDCG@10"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--canary-seeds", type=int, nargs="*", default=[],
                    help="seeds for which to also train with --canary (both canaries)")
    ap.add_argument("--heads-dir", default="bench/work/heads",
                    help="reuse the heads bench_squad.py saved there (seedN) if they were kept whole (alpha 1), "
                         "else train them (seedN-alpha1)")
    ap.add_argument("--out", default="bench/results/ood")
    args = ap.parse_args()
    data = os.environ.get("PROJHEAD_DATA")
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    train = cache_dataset("squad-v1.1", "train", "sentence", enc, WORK, data)
    evals = {"squad-sentence": cache_dataset("squad-v1.1", "dev", "sentence", enc, WORK, data),
             "squad-paragraph": cache_dataset("squad-v1.1", "dev", "paragraph", enc, WORK, data),
             "quora": cache_dataset("quora", "dev", "question", enc, WORK, data)}
    frozen = score(evals, None)
    print("frozen " + json.dumps(frozen), flush=True)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        saved = Path(args.heads_dir) / f"seed{seed}"
        head = projhead.load_head(saved) if (saved / "config.json").exists() else None
        if head is not None and head.info.get("decision", {}).get("alpha") == 1.0:  # a whole head: reuse it
            chosen = head.info["selection"]["chosen"]
        else:
            saved = saved.with_name(saved.name + "-alpha1")
            head, log = auto_train(train, projhead.TrainConfig(seed=seed, alpha=1.0), out=saved, progress=False)
            chosen = log["selection"]["chosen"]
        seconds = time.perf_counter() - t0
        trained = {k: v.clone() for k, v in head.state_dict().items()}
        for alpha in args.alphas:
            head.load_state_dict(trained)
            if alpha < 1:
                head.interpolate(alpha)
            s = score(evals, head)
            rows.append({"seed": seed, "alpha": alpha, "run": "sweep", "chosen": chosen,
                         "train_seconds": seconds, "scores": s})
            print(f"seed {seed} alpha {alpha:.2f} " + line(s, frozen), flush=True)
        if seed in args.canary_seeds:
            t0 = time.perf_counter()
            cfg = projhead.TrainConfig(seed=seed, canaries=[str(evals["squad-paragraph"].path),
                                                            str(evals["quora"].path)])
            head, log = auto_train(train, cfg, progress=False)
            s = score(evals, head)
            d = log["decision"]
            rows.append({"seed": seed, "alpha": d.get("alpha"), "run": "canaries", "kept": d["kept"],
                         "train_seconds": time.perf_counter() - t0, "scores": s})
            print(f"seed {seed} --canary (alpha {d.get('alpha')}, kept {d['kept']}) " + line(s, frozen), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "ood", "encoder": DEFAULT_ENCODER, "frozen": frozen, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(result))
    plot(result, out.with_suffix(".png"))
    print(table(result))


def line(s: dict, frozen: dict) -> str:
    return "  ".join(f"{name} top1 {100 * (v['top1'] - frozen[name]['top1']):+.1f} nDCG@10 "
                     f"{100 * (v['nDCG@10'] - frozen[name]['nDCG@10']):+.1f}" for name, v in s.items())


def _mean_change(rows: list[dict], frozen: dict, name: str, metric: str) -> tuple[float, float]:
    d = [100 * (r["scores"][name][metric] - frozen[name][metric]) for r in rows]
    return float(np.mean(d)), float(np.std(d))


def table(result: dict) -> str:
    f = result["frozen"]
    groups: dict = {}
    for r in result["rows"]:
        key = ("sweep", r["alpha"]) if r["run"] == "sweep" else ("canaries", None)
        groups.setdefault(key, []).append(r)
    lines = ["Change against the frozen encoder, points (mean ± std over seeds).", "",
             "| head | seeds | SQuAD sentence top-1 | SQuAD sentence nDCG@10 | SQuAD paragraph nDCG@10 | "
             "Quora nDCG@10 |", "|---|---|---|---|---|---|",
             f"| frozen (absolute) | | {100 * f['squad-sentence']['top1']:.1f} | "
             f"{100 * f['squad-sentence']['nDCG@10']:.1f} | {100 * f['squad-paragraph']['nDCG@10']:.1f} | "
             f"{100 * f['quora']['nDCG@10']:.1f} |"]
    for (run, alpha), rows in groups.items():
        cells = [_mean_change(rows, f, n, m) for n, m in (("squad-sentence", "top1"), ("squad-sentence", "nDCG@10"),
                                                           ("squad-paragraph", "nDCG@10"), ("quora", "nDCG@10"))]
        label = f"alpha {alpha:g}" if run == "sweep" else "--canary (both)"
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(f"{m:+.1f} ± {s:.1f}" for m, s in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result["frozen"]
    sweep = [r for r in result["rows"] if r["run"] == "sweep"]
    alphas = sorted({r["alpha"] for r in sweep})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, marker in (("squad-paragraph", "o"), ("quora", "s")):
        xs, ys = [], []
        for a in alphas:
            rs = [r for r in sweep if r["alpha"] == a]
            xs.append(_mean_change(rs, f, "squad-sentence", "top1")[0])
            ys.append(_mean_change(rs, f, name, "nDCG@10")[0])
        ax.plot(xs, ys, marker=marker, label=f"{name} nDCG@10")
        for a, x, y in zip(alphas, xs, ys):
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if ALPHA in alphas:  # the default, marked
            i = alphas.index(ALPHA)
            ax.scatter([xs[i]], [ys[i]], s=160, facecolors="none", edgecolors="red", zorder=3,
                       label="default (alpha 0.9)" if name == "quora" else None)
    ax.axhline(0, color="gray", ls="--")
    ax.axhline(-0.5, color="gray", ls=":", label="half a point lost")
    ax.set(xlabel="SQuAD dev sentence top-1 gain (points)", ylabel="canary change (points)",
           title="in-domain gain vs out-of-domain change (labels: alpha)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
