"""Hybrid retrieval: dense (frozen, head) beside BM25, their fusion and RRF, per dataset.

    PROJHEAD_DATA=../shared/data python bench/bench_hybrid.py --datasets squad --cache-dir /work/cache \\
        --seeds 0 1 2 [--hybrid] [--normalisation-study]

For each dataset: trains the default head with ``projhead train`` on its training cache once
per seed (into ``--work``; a head folder there is reused only when this version of projhead
trained it: ``reuse.py``), which also chooses the
fusion weight on the queries model selection held out; then ``projhead eval --bm25``'s
systems on the test cache, every query, both protocols: frozen, head, BM25, frozen + BM25
(the frozen encoder's held-out weight), head + BM25 (the head's), RRF (k=60, head with BM25).
Figures are means over seeds. Writes bench/results/hybrid.json and .md. Datasets: SQuAD
sentences and paragraphs, QuAC (the split by dialog), BoolQ and FiQA (``PROJHEAD_DATA/more``),
Quora duplicates (the shared sample, split by pair); a cache not in ``--cache-dir`` is encoded
there first with the default encoder.

``--hybrid``: the heads of ``projhead train --hybrid`` instead (chosen on held-out queries
ranked fused with BM25, BM25-aware candidates beside the plain ones), into ``--work``'s
``hybrid-seedN`` folders; writes bench/results/hybrid_selection.json and .md.

``--sizes N ...``: heads trained on N training pairs instead (whole groups in a seeded order,
as ``bench_small_data.py`` cuts them; ``auto_train`` on the subset in memory, what ``projhead
train`` does on such a file), into ``--work``'s ``head-N-seedS`` (``hybrid-N-seedS``) folders.

``--normalisation-study``: which per-query normalisation keeps the best weight when the corpus
grows: a sample of the test queries ranked against the test corpus alone and against it plus
every context of the training cache (SQuAD: 6,698 dev sentences, then 6,698 + 58,087),
frozen encoder, every weight of the grid; writes bench/results/hybrid_normalisation.json.

``--search-check``: the BM25 settings and weight search ``projhead train`` runs after selection,
with the seed-0 head on 4,000 training queries: its seconds beside the same search ranking every
context at every weight (one run), and whether both choose the same; writes
bench/results/hybrid_search.json.

``--retriever-check``: ``HybridRetriever`` (bm25s + FAISS) over the test corpus with the seed-0
head, every test query, top 10 from each side's top 100: seconds, and R@1 / MRR@10 beside the
fused evaluation's; writes bench/results/hybrid_retriever.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from projhead import cli
from projhead.cache import cache_dataset, open_cache
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import PER_QUERY, evaluate_cache, gold_ranks, paired_bootstrap
from projhead.fusion import NORMALISATIONS, WEIGHT_GRID, BM25Index, normalised_pair
from projhead.heads import load_head
from reuse import head_reusable, stamp

# dataset -> (training cache, test cache): a file name in --cache-dir, or (dataset, split, granularity),
# cached there with the default encoder when missing (projhead.cache.cache_dataset)
DATASETS = {
    "squad": ("squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5", "squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5"),
    "quac": (("quac", "val-train", "sentence"), ("quac", "val-test", "sentence")),
    "boolq": (("boolq", "train", "passage"), ("boolq", "dev", "passage")),
    "fiqa": (("fiqa", "train", "question"), ("fiqa", "dev", "question")),
    "quora": (("quora", "train", "question"), ("quora", "dev", "question")),
    "squad-paragraph": (("squad-v1.1", "train", "paragraph"), ("squad-v1.1", "dev", "paragraph")),
}
_ENCODER = []
sys.path.insert(0, str(Path(__file__).parent))  # bench_small_data's subset_rows


def open_or_cache(spec, cache_dir: Path):
    """The cache of ``spec`` (see ``DATASETS``), encoded first if it is not in ``cache_dir``."""
    if isinstance(spec, str):
        return open_cache(cache_dir / spec)
    if not _ENCODER:
        _ENCODER.append(get_encoder(DEFAULT_ENCODER))
    return cache_dataset(*spec, _ENCODER[0], cache_dir, os.environ["PROJHEAD_DATA"])
SYSTEMS = ("frozen", "bm25", "frozen+bm25", "head", "head+bm25", "rrf")
SHOW = (("full_corpus", "R@1"), ("full_corpus", "MRR@10"), ("out_of_500", "top1"), ("out_of_500", "mrr10"))


def train_head(train_path: Path, out: Path, seed: int, extra: tuple = ()) -> float:
    """``projhead train`` with its defaults, unless ``out`` holds a head this version of projhead
    trained (``reuse``); the training seconds its log records."""
    if not head_reusable(out):
        if cli.main(["train", str(train_path), "--out", str(out), "--seed", str(seed), *extra]) != 0:
            raise SystemExit(f"projhead train failed for seed {seed}")
        stamp(out)
    return float(json.loads((out / "train_log.json").read_text())["seconds"])


def against(every: dict, metric: str = "mrr10") -> dict:
    """head + BM25 against frozen + BM25, the head alone and BM25 alone: the paired-bootstrap
    95% interval of the full-corpus per-query ``metric`` difference (points)."""
    f = PER_QUERY[metric]
    mine = f(every["head+bm25"].full)
    out = {}
    for other in ("frozen+bm25", "head", "bm25"):
        b = paired_bootstrap(mine, f(every[other].full))
        out[other] = {k: 100 * b[k] for k in ("gain", "low", "high")}
    return out


def train_subset(train, size: int, out: Path, seed: int, hybrid: bool) -> float:
    """What ``projhead train [--hybrid]`` does, on ``size`` training pairs (whole groups in a
    seeded order, ``bench_small_data.subset_rows``), unless ``out`` holds that head from this
    version of projhead."""
    from bench_small_data import subset_rows
    from projhead.select import auto_train
    from projhead.train import TrainConfig

    if not head_reusable(out):
        auto_train(train.subset(subset_rows(train.groups, size, seed)), TrainConfig(seed=seed, hybrid=hybrid),
                   out=out, progress=False)
        stamp(out)
    return float(json.loads((out / "train_log.json").read_text())["seconds"])


def run_dataset(name: str, cache_dir: Path, work: Path, seeds: list[int], hybrid: bool = False,
                size: int | None = None) -> dict | None:
    train, test = (open_or_cache(spec, cache_dir) for spec in DATASETS[name])
    if size is not None and size > len(train.q2c):
        print(f"{name}: {len(train.q2c)} training pairs, fewer than {size}: size skipped", flush=True)
        return None
    train_file, test_file = train.path.name, test.path.name
    if size is not None:
        train_file += f" ({size} pairs, whole groups in a seeded order)"
    runs = []
    for seed in seeds:
        out = work / name / f"{'hybrid' if hybrid else 'head'}{f'-{size}' if size else ''}-seed{seed}"
        secs = (train_subset(train, size, out, seed, hybrid) if size is not None else
                train_head(train.path, out, seed, ("--hybrid",) if hybrid else ()))
        head = load_head(out)
        t0 = time.perf_counter()
        res, every = evaluate_cache(test, head=head, bm25=True, return_ranks=True)
        noise = against(every)
        spec = head.fusion
        print(f"{name} seed {seed}: weight {spec.weight} (frozen {spec.frozen_weight}), "
              f"head kept: {not head.config.passthrough}; eval {time.perf_counter() - t0:.0f}s", flush=True)
        log = json.loads((out / "train_log.json").read_text())
        decision = {k: log["decision"][k] for k in ("kept", "why", "dev_gain", "fused_gain") if k in log["decision"]}
        vs = spec.chosen.get("against_frozen") or decision.get("fused_gain")  # held-out: head + BM25 vs frozen + BM25
        if vs:
            print(f"  held-out head + BM25 vs frozen + BM25: {vs['gain']:+.4f} ({vs['low']:+.4f} to {vs['high']:+.4f}, "
                  f"{vs['n']} queries); kept: {decision['kept']}", flush=True)
        runs.append({"seed": seed, "train_seconds": secs, "fusion": spec.to_dict(),
                     "head_kept": not head.config.passthrough, "results": res, "head+bm25_vs": noise,
                     "chosen": log["selection"].get("chosen"), "decision": decision,
                     "recipe": log["selection"].get("recipe"),  # the adapter recipe's judgement, or why it was not tried
                     **({"held_out_fused_vs_frozen": vs} if vs else {})})
    mean = {s: {p: {m: float(np.mean([r["results"][s][p][m] for r in runs])) for m in runs[0]["results"][s][p]}
                for p in runs[0]["results"][s]} for s in SYSTEMS}
    return {"train_cache": train_file, "test_cache": test_file, "n_queries": int(len(test.q2c)),
            "n_contexts": int(len(test.contexts)), "seeds": seeds, "runs": runs, "mean": mean}


def normalisation_study(cache_dir: Path, name: str, n_queries: int = 2000, seed: int = 0, block: int = 100) -> dict:
    """Best weight per normalisation on the test corpus and on it plus the training corpus."""
    train_file, test_file = DATASETS[name]
    test, train = open_cache(cache_dir / test_file), open_cache(cache_dir / train_file)
    rows = np.sort(np.random.default_rng(seed).choice(len(test.q2c), min(n_queries, len(test.q2c)), replace=False))
    q, q2c = test.queries[rows], np.asarray(test.q2c)[rows]
    texts = [test.query_texts[i] for i in rows]
    corpora = {"test": (test.contexts, list(test.context_texts)),
               "test+train": (np.concatenate([test.contexts, train.contexts]),
                              list(test.context_texts) + list(train.context_texts))}
    grid = np.asarray(WEIGHT_GRID)
    out = {"queries": int(len(rows)), "corpora": {}}
    for cname, (c, ctexts) in corpora.items():
        t0 = time.perf_counter()
        bm25 = BM25Index(ctexts)
        tokens = bm25.tokens(texts)
        sums = {how: {m: np.zeros(len(grid)) for m in ("top1", "mrr10")} for how in NORMALISATIONS}
        for a in range(0, len(rows), block):
            r = np.arange(a, min(a + block, len(rows)))
            b = bm25.scores_of(tokens, r)
            d = q[r] @ c.T
            for how in NORMALISATIONS:
                dn, bn = normalised_pair(d, b, how)
                for j, w in enumerate(grid):
                    g = gold_ranks(w * dn + (1 - w) * bn, q2c[r])
                    for m in sums[how]:
                        sums[how][m][j] += PER_QUERY[m](g).sum()
        res = {how: {m: [float(x / len(rows)) for x in v] for m, v in s.items()} for how, s in sums.items()}
        out["corpora"][cname] = {"n_contexts": int(len(c)), "by_weight": res,
                                 "best_weight": {how: float(grid[int(np.argmax(res[how]["mrr10"]))]) for how in res},
                                 "seconds": time.perf_counter() - t0}
        print(f"study {cname} ({len(c)} contexts): best weights {out['corpora'][cname]['best_weight']} "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    small, large = out["corpora"]["test"], out["corpora"]["test+train"]
    out["carried"] = {}
    for how in NORMALISATIONS:  # the small corpus's weight applied to the large one, against its own best
        j = int(np.argmax(small["by_weight"][how]["mrr10"]))
        lm = large["by_weight"][how]["mrr10"]
        out["carried"][how] = {"weight_small": float(grid[j]), "weight_large": large["best_weight"][how],
                               "large_mrr10_at_small_weight": lm[j], "large_mrr10_best": max(lm),
                               "large_top1_at_small_weight": large["by_weight"][how]["top1"][j]}
    return out


def retriever_check(cache_dir: Path, work: Path, name: str, depth: int = 100, factory: str = "Flat") -> dict:
    """The HybridRetriever over the test corpus with the seed-0 head: build and search seconds,
    and its R@1 / MRR@10 from top-10 lists against evaluation's fused ranking of every context."""
    from projhead.evaluate import corpus_metrics, topk_ranks
    from projhead.retriever import HybridRetriever

    test = open_cache(cache_dir / DATASETS[name][1])
    head = load_head(work / name / "head-seed0")
    t0 = time.perf_counter()
    r = HybridRetriever(list(test.context_texts), test.contexts, head=head, factory=factory)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, scores = r.search(list(test.query_texts), test.queries, k=10, depth=depth)
    searched = time.perf_counter() - t0
    m = corpus_metrics(topk_ranks(ids, scores, np.asarray(test.q2c)), ks=(1, 5, 10))
    out = {"factory": factory, "depth": depth, "n_contexts": int(len(test.contexts)), "n_queries": int(len(ids)),
           "build_seconds": built, "search_seconds": searched, "R@1": m["R@1"], "MRR@10": m["MRR@10"]}
    print(f"retriever {factory} depth {depth}: built in {built:.1f}s, {len(ids)} queries in {searched:.1f}s, "
          f"R@1 {100 * m['R@1']:.1f}, MRR@10 {100 * m['MRR@10']:.1f}", flush=True)
    return out


