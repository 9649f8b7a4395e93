"""Full-corpus retrieval over 1,000,000+ contexts with FAISS, exact and approximate.

    PROJHEAD_DATA=../shared/data python bench/bench_scale_eval.py [--contexts 1000000] [--cache-dir bench/work]

Corpus: the 6,698 SQuAD v1.1 dev answer sentences and the 58,087 train sentences (real
MiniLM vectors from the bench_squad.py caches), plus synthetic distractors up to
--contexts, drawn from a Gaussian fitted to the real context vectors (mean and covariance)
and normalised. Queries: the 10,570 dev questions; gold = their answer sentence. The corpus
goes to an HDF5 file once and is streamed from it in chunks. Each index runs in its own child
process (peak RSS per index): FAISS Flat (exact), HNSW32, IVF4096,Flat; on a sample of
1,000 queries, exact torch search gives the reference top-10 for the recall of each index.
Writes bench/results/scale_eval.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time, h5py, numpy as np
from projhead.search import build_index, search, topk_metrics, exact_topk, overlap_at_k
path, factory, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with h5py.File(path, "r") as f:
    C = f["contexts"]
    chunks = lambda: (C[a:a + 100_000] for a in range(0, C.shape[0], 100_000))
    q, q2c, sample = f["queries"][()], f["q2c"][()], f["sample"][()]
    t0 = time.perf_counter()
    index = build_index(chunks(), q.shape[1], factory)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, ids = search(index, q, k=100, **kw)
    search_s = time.perf_counter() - t0
    exact = f["exact_top10"][()]
out = {"factory": factory, "search": kw, "build_seconds": build, "search_seconds": search_s,
       "queries_per_second": len(q) / search_s, "metrics": topk_metrics(ids, scores, q2c),
       "recall_at_10_vs_exact": overlap_at_k(ids[sample], exact, 10),
       "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=1_000_000)
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--out", default="bench/results/scale_eval.json")
    ap.add_argument("--indexes", nargs="*", default=["Flat", "HNSW32", "IVF4096,Flat"],
                    help="FAISS factory strings to run (HNSW is searched with efSearch 128, IVF with nprobe 64)")
    args = ap.parse_args()
    import h5py

    import projhead
    from projhead.search import exact_topk

    d = Path(args.cache_dir)
    dev = projhead.open_cache(d / "squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5")
    train = projhead.open_cache(d / "squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5")
    corpus = d / f"scale-corpus-{args.contexts}.h5"
    real = np.concatenate([dev.contexts, train.contexts])  # dev golds keep their row numbers
    n_syn = args.contexts - len(real)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(dev.q2c), size=1000, replace=False))
    if not corpus.exists():
        mean, cov = real.mean(0), np.cov(real, rowvar=False)
        L = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)))
        with h5py.File(corpus, "w") as f:
            C = f.create_dataset("contexts", (args.contexts, real.shape[1]), "float32", chunks=(8192, real.shape[1]))
            C[:len(real)] = real
            for a in range(len(real), args.contexts, 100_000):
                b = min(a + 100_000, args.contexts)
                x = mean + rng.normal(size=(b - a, len(mean))) @ L.T
                C[a:b] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            f["queries"], f["q2c"], f["sample"] = dev.queries, dev.q2c, sample
            t0 = time.perf_counter()
            f["exact_top10"] = exact_topk(dev.queries[sample], (C[a:a + 100_000] for a in range(0, C.shape[0], 100_000)),
                                          k=10)
            print(f"exact torch top-10 for 1,000 queries over {args.contexts:,} contexts: "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    runs = [(f, {"ef_search": 128} if f.startswith("HNSW") else {"nprobe": 64} if f.startswith("IVF") else {})
            for f in args.indexes]
    rows = []
    for factory, kw in runs:
        r = subprocess.run([sys.executable, "-c", CHILD, str(corpus), factory, json.dumps(kw)],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"{factory}: failed: {r.stderr[-500:]}", flush=True)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        m = row["metrics"]
        print(f"{factory:14s} build {row['build_seconds']:7.1f}s  search {row['queries_per_second']:8.0f} q/s  "
              f"R@1 {100 * m['R@1']:.1f}  R@10 {100 * m['R@10']:.1f}  R@100 {100 * m['R@100']:.1f}  "
              f"recall@10 vs exact {row['recall_at_10_vs_exact']:.3f}  peak RSS {row['peak_rss_gb']:.2f} GB",
              flush=True)
    res = {"bench": "scale_eval", "contexts": args.contexts, "real_contexts": int(len(real)),
           "synthetic_contexts": int(n_syn), "queries": int(len(dev.q2c)), "dim": int(real.shape[1]),
           "corpus_float32_gb": args.contexts * real.shape[1] * 4 / 1e9, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
