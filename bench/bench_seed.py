"""The seed benchmark: SQuAD v1.1 dev and the QuAC test part together, out-of-500 top-1 / top-10.

    PROJHEAD_DATA=../shared/data python bench/bench_seed.py [--seeds 0 1 2] [--work bench/work]
        [--heads-dir bench/work/heads] [--out bench/results/seed]
    python bench/bench_seed.py --merge bench/results/seed-s0.json bench/results/seed-s1.json ... --out bench/results/seed

Question -> sentence retrieval on both datasets of the benchmark this project was built around,
all-MiniLM-L6-v2: SQuAD v1.1 dev (10,570 questions) and QuAC ``val-test`` (the question alone,
no history), blocks of 500 consecutive questions within each dataset, candidates = the distinct
gold sentences of the block; "both" pools every question of the two (a mean over 11,789
questions, SQuAD weighing 9 to 1). Systems: the frozen encoder, BM25, and the default head
(``projhead.select.auto_train``, what ``projhead train`` saves) trained

- on SQuAD v1.1 train (87,599 questions; the head ``bench_squad.py`` saved in
  ``--heads-dir``/seedN is reused when this version of projhead trained it, else trained and
  saved there the same way),
- on QuAC ``val-train`` (4,649 questions, the question alone),
- on both: the two training caches side by side in one cache in memory (their vectors as
  cached; a sentence in both kept once; groups kept apart by a dataset prefix), as
  ``projhead cache`` of the two files' pairs together would hold them.

For the head trained on both against the SQuAD-only head on SQuAD dev, the paired bootstrap of
the per-question top-1 difference (95% interval; ``projhead.metrics.paired_bootstrap``). The
dialog heads, which read the turns of QuAC questions, have their own table
(``bench_quac_dialog.py``). Prints one line per (system, seed); writes OUT.json and OUT.md.
``--merge``: the table of several runs' OUT.json (e.g. one seed per run, side by side on two
cores), the frozen and BM25 rows taken once; nothing is trained.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import projhead
from projhead.cache import cache_dataset
from projhead.cache_reader import Cache
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.hashing import columns_sha256
from projhead.metrics import PER_QUERY, bm25_scorer, dense_scorer, paired_bootstrap, system_ranks
from projhead.select import auto_train
from reuse import head_reusable, stamp


def side_by_side(a: Cache, b: Cache, names=("squad", "quac")) -> Cache:
    """Two caches of one encoder as one, in memory, as ``projhead cache`` of both files' pairs
    would hold them: queries of ``b`` after those of ``a``, ``b``'s contexts appended unless ``a``
    holds the same text (then its gold points at ``a``'s row), groups prefixed with the dataset name."""
    if a.encoder_info != b.encoder_info or a.dim != b.dim:
        raise SystemExit(f"{a.path} and {b.path}: vectors of different encoders or settings cannot be trained together")
    rows = {t: i for i, t in enumerate(a.context_texts)}
    new = [j for j, t in enumerate(b.context_texts) if t not in rows]
    where = np.array([rows.get(t, -1) for t in b.context_texts])
    where[new] = len(a.contexts) + np.arange(len(new))
    arrays = {
        "queries/vectors": np.concatenate([a.queries, b.queries]),
        "contexts/vectors": np.concatenate([a.contexts, b.contexts[new]]),
        "queries/context": np.concatenate([a.q2c, where[b.q2c]]),
        "queries/text": list(a.query_texts) + list(b.query_texts),
        "queries/id": [f"{names[0]}:{i}" for i in a.query_ids] + [f"{names[1]}:{i}" for i in b.query_ids],
        "queries/group": [f"{names[0]}:{g}" for g in a.groups] + [f"{names[1]}:{g}" for g in b.groups],
        "contexts/text": list(a.context_texts) + [b.context_texts[j] for j in new],
    }
    fingerprint = columns_sha256(texts=[a.attrs["fingerprint"], b.attrs["fingerprint"]])
    attrs = dict(a.attrs, dataset="+".join(names), fingerprint=fingerprint, n_queries=str(len(arrays["queries/context"])),
                 n_contexts=str(len(arrays["contexts/vectors"])))
    return Cache(Path(f"{a.path.stem}+{b.path.stem}"), attrs, arrays)


def block_ranks(cache: Cache, head=None) -> np.ndarray:
    q = cache.queries if head is None else head.encode_queries(cache.queries)
    c = cache.contexts if head is None else head.encode_contexts(cache.contexts)
    return system_ranks(dense_scorer(q, c), cache.q2c, full=False).block


def summary(ranks: dict) -> dict:
    """top-1 / top-10 (percent) per dataset and over both, from per-question block ranks."""
    every = np.concatenate(list(ranks.values()))
    out = {name: {k: 100 * float(PER_QUERY[k](r).mean()) for k in ("top1", "top10")} for name, r in ranks.items()}
    out["both"] = {k: 100 * float(PER_QUERY[k](every).mean()) for k in ("top1", "top10")}
    return out


def trained(train: Cache, seed: int, saved: Path | None) -> tuple:
    if saved is not None and head_reusable(saved):
        log = json.loads((saved / "train_log.json").read_text())
        return projhead.load_head(saved), log, None
    t0 = time.perf_counter()
    head, log = auto_train(train, projhead.TrainConfig(seed=seed), out=saved, progress=False)
    if saved is not None:
        stamp(saved)
    return head, log, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--heads-dir", default="bench/work/heads", help="bench_squad.py's saved SQuAD heads (seedN)")
    ap.add_argument("--out", default="bench/results/seed")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="only the table of these runs' results")
    args = ap.parse_args(argv)
    if args.merge:
        return write(merged(args.merge), Path(args.out))
    data = os.environ.get("PROJHEAD_DATA")
    if not data:
        raise SystemExit("set PROJHEAD_DATA to the shared data folder (it holds squad/ and quac/)")
    work = Path(args.work)
    enc = get_encoder(DEFAULT_ENCODER)
    train = {"squad": cache_dataset("squad-v1.1", "train", "sentence", enc, work, data),
             "quac": cache_dataset("quac", "val-train", "sentence", enc, work, data)}
    test = {"squad": cache_dataset("squad-v1.1", "dev", "sentence", enc, work, data),
            "quac": cache_dataset("quac", "val-test", "sentence", enc, work, data)}
    train["both"] = side_by_side(train["squad"], train["quac"])
    rows = []

    def report(system, seed, ranks, extra=""):
        s = summary(ranks)
        rows.append({"system": system, "seed": seed, **s})
        print(f"{system:<22} seed {seed if seed is not None else '-'}  " + "  ".join(
            f"{k} {v['top1']:5.1f} / {v['top10']:5.1f}" for k, v in s.items()) + extra, flush=True)

    report("frozen", None, {k: block_ranks(c) for k, c in test.items()})
    report("BM25", None, {k: system_ranks(bm25_scorer(list(c.query_texts), list(c.context_texts)), c.q2c,
                                          full=False).block for k, c in test.items()})
    compare = []
    for seed in args.seeds:
        heads = {}
        for on, cache in train.items():
            saved = Path(args.heads_dir) / f"seed{seed}" if on == "squad" else None
            head, log, seconds = trained(cache, seed, saved)
            kept = "identity" if head.config.passthrough else log["selection"].get("chosen", "head")
            ranks = {k: block_ranks(c, head) for k, c in test.items()}
            heads[on] = ranks
            report(f"head trained on {on}", seed, ranks,
                   f"  ({kept}; {'reused' if seconds is None else f'{seconds:.0f} s'})")
            rows[-1].update(kept=kept, train_seconds=seconds)
        b = paired_bootstrap(PER_QUERY["top1"](heads["both"]["squad"]), PER_QUERY["top1"](heads["squad"]["squad"]),
                             seed=seed)
        compare.append({"seed": seed, **{k: 100 * b[k] for k in ("gain", "low", "high")}})
        print(f"SQuAD dev top-1, head on both - head on SQuAD, seed {seed}: {100 * b['gain']:+.2f} "
              f"(95% interval {100 * b['low']:+.2f} to {100 * b['high']:+.2f})", flush=True)
    write({"encoder": DEFAULT_ENCODER, "seeds": args.seeds, "rows": rows, "both_vs_squad_on_squad": compare,
           "test_queries": {k: len(c.q2c) for k, c in test.items()}}, Path(args.out))