def search_check(cache_dir: Path, work: Path, name: str, n_queries: int = 4000) -> dict:
    """The BM25 settings and weight search ``projhead train`` runs after selection
    (``hybrid.choose_weight`` with ``fusion.BM25_GRID``), with the seed-0 head on a seeded sample
    of the training queries: seconds as it ranks (only the contexts that can reach each gold)
    beside the same search ranking every context at every weight, in one run; the two specs
    must be equal."""
    from projhead import hybrid
    from projhead.fusion import BM25_GRID
    from projhead.metrics import gold_ranks

    train = open_or_cache(DATASETS[name][0], cache_dir)
    head = load_head(work / name / "head-seed0")
    rows = np.sort(np.random.default_rng(0).choice(len(train.q2c), min(n_queries, len(train.q2c)), replace=False))

    def every_context(d, b, gold, exclude, grid):
        own = np.flatnonzero(exclude >= 0)
        for w in grid:
            f = w * d + (1 - w) * b
            f[own, exclude[own]] = -np.inf
            yield gold_ranks(f, gold)

    out, specs = {"queries": int(len(rows)), "contexts": int(len(train.contexts)), "settings": len(BM25_GRID)}, {}
    fast = hybrid._fused_ranks
    for how, ranks in (("gold-reachable", fast), ("every context", every_context)):
        hybrid._fused_ranks = ranks
        try:
            t0 = time.perf_counter()
            specs[how] = hybrid.choose_weight(train, rows, head, bm25_grid=BM25_GRID)
            out[f"seconds, {how}"] = time.perf_counter() - t0
        finally:
            hybrid._fused_ranks = fast
        print(f"{name}: search ranking {how}: {out[f'seconds, {how}']:.1f}s", flush=True)
    a, b = (dict(specs[k].to_dict(), chosen={**specs[k].chosen, "seconds": 0}) for k in specs)
    out["same_spec"] = a == b
    out["chosen"] = {"k1": specs["gold-reachable"].bm25.k1, "b": specs["gold-reachable"].bm25.b,
                     "weight": specs["gold-reachable"].weight, "frozen_weight": specs["gold-reachable"].frozen_weight}
    print(f"{name}: same spec both ways: {out['same_spec']}; {out['chosen']}", flush=True)
    return out


