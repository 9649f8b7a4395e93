"""Random byte damage to a cache file: what the reader makes of it, by cache format.

    PROJHEAD_DATA=../shared/data python bench/bench_damage.py [--n 400] [--pairs 200] [--timeout 60]

Caches the first PAIRS SQuAD v1.1 dev questions and their sentences (all-MiniLM-L6-v2), and a
copy rewritten as caches of format 2 stored texts and string attributes: HDF5 variable-length
strings, in the global heap that no HDF5 checksum covers (today's format packs texts as
checksummed bytes and writes string attributes fixed-length). For each format, N damaged
copies (1 to 8 bytes overwritten at random places with random values, the same seeded draws for
both formats, scaled to each file's length), each opened and read whole (``open_cache``, every
section read) in a worker process; once with the places anywhere in the file and once outside
the vectors' chunks (most of the file's bytes, checksummed alike in both formats): in the
header, the metadata, the texts and the indexes, where the formats differ. Outcomes: ``error`` (a CacheError naming the file),
``same`` (the original data and header: the damage hit no data), ``other data`` and ``other
exception`` (defects), ``hang`` (no answer in TIMEOUT seconds: the worker is killed, a new one
started). Writes bench/results/damage.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUTCOMES = ("error", "same", "other data", "other exception", "hang")


def read_all(path):
    """Everything a user of the cache reads: header, pairs, every section."""
    from projhead.cache import open_cache

    c = open_cache(path)
    out = {"attrs": {k: v for k, v in c.attrs.items() if k != "n_distractors"},
           "queries": c.queries, "contexts": c.contexts, "q2c": c.q2c, "query_texts": list(c.query_texts),
           "context_texts": list(c.context_texts), "ids": list(c.query_ids), "groups": list(c.groups)}
    for name, instances in c.sections.items():
        if name != "pairs":
            for w in instances:
                out[w] = c.read(name, w.split("/", 1)[1] if "/" in w else None)
    return out


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def worker(good: str) -> None:
    """Read paths from stdin, answer one outcome a line."""
    from projhead.cache import CacheError

    want = read_all(good)
    for line in sys.stdin:
        path = line.strip()
        try:
            got = read_all(path)
            differ = [k for k in want if not same(want[k], got.get(k))] + [k for k in got if k not in want]
            differ += [f"attrs.{k}" for k in want["attrs"] if "attrs" in differ and not same(want["attrs"][k],
                                                                                            got["attrs"].get(k))]
            outcome = "same" if not differ else "other data\t" + ", ".join(differ)
        except CacheError as e:
            outcome = "error" if Path(path).name in str(e) else "other exception"
        except Exception:  # noqa: BLE001: what the bench counts
            outcome = "other exception"
        print(outcome, flush=True)  # one line: outcome, then what differs


class Worker:
    def __init__(self, good: Path):
        self.good = good
        self.start()

    def start(self):
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", str(self.good)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def ask(self, path: Path, timeout: float) -> str:
        self.p.stdin.write(f"{path}\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if ready:
            return self.p.stdout.readline().strip()
        self.p.kill()
        self.p.wait()
        self.start()
        return "hang"

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def damages(n: int, seed: int = 0) -> list[list[tuple[float, int]]]:
    """n damages: 1 to 8 (place as a fraction of the file, byte value)."""
    rng = np.random.default_rng(seed)
    return [[(float(rng.random()), int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 9)))]
            for _ in range(n)]


def outside_vectors(path: Path) -> np.ndarray:
    """Byte positions of ``path`` outside the chunks of its vectors datasets."""
    import h5py

    keep = np.ones(path.stat().st_size, bool)
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if name.endswith("vectors") and hasattr(obj, "id") else None)
        for name in names:
            d = f[name].id
            for i in range(d.get_num_chunks()):
                info = d.get_chunk_info(i)
                keep[info.byte_offset:info.byte_offset + info.size] = False
    return np.flatnonzero(keep)


def run(good: Path, draws, timeout: float, work: Path, places: np.ndarray | None = None) -> dict:
    """Every damage of ``draws`` to a copy of ``good``, read by a worker; ``places``: the byte
    positions damage may hit (None: anywhere)."""
    raw0 = good.read_bytes()
    places = np.arange(len(raw0)) if places is None else places
    w = Worker(good)
    counts, examples, t0 = {k: 0 for k in OUTCOMES}, {}, time.perf_counter()
    # the worker's first answer waits for its imports and the good file: not timed as a hang
    first = work / "bad.h5"
    first.write_bytes(raw0)
    w.ask(first, 600)
    for i, flips in enumerate(draws):
        raw = bytearray(raw0)
        for at, val in flips:
            raw[places[int(at * len(places))]] = val
        bad = work / "bad.h5"
        bad.write_bytes(bytes(raw))
        outcome, _, detail = w.ask(bad, timeout).partition("\t")
        counts[outcome] += 1
        if outcome not in ("error", "same"):
            examples.setdefault(outcome, []).append([i, detail] if detail else i)
    w.close()
    return {"file_bytes": len(raw0), "bytes_damaged_at": len(places), "counts": counts, "defect_draws": examples,
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/damage")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from conftest import as_format_2  # the format-2 layout, as the tests write it

    from bench_cache import texts_sample
    from projhead.cache import build_cache, open_cache
    from projhead.encoders import get_encoder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        now = tmp / "format3.h5"
        build_cache(texts_sample(args.pairs), get_encoder("st:all-MiniLM-L6-v2", device="cpu"), now, progress=False)
        old = tmp / "format2.h5"
        old.write_bytes(now.read_bytes())
        as_format_2(old)
        assert open_cache(old).attrs["format_version"] == 2
        draws = damages(args.n, args.seed)
        result = {"pairs": args.pairs, "n": args.n, "seed": args.seed, "timeout_s": args.timeout,
                  "machine": platform.platform(), "formats": {}}
        import h5py
        result["versions"] = {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}
        for name, path in (("3 (today)", now), ("2 (before)", old)):
            for where in ("anywhere", "outside the vectors"):
                places = outside_vectors(path) if where != "anywhere" else None
                result["formats"][f"{name}, {where}"] = r = run(path, draws, args.timeout, tmp, places)
                print(f"format {name}, {where}: {r['bytes_damaged_at']} of {r['file_bytes']} bytes; "
                      + ", ".join(f"{k} {v}" for k, v in r["counts"].items()) + f" ({r['seconds']} s)", flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"Random damage to a cache of {args.pairs} SQuAD v1.1 dev pairs: {args.n} damaged copies "
             f"(1 to 8 random bytes, seed {args.seed}), each read whole; hang: no answer in {args.timeout:g} s "
             f"(h5py {result['versions']['h5py']}, HDF5 {result['versions']['hdf5']}).", "",
             "| format, damage | bytes it may hit (of the file's) | " + " | ".join(OUTCOMES) + " |",
             "|---|---|" + "---|" * len(OUTCOMES)]
    for name, r in result["formats"].items():
        lines.append(f"| {name} | {r['bytes_damaged_at']} of {r['file_bytes']} | "
                     + " | ".join(str(r["counts"][k]) for k in OUTCOMES) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
