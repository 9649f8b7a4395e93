"""The keep decision under no real effect: how often does ``projhead train`` keep a head when
no head can beat the frozen encoder?

    python bench/bench_null.py [--sizes 100 300 1000] [--seeds 40] [--dim 64] [--workers 1]
        [--planted R --planted-sizes 300 1000 --planted-seeds 10] [--out bench/results/null]

Data (written as real caches, then ``projhead.select.auto_train`` as ``projhead train`` runs it,
every default): contexts are unit vectors in groups (documents: a group centroid plus a
per-context direction), and each context has two queries, the context plus isotropic Gaussian
noise. With every context of unit length and noise the same in every direction, the context
with the highest dot product is the most likely gold one: the frozen geometry is the truth,
and any head can only match it on average. A kept head is a false keep. The texts are opaque
single tokens (``_opaque``), so the check inside the fusion with BM25 sees no lexical signal. ``--noise`` sets the
noise (default 2.5: the frozen encoder ranks about half the queries first).

``--planted R``: the same data with the queries also rotated a share ``R`` of the way to a
random rotation (as the tests' planted encoder does): a head can undo it, so keeping one is
right; the keep rate there is the decision's power.

Prints one line per (data, size): heads kept out of the seeds, with a 95% Wilson interval,
the mean held-out MRR@10 gain (of runs decided on it; a kept adapter recipe is decided on its margin, recorded apart) and the mean seconds; writes ``OUT.json`` (every run) and, as runs end,
``OUT.runs.jsonl``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

WORK = Path("bench/work")


class SyntheticEncoder:
    """Vectors looked up by text from tables made once (the cache builder calls ``encode``)."""

    def __init__(self, table: dict, dim: int, name: str):
        self.table, self.dim, self.name = table, dim, name

    def encode(self, texts, batch_size=64, role="query"):
        return np.stack([self.table[(role, t)] for t in texts]).astype(np.float32)

    def describe(self):
        return {"name": self.name, "resolved": "synthetic", "settings": {"dim": self.dim},
                "weights_sha256": hashlib.sha256(self.name.encode()).hexdigest(), "versions": {}}


def make_data(n_pairs: int, dim: int, noise: float, rotate: float, seed: int, per_group: int = 5):
    """Pairs and their encoder: ``n_pairs`` queries, two per context, ``per_group`` contexts per group."""
    from projhead.data import Pairs

    rng = np.random.default_rng(seed)
    n_ctx = n_pairs // 2
    n_groups = math.ceil(n_ctx / per_group)
    centroids = rng.normal(size=(n_groups, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    own = rng.normal(size=(n_ctx, dim))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    group = np.arange(n_ctx) // per_group
    c = 0.6 * centroids[group] + 0.8 * own  # same-document contexts are closer than others
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rot, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    m = (1 - rotate) * np.eye(dim) + rotate * rot
    table, queries, groups, q2c, contexts = {}, [], [], [], []
    for i in range(n_ctx):
        contexts.append(_opaque(f"context {i}"))
        table[("context", contexts[-1])] = c[i]
        for j in range(2):
            q = m @ c[i] + noise * rng.normal(size=dim) / math.sqrt(dim)
            queries.append(_opaque(f"query {j} of {i}"))
            table[("query", queries[-1])] = q / np.linalg.norm(q)
            groups.append(f"doc {group[i]}")
            q2c.append(i)
    pairs = Pairs(queries, [f"q{i}" for i in range(len(queries))], groups, contexts, np.array(q2c),
                  {"dataset": "synthetic", "split": "train", "granularity": "sentence"})
    return pairs, SyntheticEncoder(table, dim, f"synthetic:{dim}")


def _opaque(name: str) -> str:
    """A text that is one token of its own: no word of a query is in its gold context, so BM25
    (and the check inside the fusion that selection makes when the cache has texts) learns
    nothing from the texts, and the bench measures the decision on the vectors alone."""
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def one(job: dict) -> dict:
    """One ``projhead train`` run on fresh data; what it kept."""
    import torch

    torch.set_num_threads(1)
    from projhead.cache import build_cache
    from projhead.select import auto_train
    from projhead.train import TrainConfig

    pairs, enc = make_data(job["size"], job["dim"], job["noise"], job["rotate"], seed=1000 + job["seed"])
    with tempfile.TemporaryDirectory(dir=job["work"]) as tmp:
        path = Path(tmp) / "c.h5"
        build_cache(pairs, enc, path, progress=False)
        t0 = time.perf_counter()
        head, log = auto_train(path, TrainConfig(seed=job["seed"]), progress=False)
    d, sel = log["decision"], log["selection"]
    g = d.get("dev_gain") or {}
    return {**{k: job[k] for k in ("data", "size", "seed", "rotate", "noise", "dim")},
            "kept": d["kept"] == "head", "why": d.get("why"), "mode": sel["mode"], "chosen": sel.get("chosen"),
            "best_epoch": next((c["best_epoch"] for c in sel["candidates"] if c["name"] == sel.get("chosen")), None),
            "gain": g.get("gain"), "low": g.get("low"), "high": g.get("high"), "of": g.get("of", "mrr10"),
            "recipe": sel.get("recipe"),
            "frozen_mrr10": sel["frozen_dev"]["mrr10"], "seconds": time.perf_counter() - t0}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summary(runs: list[dict]) -> dict:
    k, n = sum(r["kept"] for r in runs), len(runs)
    gains = [r["gain"] for r in runs if r["gain"] is not None and r.get("of", "mrr10") == "mrr10"]  # MRR@10 decisions
    return {"kept": k, "runs": n, "rate": k / n, "interval": wilson(k, n),
            "recipe_kept": sum(bool((r.get("recipe") or {}).get("kept")) for r in runs),  # of the kept: the recipe
            "mean_gain": float(np.mean(gains)) if gains else None,
            "frozen_mrr10": float(np.mean([r["frozen_mrr10"] for r in runs])),
            "seconds": float(np.mean([r["seconds"] for r in runs]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, default=40, help="runs per size (seeds 0..N-1: data and training); 0: none")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--noise", type=float, default=2.5)
    ap.add_argument("--planted", type=float, default=None, help="also a planted-gain case with this rotation share")
    ap.add_argument("--planted-seeds", type=int, default=None, help="runs per size of the planted case [--seeds]")
    ap.add_argument("--planted-sizes", type=int, nargs="+", default=None, help="sizes of the planted case [--sizes]")
    ap.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    ap.add_argument("--out", default="bench/results/null")
    ap.add_argument("--summarize", nargs="+", metavar="RUNS.jsonl", default=None,
                    help="no runs: summarise the runs files of earlier (or stopped) benches into OUT.json")
    args = ap.parse_args()
    if args.summarize:
        runs = [json.loads(line) for f in args.summarize for line in Path(f).read_text().splitlines() if line.strip()]
        return report(runs, args, None)
    work = WORK / "null"
    work.mkdir(parents=True, exist_ok=True)
    cases = [("null", 0.0, args.seeds, args.sizes)] if args.seeds else []
    if args.planted is not None:
        cases.append((f"planted {args.planted:g}", args.planted, args.planted_seeds or args.seeds,
                      args.planted_sizes or args.sizes))
    jobs = [{"data": data, "rotate": rot, "size": size, "seed": s, "dim": args.dim, "noise": args.noise,
             "work": str(work)} for data, rot, seeds, sizes in cases for s in range(seeds) for size in sizes]
    t0 = time.perf_counter()
    runs = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Pool(args.workers) as pool, open(out.with_suffix(".runs.jsonl"), "w") as each:
        for r in pool.imap_unordered(one, jobs, chunksize=1):  # every run as it ends: a stopped bench keeps them
            runs.append(r)
            each.write(json.dumps(r) + "\n")
            each.flush()
            print(f"  {r['data']} {r['size']} seed {r['seed']}: {'head' if r['kept'] else 'identity'}"
                  + (f" (gain {r['gain']:+.4f}, low {r['low']:+.4f})" if r["gain"] is not None else "")
                  + f" {r['seconds']:.0f}s", flush=True)
    report(runs, args, time.perf_counter() - t0)


def report(runs: list[dict], args, seconds: float | None) -> None:
    """One line per (data, size), and OUT.json."""
    results = {}
    for data, size in sorted({(r["data"], r["size"]) for r in runs}):
        mine = [r for r in runs if r["data"] == data and r["size"] == size]
        s = results[f"{data} {size}"] = summary(mine)
        lo, hi = s["interval"]
        gain = f"{s['mean_gain']:+.4f}" if s["mean_gain"] is not None else "n/a"
        print(f"{data:<12} {size:>5} pairs (dim {mine[0]['dim']}, {mine[0]['mode']}): head kept in {s['kept']}/{s['runs']} "
              f"({100 * s['rate']:.1f}%, 95% interval {100 * lo:.1f}-{100 * hi:.1f}%; the adapter recipe {s['recipe_kept']}); frozen MRR@10 "
              f"{s['frozen_mrr10']:.3f}, mean held-out MRR@10 gain {gain}; {s['seconds']:.1f}s a run", flush=True)
    k, n = sum(r["kept"] for r in runs if r["data"] == "null"), sum(r["data"] == "null" for r in runs)
    if n:
        lo, hi = wilson(k, n)
        results["null, all sizes"] = {"kept": k, "runs": n, "rate": k / n, "interval": (lo, hi)}
        print(f"null, all sizes: head kept in {k}/{n} ({100 * k / n:.1f}%, 95% interval {100 * lo:.1f}-{100 * hi:.1f}%)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import projhead
    import torch

    out.with_suffix(".json").write_text(json.dumps(
        {"command": "python bench/bench_null.py " + " ".join(os.sys.argv[1:]), "summary": results, "runs": runs,
         "seconds": seconds, "workers": args.workers,
         "versions": {"projhead": projhead.__version__, "torch": torch.__version__, "python": platform.python_version()},
         "cpu": platform.processor() or platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
