"""Out-of-core training: a synthetic cache bigger than memory-friendly, trained with --stream.

    python bench/bench_out_of_core.py [--rows 5000000] [--dim 384] [--work bench/work]

Writes a synthetic projhead cache of --rows queries and --rows contexts, float16 (queries
are a fixed random near-identity map of their context plus noise, so a head has something to
learn), chunk by chunk without holding it in memory. Then runs ``projhead train --stream``
on it for one epoch in a child process and reports the child's peak RSS, the file size,
what the in-memory trainer would hold (the vectors as float32), and pairs per second.
Writes bench/results/out_of_core.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_synthetic_cache(path: Path, rows: int, dim: int, chunk: int = 250_000, seed: int = 0) -> float:
    import h5py

    from projhead.cache import FORMAT, FORMAT_VERSION

    rng = np.random.default_rng(seed)
    mix = np.eye(dim, dtype=np.float32) + 0.3 * rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    t0 = time.perf_counter()
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w", libver="latest") as f:
        q, c = f.create_group("queries"), f.create_group("contexts")
        qv = q.create_dataset("vectors", (rows, dim), "float16", chunks=(4096, dim), fletcher32=True)
        cv = c.create_dataset("vectors", (rows, dim), "float16", chunks=(4096, dim), fletcher32=True)
        qt, qi, qg = (q.create_dataset(k, (rows,), s) for k in ("text", "id", "group"))
        ct = c.create_dataset("text", (rows,), s)
        q.create_dataset("context", data=np.arange(rows, dtype=np.int64), chunks=True, fletcher32=True)
        for a in range(0, rows, chunk):
            b = min(a + chunk, rows)
            ctx = rng.normal(size=(b - a, dim)).astype(np.float32)
            ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
            que = ctx @ mix + 4.0 * rng.normal(size=ctx.shape).astype(np.float32) / np.sqrt(dim)
            que /= np.linalg.norm(que, axis=1, keepdims=True)
            qv[a:b], cv[a:b] = que.astype(np.float16), ctx.astype(np.float16)
            idx = range(a, b)
            qt[a:b] = [f"q{i}" for i in idx]
            qi[a:b] = [f"id{i}" for i in idx]
            qg[a:b] = [f"g{i // 100}" for i in idx]
            ct[a:b] = [f"c{i}" for i in idx]
        info = {"name": "synthetic:planted", "resolved": "bench_out_of_core.py", "settings": {"seed": seed},
                "weights_sha256": "", "build": {}, "versions": {}}
        attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": info["name"],
                 "encoder_json": json.dumps(info), "dim": dim, "dtype": "float16", "normalized": True,
                 "dataset": "synthetic", "split": "train", "granularity": "sentence", "meta_json": "{}",
                 "fingerprint": f"synthetic-{rows}-{dim}-{seed}", "n_queries": rows, "n_contexts": rows}
        f.attrs.update(attrs)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--out", default="bench/results/out_of_core.json")
    args = ap.parse_args()
    path = Path(args.work) / f"synthetic-{args.rows}x{args.dim}-fp16.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_s = None
    if not path.exists():
        write_s = write_synthetic_cache(path, args.rows, args.dim)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {write_s:.0f}s", flush=True)
    head_dir = Path(args.work) / "heads" / "out-of-core"
    cmd = [sys.executable, "-m", "projhead.cli", "train", str(path), "--out", str(head_dir), "--no-auto", "--stream", "--epochs", "1",
           "--batch-size", str(args.batch_size), "--dev-fraction", "0.01", "--quiet", "--restart"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # what the same child holds before reading any data: torch, projhead, h5py imported
    base = subprocess.run([sys.executable, "-c", "import resource, projhead.train, projhead.cli, h5py; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True)
    base_mb = int(base.stdout.strip()) / 1024
    log = json.loads((head_dir / "train_log.json").read_text())
    ep = log["epochs"][0]
    res = {"bench": "out_of_core", "rows": args.rows, "dim": args.dim, "dtype": "float16",
           "file_gb": path.stat().st_size / 1e9, "in_memory_float32_gb": 2 * args.rows * args.dim * 4 / 1e9,
           "peak_rss_gb": peak_mb / 1e3, "import_rss_gb": base_mb / 1e3, "train_wall_seconds": wall, "epoch_seconds": ep["seconds"],
           "pairs_per_second": log["n_train"] / ep["seconds"], "n_train": log["n_train"], "n_dev": log["n_dev"],
           "dev_frozen": log["frozen_dev"], "dev_head": ep["dev"], "batch_size": args.batch_size,
           "write_seconds": write_s, "command": " ".join(cmd[1:])}
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
