"""The corpus in model selection: ``projhead train`` with and without the texts it will search.

    PROJHEAD_DATA=../shared/data taskset -c 1 python bench/bench_corpus.py [--datasets boolq fiqa]
        [--sizes 300 1000] [--seeds 0 1 2] [--corpus-sample N] [--alphas 0.9 auto 0.5] [--out bench/results/corpus]

BoolQ (questions over Wikipedia passages, split by article), FiQA (finance questions and
answer posts) and QuAC (the question alone, sentence contexts; ``val-train`` / ``val-test``, split
by dialog), each with its own texts as the corpus: every passage (answer, gold sentence) of the file, cached
with ``projhead cache --corpus`` beside the train split and beside the test split. Training
sets are subsets of the train split by group (seeded, ``bench_small_data.subset_rows``), at
each size the split has. The test queries are ranked against the whole corpus (the test
split's contexts and every other passage): full-corpus nDCG@10, as a user's index would be.

Systems:
- ``frozen``: all-MiniLM-L6-v2 as it is.
- ``projhead``: ``projhead train`` defaults, held-out queries ranked against the training
  subset's contexts only (what selection did before the corpus existed).
- ``projhead-corpus``: the same with the corpus: held-out queries also ranked against every
  other passage (the train split's contexts outside the subset, which are texts without
  queries for it, and the cache's corpus section); ``--corpus-sample N``: a seeded sample of N.
- ``projhead-dense-only``: ``projhead`` with ``--dense-only`` (a head kept on its own is not
  also judged fused with BM25).
- ``adapter-lr1e-3``: LlamaIndex's linear adapter recipe at lr 1e-3 (``bench_small_data.adapter``).
- ``adapter-judged`` / ``adapter-judged-corpus``: that recipe, fixed in advance, kept only when
  every training query scored out of fold says it helps: trained on four of model selection's
  five folds, each fold's queries ranked by that fold's adapter and by the frozen encoder
  (against the subset's contexts; with ``-corpus`` also every other passage, as
  ``projhead-corpus``), the paired bootstrap of selection over all of them; kept (trained again
  on every pair) if its 95% interval is above 0. Nothing is chosen, so no query is spent on
  choosing: the most held-out evidence a decision at this size can have.

``--alphas A [A ...]``: the two ``projhead`` systems once per interpolation (``projhead train
--alpha A``: the head saved, and decided on, as frozen + A x (trained - frozen); ``auto``: chosen
by model selection), as ``projhead-alphaA`` / ``projhead-corpus-alphaA``; the default's own
(0.9) keeps its plain name.

Prints one line per run and writes ``OUT.json`` and ``OUT.md`` (means over seeds).
``--merge A.json B.json ...``: one table of several runs (datasets or sizes run apart); nothing is trained.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_small_data import adapter, subset_rows  # noqa: E402

import projhead  # noqa: E402
from projhead.cache import build_cache, open_cache  # noqa: E402
from projhead.corpus import CorpusFile, load_corpus, sample_rows, with_corpus  # noqa: E402
from projhead.data import load_pairs  # noqa: E402
from projhead.encoders import DEFAULT_ENCODER, get_encoder  # noqa: E402
from projhead.batches import held_out  # noqa: E402
from projhead.metrics import PER_QUERY, paired_bootstrap  # noqa: E402
from projhead.select import auto_train, group_folds  # noqa: E402
from projhead.train import split_groups  # noqa: E402
from projhead.train import ALPHA  # noqa: E402

WORK = Path("bench/work")
SPLITS = {"quac": ("val-train", "val-test")}  # (train, test) split names where not ("train", "dev")


def caches(dataset: str, enc) -> tuple:
    """The train and test caches of ``dataset``, each with every text of the file as its corpus."""
    splits = SPLITS.get(dataset, ("train", "dev"))
    train, test = load_pairs(dataset, splits[0]), load_pairs(dataset, splits[1])
    corpus = WORK / f"corpus-{dataset}.jsonl"
    texts = list(dict.fromkeys(train.contexts + test.contexts))
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = []
    for split, pairs in (("train", train), ("test", test)):
        path = WORK / f"{dataset}-{split}-corpus-{DEFAULT_ENCODER.split(':')[-1]}.h5"
        t0 = time.perf_counter()
        r = build_cache(pairs, enc, path, progress=False, corpus=CorpusFile(corpus))
        print(f"{path}: {r.status} in {time.perf_counter() - t0:.0f}s", flush=True)
        out.append(open_cache(path))
    return out[0], out[1], len(texts)


def metrics(results: dict, system: str) -> dict:
    r = results[system]["full_corpus"]
    return {"nDCG@10": r["nDCG@10"], "MRR@10": r["MRR@10"], "R@1": r["R@1"], "R@10": r["R@10"]}


def with_distractors(train, rows: np.ndarray, corpus: tuple, sample: int | None, seed: int):
    """The subset ``rows`` of ``train`` with the texts it has no query for attached as
    distractors: the train contexts outside the subset, then the cache's corpus rows."""
    sub = train.subset(rows)
    others = np.setdiff1d(np.arange(len(train.contexts)), train.q2c[rows])
    vecs = np.concatenate([train.contexts[others], corpus[0]])
    texts = [train.context_texts[i] for i in others] + corpus[1]
    keep = sample_rows(len(texts), sample, seed)
    sub.attach_distractors(vecs[keep], [texts[i] for i in keep])
    return sub


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["boolq", "fiqa"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--systems", nargs="+", default=["adapter-lr1e-3", "projhead", "projhead-corpus"])
    ap.add_argument("--corpus-sample", type=int, default=None,
                    help="projhead-corpus: a seeded sample of this many distractors (default: all)")
    ap.add_argument("--alphas", type=lambda v: v if v == "auto" else float(v), nargs="+", default=None,
                    help="the projhead systems once per --alpha, a number or auto (default: projhead train's own)")
    ap.add_argument("--out", default="bench/results/corpus")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="only the table of these runs' results")
    args = ap.parse_args()
    if args.merge:
        return write(merged(args.merge), Path(args.out))
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    rows, frozen = [], {}
    for ds in args.datasets:
        train, test, n_texts = caches(ds, enc)
        test_all = with_corpus(test)  # the test queries against every text of the file
        corpus = load_corpus(train)[:2]
        frozen[ds] = {"texts": n_texts, "test_queries": len(test.q2c), "distractors": int(test_all.attrs["n_distractors"]),
                      **metrics(projhead.evaluate_cache(test_all), "frozen"),
                      "labelled_only": metrics(projhead.evaluate_cache(test), "frozen")}
        print(f"{ds}: {n_texts} texts, {len(train.q2c)} train / {len(test.q2c)} test queries; frozen test "
              f"nDCG@10 {100 * frozen[ds]['nDCG@10']:.1f} against all {len(test_all.contexts)} texts "
              f"({100 * frozen[ds]['labelled_only']['nDCG@10']:.1f} against the {len(test.contexts)} test contexts)",
              flush=True)
        for size in [s for s in args.sizes if s <= len(train.q2c)]:
            for seed in args.seeds:
                subset = subset_rows(train.groups, size, seed)
                systems = {}
                for system, alpha in runs(args.systems, args.alphas):
                    t0 = time.perf_counter()
                    extra = {}
                    if system == "adapter-lr1e-3":
                        head = adapter(train.subset(subset), lr=1e-3, warmup=100, seed=seed)
                    elif system.startswith("adapter-judged"):
                        head, extra = judged_adapter(with_distractors(train, subset, corpus, args.corpus_sample, seed)
                                                     if system == "adapter-judged-corpus" else train.subset(subset), seed)
                    else:  # a projhead system (runs() refuses any other name)
                        sub = (with_distractors(train, subset, corpus, args.corpus_sample, seed)
                               if system.startswith("projhead-corpus") else train.subset(subset))
                        head, log = auto_train(sub, projhead.TrainConfig(seed=seed, alpha=alpha, dense_only=system.startswith(
                            "projhead-dense-only")), progress=False)
                        sel = log["selection"]
                        extra = {"chosen": sel["chosen"], "kept": log["decision"]["kept"],
                                 "epoch": next((c["best_epoch"] for c in sel["candidates"] if c["name"] == sel["chosen"]), None),
                                 "distractors": sel["distractors"], "dev_gain": log["decision"].get("dev_gain"),
                                 "alpha": log["decision"].get("alpha"), "recipe": sel.get("recipe"),
                                 # and held-out head + BM25 vs frozen + BM25:
                                 "fused_gain": log["decision"].get("fused_gain") or (
                                     head.info.get("fusion") or {}).get("chosen", {}).get("against_frozen")}
                    seconds = time.perf_counter() - t0
                    res = (metrics(projhead.evaluate_cache(test_all, head=head), "head") if head is not None
                           else {k: frozen[ds][k] for k in ("nDCG@10", "MRR@10", "R@1", "R@10")})
                    systems[system] = {"train_seconds": seconds, **res, **extra}
                    print(f"{ds:<6} n {size:>5} seed {seed} {system:<26} test nDCG@10 {100 * res['nDCG@10']:5.1f} "
                          f"({100 * (res['nDCG@10'] - frozen[ds]['nDCG@10']):+.1f})  {seconds:6.1f}s"
                          + (f"  [{extra['chosen']} {extra['kept']} epoch {extra['epoch']}, "
                             f"{extra['distractors']} distractors]" if extra.get("chosen") else "")
                          + (f"  [{extra['kept']}: out-of-fold gain {extra['dev_gain']['gain']:+.4f} "
                             f"({extra['dev_gain']['low']:+.4f} to {extra['dev_gain']['high']:+.4f}, "
                             f"{extra['dev_gain']['n']} queries)]" if extra.get("judged") else ""), flush=True)
                rows.append({"dataset": ds, "size": size, "seed": seed, "systems": systems})
    write({"bench": "corpus", "encoder": DEFAULT_ENCODER, "corpus_sample": args.corpus_sample, "frozen": frozen,
           "rows": rows, "summary": summary(rows, frozen),
           "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "platform": platform.platform()}}, Path(args.out))


def judged_adapter(sub, seed: int, folds: int = 5) -> tuple:
    """``adapter-judged``: (the adapter trained on every pair, or None for the frozen encoder,
    and the record), the adapter kept only if its out-of-fold gain over the frozen encoder on
    every query of ``sub`` (model selection's folds and bootstrap) has a 95% interval above 0."""
    rows = np.arange(len(sub.q2c))
    f = PER_QUERY["mrr10"]
    mine, base = [], []
    for held in group_folds(split_groups(sub, need=folds), folds, seed):
        dev = held_out(sub, held)
        mine.append(f(dev.ranks(adapter(sub.subset(np.setdiff1d(rows, held)), lr=1e-3, warmup=100, seed=seed))))
        base.append(f(dev.ranks(None)))
    boot = paired_bootstrap(np.concatenate(mine), np.concatenate(base), seed=seed)
    kept = boot["low"] > 0
    return (adapter(sub, lr=1e-3, warmup=100, seed=seed) if kept else None,
            {"judged": True, "kept": "head" if kept else "identity", "dev_gain": boot,
             "distractors": int(sub.n_distractors)})


def runs(systems: list[str], alphas: list[float] | None) -> list[tuple[str, float | None]]:
    """(name, alpha) of each system to run: the projhead systems once per alpha (``None``:
    projhead train's own), named with it unless it is the default's."""
    out = []
    for system in systems:
        if system not in ("adapter-lr1e-3", "adapter-judged", "adapter-judged-corpus", "projhead", "projhead-corpus",
                          "projhead-dense-only"):
            raise SystemExit(f"unknown system {system}")
        for a in dict.fromkeys(alphas or [None]) if system.startswith("projhead") else [None]:  # each value once
            default = a is None or a == ALPHA
            out.append((system if default else f"{system}-alpha{a if a == 'auto' else f'{a:g}'}", None if default else a))
    return out


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(table(result))
    print(table(result))


def merged(paths: list[str]) -> dict:
    """One result of several runs: their rows, each dataset's frozen row (equal where repeated)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({(r["encoder"], r["corpus_sample"]) for r in runs}) != 1:
        raise SystemExit(f"{', '.join(paths)}: runs of other encoders or corpus samples cannot be merged")
    if len({tuple(sorted(row["systems"])) for r in runs for row in r["rows"]}) > 1:
        raise SystemExit(f"{', '.join(paths)}: runs of other --systems cannot be merged into one table")
    frozen, rows, seen = {}, [], set()
    for r in runs:
        for ds, f in r["frozen"].items():
            if ds in frozen and json.dumps(frozen[ds], sort_keys=True) != json.dumps(f, sort_keys=True):
                raise SystemExit(f"{', '.join(paths)}: the frozen encoder scores {ds} differently: other test data")
            frozen[ds] = f
        for row in r["rows"]:
            key = (row["dataset"], row["size"], row["seed"])
            if key in seen:
                raise SystemExit(f"{', '.join(paths)}: {key} appears in more than one run")
            seen.add(key)
            rows.append(row)
    return {**runs[0], "frozen": frozen, "rows": rows, "summary": summary(rows, frozen),
            "merged_from": [str(p) for p in paths]}


def summary(rows: list, frozen: dict) -> list:
    """Per dataset, size and system: mean test nDCG@10 over seeds, its change from frozen, the
    spread of that change, and how often a head was kept."""
    out = []
    for key in sorted({(r["dataset"], r["size"]) for r in rows}):
        runs = [r for r in rows if (r["dataset"], r["size"]) == key]
        for system in runs[0]["systems"]:
            gains = [r["systems"][system]["nDCG@10"] - frozen[key[0]]["nDCG@10"] for r in runs]
            kept = [r["systems"][system].get("kept") for r in runs]
            out.append({"dataset": key[0], "size": key[1], "system": system, "seeds": len(runs),
                        "nDCG@10": float(np.mean([r["systems"][system]["nDCG@10"] for r in runs])),
                        "gain": float(np.mean(gains)), "gain_min": float(min(gains)), "gain_max": float(max(gains)),
                        "heads_kept": None if kept[0] is None else sum(k == "head" for k in kept)})
    return out


def table(result: dict) -> str:
    lines = ["| data | pairs | system | test nDCG@10 (whole corpus) | vs frozen (seeds' range) | heads kept |",
             "|---|---|---|---|---|---|"]
    for ds, f in result["frozen"].items():
        lines.append(f"| {ds} | - | frozen | {100 * f['nDCG@10']:.1f} | | |")
    for s in result["summary"]:
        kept = "" if s["heads_kept"] is None else f"{s['heads_kept']}/{s['seeds']}"
        lines.append(f"| {s['dataset']} | {s['size']} | {s['system']} | {100 * s['nDCG@10']:.1f} | "
                     f"{100 * s['gain']:+.1f} ({100 * s['gain_min']:+.1f} to {100 * s['gain_max']:+.1f}) | {kept} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
