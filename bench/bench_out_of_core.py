"""Out-of-core training: a synthetic cache bigger than memory-friendly, trained with --stream.

    python bench/bench_out_of_core.py [--rows 5000000] [--dim 384] [--work bench/work] [--compare REF]
        [--max-batches N] [--train-args ...]

Writes a synthetic projhead cache of --rows queries and --rows contexts, float16 (queries
are a fixed random near-identity map of their context plus noise, so a head has something to
learn) with projhead's own cache writer, block by block, reporting the writer's peak RSS. Then runs ``projhead train --stream``
on it for one epoch in a child process and reports the child's peak RSS, the file size,
what the in-memory trainer would hold (the vectors as float32), and pairs per second.
``--compare REF`` then trains the same way with the projhead of git commit REF (``git archive``
into the work folder), one run after the other on the same cache: the two rows side by side.
``--max-batches N`` stops each epoch after N batches (an epoch of 5M pairs takes half an hour
on 2 cores): pairs per second are over the batches run, peak RSS includes the dev ranking.
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


class Column:
    """A text column made on demand (``f"{prefix}{i // div}"``): what the fingerprint hashes
    without 5M strings in memory."""

    def __init__(self, prefix: str, n: int, div: int = 1):
        self.prefix, self.n, self.div = prefix, n, div

    def __len__(self):
        return self.n

    def __iter__(self):
        return (f"{self.prefix}{i // self.div}" for i in range(self.n))

    def block(self, a: int, b: int) -> list[str]:
        return [f"{self.prefix}{i // self.div}" for i in range(a, b)]


def synthetic_blocks(rows: int, dim: int, chunk: int, seed: int):
    """(start, stop, queries, contexts) blocks of the synthetic task: unit contexts, and queries
    a fixed random near-identity map of their context plus noise (a head has something to learn)."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim, dtype=np.float32) + 0.3 * rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    for a in range(0, rows, chunk):
        b = min(a + chunk, rows)
        ctx = rng.normal(size=(b - a, dim)).astype(np.float32)
        ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
        que = ctx @ mix + 4.0 * rng.normal(size=ctx.shape).astype(np.float32) / np.sqrt(dim)
        que /= np.linalg.norm(que, axis=1, keepdims=True)
        yield a, b, que, ctx


def write_synthetic_cache(path: Path, rows: int, dim: int, chunk: int = 65_536, seed: int = 0) -> float:
    """The cache through projhead's own writer (``CacheWriter``), block by block."""
    from projhead.cache import CacheWriter, cache_attrs
    from projhead.data import content_sha256

    cols = {"queries/text": Column("q", rows), "queries/id": Column("id", rows),
            "queries/group": Column("g", rows, 100), "contexts/text": Column("c", rows)}
    t0 = time.perf_counter()
    info = {"name": "synthetic:planted", "resolved": "bench_out_of_core.py", "settings": {"seed": seed},
            "weights_sha256": "", "build": {}, "versions": {}}
    with CacheWriter(path, rows, rows, dim, "float16") as w:
        for a, b, que, ctx in synthetic_blocks(rows, dim, chunk, seed):
            w.write("queries/vectors", a, que)
            w.write("contexts/vectors", a, ctx)
            w.write("queries/context", a, np.arange(a, b, dtype=np.int64))
            for key, col in cols.items():
                w.write(key, a, col.block(a, b))
        fingerprint = content_sha256(*cols.values(), np.arange(rows, dtype=np.int64))
        meta = {"dataset": "synthetic", "split": "train", "granularity": "sentence"}
        w.finish(cache_attrs(meta, info, fingerprint, time.perf_counter() - t0))
    return time.perf_counter() - t0


def write_user_files(folder: Path, rows: int, dim: int, chunk: int = 65_536, seed: int = 0) -> dict:
    """What a user with an embedding API has: pairs.jsonl (query, context, id, group) and
    vectors.npy (float16, queries then contexts) with vectors.jsonl naming each row's text and
    role. The same synthetic task as the cache above."""
    folder.mkdir(parents=True, exist_ok=True)
    vec = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(2 * rows, dim))
    t0 = time.perf_counter()
    with open(folder / "pairs.jsonl", "w") as pairs, open(folder / "vectors.jsonl", "w") as keys:
        for a, b, que, ctx in synthetic_blocks(rows, dim, chunk, seed):
            vec[a:b], vec[rows + a:rows + b] = que, ctx
            pairs.writelines(f'{{"query": "q{i}", "context": "c{i}", "id": "id{i}", "group": "g{i // 100}"}}\n'
                             for i in range(a, b))
            keys.writelines(f'{{"text": "q{i}", "role": "query"}}\n' for i in range(a, b))
        keys.writelines(f'{{"text": "c{i}", "role": "context"}}\n' for i in range(rows))
    vec.flush()
    del vec
    return {"seconds": time.perf_counter() - t0,
            "bytes": sum((folder / n).stat().st_size for n in ("pairs.jsonl", "vectors.npy", "vectors.jsonl"))}


