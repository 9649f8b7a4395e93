"""How long the command takes to start: `projhead --help` and `projhead info`.

    python bench/bench_startup.py [--cache bench/work/squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5] [--runs 7]

Each command runs as a fresh process (as a user types it), ``--runs`` times; the best and the
median wall time are printed beside a bare ``python -c pass``, with whether the command
imported torch (it should not: neither needs it). Writes bench/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# runs the CLI in a fresh interpreter and reports whether torch got imported
PROBE = ("import sys; from projhead.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules, file=sys.stderr)")


def timed(argv: list[str], runs: int) -> dict:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    return {"best_s": min(walls), "median_s": statistics.median(walls), "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="bench/work/squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5",
                    help="a cache for `projhead info` (made by `projhead cache`)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default="bench/results/startup.json")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("projhead")
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "projhead --help": [str(exe), "--help"]}
    if Path(args.cache).is_file():
        commands["projhead info"] = [str(exe), "info", args.cache]
    else:
        print(f"{args.cache}: no such cache; `projhead info` skipped", file=sys.stderr)
    rows = []
    for name, argv in commands.items():
        row = {"command": name, **timed(argv, args.runs)}
        if name != "python -c pass":
            probe = subprocess.run([sys.executable, "-c", PROBE, *argv[1:]], capture_output=True, text=True, check=True)
            row["imports_torch"] = "TORCH True" in probe.stderr
        rows.append(row)
        print(f"{name:16s} best {row['best_s']:.3f}s  median {row['median_s']:.3f}s"
              + (f"  imports torch: {row['imports_torch']}" if "imports_torch" in row else ""), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "startup", "machine": {"cpu_count": os.cpu_count(),
                                                               "platform": platform.platform()}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