def markdown(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines += [f"### {name}: {r['test_cache']} ({r['n_queries']} queries, {r['n_contexts']} contexts); "
                  f"heads from {r['train_cache']}, mean of seeds {r['seeds']}", "",
                  "| system | " + " | ".join(f"{'full' if p == 'full_corpus' else '500'} {m}" for p, m in SHOW) + " |",
                  "|---" * (len(SHOW) + 1) + "|"]
        for s in SYSTEMS:
            lines.append(f"| {s} | " + " | ".join(f"{100 * r['mean'][s][p][m]:.1f}" for p, m in SHOW) + " |")
        ws = ", ".join(f"seed {x['seed']}: {x['fusion']['weight']} (frozen {x['fusion']['frozen_weight']})"
                       for x in r["runs"])
        lines += ["", f"Dense weights chosen on held-out training queries: {ws}.", ""]
        if all("head+bm25_vs" in x for x in r["runs"]):
            lines += ["head + BM25 minus each other system, full-corpus MRR@10 points, per seed (95% paired-bootstrap "
                      "interval): " + "; ".join(
                          f"vs {o}: " + ", ".join(f"{x['head+bm25_vs'][o]['gain']:+.1f} [{x['head+bm25_vs'][o]['low']:+.1f}, "
                                                  f"{x['head+bm25_vs'][o]['high']:+.1f}]" for x in r["runs"])
                          for o in ("frozen+bm25", "head", "bm25")) + ".", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["squad"], choices=sorted(DATASETS))
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--work", default="bench/work/hybrid")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--normalisation-study", action="store_true")
    ap.add_argument("--search-check", action="store_true",
                    help="time the BM25 settings and weight search with the seed-0 head, as it ranks and ranking everything")
    ap.add_argument("--retriever-check", action="store_true",
                    help="only time HybridRetriever over the test corpus with the seed-0 head (trained already)")
    ap.add_argument("--hybrid", action="store_true",
                    help="heads from `projhead train --hybrid` (chosen fused with BM25, BM25-aware candidates)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="train on subsets of this many pairs instead of the whole training cache (seeded by the seed)")
    ap.add_argument("--out", default=None, help="[bench/results/hybrid, or hybrid_selection with --hybrid]")
    args = ap.parse_args()
    args.out = args.out or ("bench/results/hybrid_selection" if args.hybrid else "bench/results/hybrid")
    os.environ.setdefault("PROJHEAD_DATA", "../shared/data")
    cache_dir, work, out = Path(args.cache_dir), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.normalisation_study:
        study = {name: normalisation_study(cache_dir, name) for name in args.datasets}
        Path(f"{out}_normalisation.json").write_text(json.dumps(study, indent=1))
        print(json.dumps({n: s["carried"] for n, s in study.items()}, indent=1))
        print(f"wrote {out}_normalisation.json")
        return
    if args.search_check:
        check = {name: search_check(cache_dir, work, name) for name in args.datasets}
        Path(f"{out}_search.json").write_text(json.dumps(check, indent=1))
        print(f"wrote {out}_search.json")
        return
    if args.retriever_check:
        check = {name: retriever_check(cache_dir, work, name) for name in args.datasets}
        Path(f"{out}_retriever.json").write_text(json.dumps(check, indent=1))
        print(f"wrote {out}_retriever.json")
        return
    results = ({f"{name}-{size}": run_dataset(name, cache_dir, work, args.seeds, args.hybrid, size)
                for name in args.datasets for size in args.sizes} if args.sizes else
               {name: run_dataset(name, cache_dir, work, args.seeds, args.hybrid) for name in args.datasets})
    results = {k: v for k, v in results.items() if v is not None}
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    md = markdown(results)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