# In the training child: each streamed epoch stops after MAX batches (0: the whole epoch), and
# the seconds spent in the epoch's batches (reading and training steps, not the dev ranking) are
# printed. Patched onto StreamSource, so it works the same on the projhead of another commit.
STREAM_PATCH = """
import sys, time
try:
    import projhead.stream as B
except ImportError:  # a projhead whose streamed source lived in batches.py
    import projhead.batches as B
MAX = int(sys.argv.pop(1))
_init, _epoch = B.StreamSource.__init__, B.StreamSource.epoch
def init(self, *a, **k):
    _init(self, *a, **k)
    self.steps_per_epoch = min(self.steps_per_epoch, MAX or self.steps_per_epoch)
def epoch(self, rng):
    t, n = time.perf_counter(), 0
    for batch in _epoch(self, rng):
        n += 1
        yield batch
    print('EPOCH_BATCHES', n, time.perf_counter() - t, file=sys.stderr)
B.StreamSource.__init__, B.StreamSource.epoch = init, epoch
"""


def child(cmd: list[str], code_from: Path | None = None, max_batches: int | None = None) -> dict:
    """Run a projhead command in a fresh process: wall time and that process's peak RSS.
    ``code_from``: a folder holding another projhead package to run instead of this one;
    ``max_batches``: a streamed training run, timed (``STREAM_PATCH``)."""
    code = ("import resource, sys; sys.path.insert(0, sys.argv.pop(1)) if sys.argv[1] else sys.argv.pop(1)\n"
            + (STREAM_PATCH if max_batches is not None else "")
            + "from projhead.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    extra = [str(max_batches)] if max_batches is not None else []
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, str(code_from or ""), *extra, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"projhead {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    kb = int(r.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    row = {"command": "projhead " + " ".join(cmd), "seconds": wall, "peak_rss_gb": kb / 1e6}
    if "EPOCH_BATCHES" in r.stderr:
        n, secs = r.stderr.rsplit("EPOCH_BATCHES", 1)[1].split()[:2]
        row.update(batches=int(n), batch_seconds=float(secs))
    return row


def projhead_at(ref: str, work: Path) -> Path:
    """The projhead package of git commit ``ref``, unpacked under ``work`` (once)."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], capture_output=True, text=True, check=True).stdout.strip()
    folder = work / f"projhead-{sha}"
    if not (folder / "projhead").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "projhead"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def train_streamed(cache: Path, head_dir: Path, args, ref: str | None = None) -> dict:
    """One epoch of ``projhead train --stream`` in a fresh process (with the projhead of git
    commit ``ref`` if given; ``--max-batches``: the first batches of the epoch only): its peak
    RSS, epoch seconds, and pairs per second over the epoch's batches."""
    cmd = ["train", str(cache), "--out", str(head_dir), "--no-auto", "--stream", "--epochs", "1",
           "--batch-size", str(args.batch_size), "--dev-fraction", "0.01", "--quiet", "--restart", *args.train_args.split()]
    row = child(cmd, projhead_at(ref, Path(args.work)) if ref else None, args.max_batches)
    log = json.loads((head_dir / "train_log.json").read_text())
    ep = log["epochs"][0]
    code = f"{ref} ({projhead_at(ref, Path(args.work)).name.split('-', 1)[1]})" if ref else "this checkout"
    row.update(code=code, n_train=log["n_train"], n_dev=log["n_dev"], epoch_seconds=ep["seconds"],
               pairs_per_second=row["batches"] * args.batch_size / row["batch_seconds"],
               dev_frozen=log["frozen_dev"], dev_head=ep["dev"])
    print(json.dumps({k: v for k, v in row.items() if not k.startswith("dev_")}), flush=True)
    return row


def side_by_side(res: dict, cache: Path, head_dir: Path, args) -> None:
    """``res["train"]`` with this checkout; with ``--compare REF`` also ``res["train_ref"]``
    (same cache, same settings, right after) and the ratio of their epoch seconds."""
    res["train"] = train_streamed(cache, head_dir, args)
    if args.compare:
        res["train_ref"] = train_streamed(cache, head_dir.with_name(head_dir.name + "-ref"), args, args.compare)
        res["seconds_per_pair_ratio"] = res["train_ref"]["pairs_per_second"] / res["train"]["pairs_per_second"]
        res["peak_rss_ratio"] = res["train"]["peak_rss_gb"] / res["train_ref"]["peak_rss_gb"]


def byo(args) -> None:
    """A user's vectors become a cache through `projhead cache`, then `projhead train --stream`."""
    folder = Path(args.work) / f"byo-{args.rows}x{args.dim}"
    made = None
    if not (folder / "vectors.jsonl").exists():
        # in a process of its own: a child inherits its parent's peak RSS on Linux, so the
        # measured commands must start from a small parent
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-user-files", str(folder), "--rows", str(args.rows),
                        "--dim", str(args.dim)], check=True)
        made = {"seconds": time.perf_counter() - t0, "bytes": sum(p.stat().st_size for p in folder.iterdir())}
    cache = folder / "cache.h5"
    res = {"bench": "out_of_core_byo", "rows": args.rows, "dim": args.dim, "files": made}
    res["cache"] = child(["cache", "--dataset", "jsonl", "--data", str(folder / "pairs.jsonl"), "--encoder",
                          "vectors:synthetic", "--vectors", str(folder / "vectors.npy"), "--dtype", "float16",
                          "--out", str(cache), "--quiet", "--overwrite"])
    res["cache"]["file_gb"] = cache.stat().st_size / 1e9
    print(json.dumps(res["cache"]), flush=True)
    if not args.no_train:
        side_by_side(res, cache, folder / "head", args)
    out = Path(args.out).with_name("out_of_core_byo.json")
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--out", default="bench/results/out_of_core.json")
    ap.add_argument("--byo", action="store_true",
                    help="your own vectors: pairs.jsonl + vectors.npy through `projhead cache --encoder vectors:NAME`, "
                         "then `projhead train --stream`, each with its peak RSS: bench/results/out_of_core_byo.json")
    ap.add_argument("--no-train", action="store_true", help="--byo: only the cache step")
    ap.add_argument("--compare", default=None, metavar="REF",
                    help="also train with the projhead of git commit REF, right after, on the same cache")
    ap.add_argument("--max-batches", type=int, default=0,
                    help="stop the epoch after this many batches (0: the whole epoch); pairs per second over them")
    ap.add_argument("--train-args", default="",
                    help="more `projhead train` options for both runs, one string (e.g. '--stream-chunk 65536')")
    ap.add_argument("--make-user-files", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--make-cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--write-only", action="store_true",
                    help="only write the cache (a fresh file) and report the writer: bench/results/out_of_core_write.json")
    args = ap.parse_args()
    if args.make_user_files:
        return write_user_files(Path(args.make_user_files), args.rows, args.dim)
    if args.make_cache:
        path = Path(args.make_cache)
        write_s = write_synthetic_cache(path, args.rows, args.dim)
        write_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {write_s:.0f}s, peak RSS {write_rss:.2f} GB",
              flush=True)
        return print("WRITTEN", json.dumps([write_s, write_rss]))
    if args.byo:
        return byo(args)
    path = Path(args.work) / f"synthetic-{args.rows}x{args.dim}-fp16.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_s = write_rss = None
    if args.write_only and path.exists():
        path.unlink()
    if not path.exists():
        # in a process of its own: a child inherits its parent's peak RSS on Linux, so the
        # measured commands must start from a small parent
        r = subprocess.run([sys.executable, __file__, "--make-cache", str(path), "--rows", str(args.rows),
                            "--dim", str(args.dim)], check=True, capture_output=True, text=True)
        print(r.stdout.split("WRITTEN")[0].strip(), flush=True)
        write_s, write_rss = json.loads(r.stdout.rsplit("WRITTEN", 1)[1])
    if args.write_only:
        res = {"bench": "out_of_core_write", "rows": args.rows, "dim": args.dim, "dtype": "float16",
               "file_gb": path.stat().st_size / 1e9, "write_seconds": write_s, "write_peak_rss_gb": write_rss,
               "vectors_float32_gb": 2 * args.rows * args.dim * 4 / 1e9}
        print(json.dumps(res, indent=1))
        Path("bench/results/out_of_core_write.json").write_text(json.dumps(res, indent=1))
        return
    res = {"bench": "out_of_core", "rows": args.rows, "dim": args.dim, "dtype": "float16",
           "file_gb": path.stat().st_size / 1e9, "in_memory_float32_gb": 2 * args.rows * args.dim * 4 / 1e9,
           "batch_size": args.batch_size, "write_seconds": write_s, "write_peak_rss_gb": write_rss}
    # what a child holds before reading any data: torch, projhead, h5py imported
    base = subprocess.run([sys.executable, "-c", "import resource, projhead.train, projhead.cli, h5py; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True)
    res["import_rss_gb"] = int(base.stdout.strip()) / 1e6
    side_by_side(res, path, Path(args.work) / "heads" / "out-of-core", args)
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
