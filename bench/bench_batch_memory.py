"""Memory and time of one clip step at large batch sizes: plain vs chunked logits.

    python bench/bench_batch_memory.py [--dim 384] [--chunk 4096] [--max-gb 18]

Each measurement runs in a fresh process: random unit vectors (B, dim) for both towers, one
forward and backward pass of the symmetric InfoNCE loss; reports the process's peak RSS
above its start and the seconds taken, for the plain loss (whole B x B logit matrix) and
the chunked one (row blocks of --chunk, exact gradients). Plain runs whose logit matrices
alone would pass --max-gb are skipped and marked so. Writes bench/results/batch_memory.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from projhead.losses import ClipLoss
b, dim, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) or None
torch.manual_seed(0)
q = torch.nn.functional.normalize(torch.randn(b, dim), dim=1).requires_grad_()
c = torch.nn.functional.normalize(torch.randn(b, dim), dim=1).requires_grad_()
ids = torch.arange(b)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss_fn = ClipLoss(init_temperature=0.05, chunk_size=chunk)
t0 = time.perf_counter()
loss = loss_fn(q, c, ids)
loss.backward()
sec = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"loss": float(loss), "seconds": sec, "peak_rss_mb_above_start": (peak - base) / 1024}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--max-gb", type=float, default=18.0)
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--out", default="bench/results/batch_memory.json")
    args = ap.parse_args()
    rows = []
    for b in args.sizes:
        row = {"batch": b}
        for name, chunk in (("plain", 0), ("chunked", args.chunk)):
            need_gb = 3 * b * b * 4 / 1e9  # logits, their softmax and its gradient, float32
            if chunk == 0 and need_gb > args.max_gb:
                row[name] = {"skipped": f"needs about {need_gb:.0f} GB for B x B matrices"}
                continue
            r = subprocess.run([sys.executable, "-c", CHILD, str(b), str(args.dim), str(chunk)],
                               capture_output=True, text=True)
            row[name] = json.loads(r.stdout) if r.returncode == 0 else {"failed": r.stderr.strip()[-300:]}
        p, k = row["plain"], row["chunked"]
        same = "loss" in p and abs(p["loss"] - k["loss"]) <= 1e-4 * abs(p["loss"])
        row["same_loss"] = same if "loss" in p else None
        rows.append(row)

        def fmt(x):
            return f"{x['peak_rss_mb_above_start']:8.0f} MB {x['seconds']:7.2f} s" if "seconds" in x else \
                f"{next(iter(x.values()))[:40]:>28s}"
        print(f"batch {b:6d}  plain {fmt(p)}   chunked {fmt(k)}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "batch_memory", "dim": args.dim, "chunk": args.chunk,
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