def merged(paths: list[str]) -> dict:
    """One result of several runs' JSON: every seed's rows, the frozen and BM25 rows once."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({json.dumps([r["encoder"], r["test_queries"]], sort_keys=True) for r in runs}) != 1:
        raise SystemExit(f"{', '.join(paths)}: runs of other encoders or test sets cannot be merged")
    fixed = [json.dumps([row for row in r["rows"] if row["seed"] is None], sort_keys=True) for r in runs]
    if len(set(fixed)) != 1:
        raise SystemExit(f"{', '.join(paths)}: the frozen and BM25 rows differ between runs: other data or code")
    seeds = [s for r in runs for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"{', '.join(paths)}: a seed appears in more than one run ({seeds})")
    rows = [row for i, r in enumerate(runs) for row in r["rows"] if row["seed"] is not None or i == 0]
    return {"encoder": runs[0]["encoder"], "seeds": seeds, "rows": rows, "test_queries": runs[0]["test_queries"],
            "both_vs_squad_on_squad": [c for r in runs for c in r["both_vs_squad_on_squad"]]}


def write(result: dict, out: Path) -> None:
    rows, compare, n = result["rows"], result["both_vs_squad_on_squad"], result["test_queries"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    lines = [f"SQuAD v1.1 dev ({n['squad']} questions) and QuAC val-test ({n['quac']}, "
             f"the question alone), sentence contexts, {result['encoder']}; out-of-500 top-1 / top-10 (blocks within "
             f"each dataset; both: every question pooled); heads: mean of seeds {', '.join(map(str, result['seeds']))}", "",
             "| system | SQuAD dev | QuAC test | both | kept (per seed) |", "|---|---|---|---|---|"]
    for s in systems:
        rs = [r for r in rows if r["system"] == s]
        cell = lambda k: f"{np.mean([r[k]['top1'] for r in rs]):.1f} / {np.mean([r[k]['top10'] for r in rs]):.1f}"
        lines.append(f"| {s} | {cell('squad')} | {cell('quac')} | {cell('both')} | "
                     f"{', '.join(r.get('kept', '') for r in rs)} |")
    lines += ["", "SQuAD dev top-1, head trained on both minus head trained on SQuAD (points, 95% paired-bootstrap "
              "interval): " + "; ".join(f"seed {c['seed']} {c['gain']:+.2f} ({c['low']:+.2f} to {c['high']:+.2f})"
                                        for c in compare)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
