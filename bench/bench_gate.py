"""Which signal should the per-query gate use? How well each one tells queries of the training
field from queries of other fields, on frozen vectors alone.

    PROJHEAD_DATA=../shared/data python bench/bench_gate.py --cache-dir /work/cache [--seed 0]

Training field: SQuAD v1.1 train questions, 5% of whole articles held out (``split_by_group``,
as model selection holds them out); the rest give the statistics. Other fields: the test parts
of QuAC, BoolQ, FiQA and Quora (``bench_ood.py --fields`` caches them in bench/work). For each
signal, the AUROC of "held-out SQuAD train question" against each other field's questions (1:
every training-field query is closer than every other one; 0.5: no better than chance), and
SQuAD v1.1 dev questions against the same fields (a new sample of the training field). Signals:

- ``mahalanobis``: distance to the training queries' mean under their covariance, shrunk toward
  a multiple of the identity (``gate.SHRINK``), the gate's signal;
- ``centroid``: cosine to the training queries' mean vector;
- ``knn``: the highest cosine to a sample of ``--sample`` training queries (nearest neighbour).

Then the gate as ``fit_gate`` calibrates it (other fields: the training parts of BoolQ, FiQA and
Quora, leaving out the field scored): its mean on each set. Writes bench/results/gate.json.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from projhead.cache import cache_dataset, open_cache
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.gate import SHRINK, fit_gate
from projhead.train import split_by_group, split_groups

WORK = Path("bench/work")
TESTS = {"quac": ("quac", "val-test", "sentence"), "boolq": ("boolq", "dev", "passage"),
         "fiqa": ("fiqa", "dev", "question"), "quora": ("quora", "dev", "question")}
CALIB = {"boolq": ("boolq", "train", "passage"), "fiqa": ("fiqa", "train", "question"),
         "quora": ("quora", "train", "question")}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an inside query scores as closer than an outside one); scores: higher = farther."""
    s = np.concatenate([inside, outside])
    ranks = np.empty(len(s))
    ranks[np.argsort(s, kind="mergesort")] = np.arange(1, len(s) + 1)
    r_out = ranks[len(inside):].sum() - len(outside) * (len(outside) + 1) / 2
    return float(r_out / (len(inside) * len(outside)))


def signals(train_q: np.ndarray, sample: int, seed: int) -> dict:
    """name -> function (N, D) -> (N,) distance-like score (higher = farther from training)."""
    x = train_q.astype(np.float64)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False)
    cov += SHRINK * np.trace(cov) / len(cov) * np.eye(len(cov))
    prec = np.linalg.inv(cov)
    centre = mean / np.linalg.norm(mean)
    pick = train_q[np.random.default_rng(seed).choice(len(train_q), min(sample, len(train_q)), replace=False)]

    def maha(q):
        d = q.astype(np.float64) - mean
        return np.sqrt(np.einsum("nd,de,ne->n", d, prec, d) / len(mean))

    return {"mahalanobis": maha, "centroid": lambda q: -(q @ centre),
            "knn": lambda q: -np.max(q @ pick.T, axis=1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=str(WORK))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--out", default="bench/results/gate.json")
    args = ap.parse_args()
    data = os.environ.get("PROJHEAD_DATA")
    enc = get_encoder(DEFAULT_ENCODER)
    train = open_cache(Path(args.cache_dir) / "squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5")
    dev = open_cache(Path(args.cache_dir) / "squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5")
    tests = {f: np.asarray(cache_dataset(*t, enc, WORK, data).queries) for f, t in TESTS.items()}
    calib = {f: np.asarray(cache_dataset(*t, enc, WORK, data).queries) for f, t in CALIB.items()}
    tr, held = split_by_group(split_groups(train), 0.05, args.seed)
    train_q, held_q, dev_q = train.queries[np.sort(tr)], train.queries[np.sort(held)], np.asarray(dev.queries)
    result = {"seed": args.seed, "n_train": len(train_q), "n_held": len(held_q), "n_dev": len(dev_q),
              "n_other": {f: len(q) for f, q in tests.items()}, "auroc": {}, "gate": {}}
    for name, fn in signals(train_q, args.sample, args.seed).items():
        s_held, s_dev = fn(held_q), fn(dev_q)
        result["auroc"][name] = {f: {"held": auroc(s_held, fn(q)), "dev": auroc(s_dev, fn(q))} for f, q in tests.items()}
        print(f"{name:<12} AUROC held/dev vs " + "  ".join(
            f"{f} {v['held']:.3f}/{v['dev']:.3f}" for f, v in result["auroc"][name].items()), flush=True)
    for f, q in tests.items():  # the gate as fit_gate calibrates it, the scored field left out
        others = [c for g, c in calib.items() if g != f]
        gate, report = fit_gate(train_q, held_q, others)
        with torch.no_grad():
            mean = {k: float(gate(torch.from_numpy(np.asarray(v, np.float32))).mean())
                    for k, v in (("held", held_q), ("squad-dev", dev_q), (f, q))}
        result["gate"][f] = {"calibrated_on": [g for g in calib if g != f], "lo": report["lo"], "hi": report["hi"],
                             "mean_gate": mean}
        print(f"gate without {f:<6} lo {report['lo']:.3f} hi {report['hi']:.3f}  mean gate: held-out SQuAD train "
              f"{mean['held']:.3f}, SQuAD dev {mean['squad-dev']:.3f}, {f} {mean[f]:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
