"""Out of domain: what a SQuAD head gains in domain against what it costs elsewhere, as the
head is interpolated toward the frozen encoder.

    PROJHEAD_DATA=../shared/data python bench/bench_ood.py [--seeds 0 1 2] [--alphas 1 0.75 0.5 0.25 0]
        [--canary-seeds 0] [--out bench/results/ood]

Takes ``projhead train``'s head on SQuAD v1.1 train (sentence contexts; ``--alpha 1``, no canaries),
one per seed (the heads ``bench_squad.py`` saved, or trained here the same way), then scores frozen + alpha x (head - frozen), in weight space (WiSE-FT), for
each alpha on:
- in domain: SQuAD v1.1 dev, sentence contexts (out-of-500 top-1, full-corpus nDCG@10);
- canaries: SQuAD v1.1 dev with paragraph contexts (a granularity the head never saw) and the
  Quora duplicate-question test pairs (another task: every question of the sample is a candidate);
  nDCG@10 over the whole corpus.
``--canary-seeds`` adds, for those seeds, a run of ``projhead train --canary`` with both
canaries (the head shrunk until neither loses more than half a point). Prints one line per (seed, alpha)
and writes ``OUT.json``, ``OUT.md`` and ``OUT.png`` (in-domain gain against canary change).

``--fields``: other fields instead of the alpha sweep. The default head (``projhead train``'s, the
one ``bench_squad.py`` saved in ``--heads-dir``/seedN, else trained the same way) scored on QuAC
(validation test part, sentence contexts), BoolQ (the test part), FiQA (the test part) and Quora
(the test pairs), and on SQuAD v1.1 dev: nDCG@10 over each whole corpus, dense and fused with
BM25 (z-scored, dense weight ``--fusion-weight``), frozen and head, without and with a per-query
gate (query-side heads). The gate's mean and covariance come from SQuAD train queries outside a
5% held-out part of whole articles, its edge from that part (the head in full up to
``--gate-quantile`` of its distances, the gate's own 0.95 unless given); its other fields are the training
parts of BoolQ, FiQA and Quora, leaving out the field being scored (QuAC is never used), so no
field is scored with a gate calibrated on it. ``--trained-on boolq`` (or quac, fiqa, quora): that field's
default head (trained here on its training part, into ``--field-heads``/heads-FIELD/seedN, default
bench/work; reused when this version of projhead trained it: ``reuse.py``), scored on its test part and on SQuAD v1.1 dev the same way. A head
saved with a gate (model selection's own: calibrated without other fields, or with the SQuAD
canary under ``--squad-canary``) is also scored with that gate, as ``load_head`` serves it ("as
saved"; fused at ``--fusion-weight``, as every other column). Writes ``OUT-fields.json`` and ``OUT-fields.md``.
``--squad-canary N``: those other fields' heads trained with ``projhead train --canary`` of a
cache of the first whole SQuAD v1.1 train articles holding at least N questions (no dev article),
as a user would guard the SQuAD-like queries their index also serves, into
bench/work/heads-FIELD-canary-squadN/seedN; rows labelled with the canary's question count.

    PROJHEAD_DATA=../shared/data python bench/bench_ood.py --fields --cache-dir /work/cache --seeds 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import projhead
from projhead.cache import cache_dataset, open_cache
from projhead.fusion import FusionSpec
from projhead.gate import IN_QUANTILE, fit_gate
from projhead.train import split_by_group, split_groups
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.select import auto_train
from reuse import head_reusable, stamp
from projhead.train import ALPHA

WORK = Path("bench/work")


def score(evals: dict, head) -> dict:
    out = {}
    for name, c in evals.items():
        r = projhead.evaluate_cache(c, head=head)["head" if head is not None else "frozen"]
        out[name] = {"top1": r["out_of_500"]["top1"], "R@1": r["full_corpus"]["R@1"],
                     "nDCG@10": r["full_corpus"]["nDCG@10"]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--canary-seeds", type=int, nargs="*", default=[],
                    help="seeds for which to also train with --canary (both canaries)")
    ap.add_argument("--heads-dir", default="bench/work/heads",
                    help="reuse the heads bench_squad.py saved there (seedN) if they were kept whole (alpha 1) by this "
                         "version of projhead, else train them (seedN-alpha1)")
    ap.add_argument("--out", default="bench/results/ood")
    ap.add_argument("--fields", action="store_true", help="score the default head on other fields (see module doc)")
    ap.add_argument("--cache-dir", default=str(WORK), help="--fields: where the SQuAD caches are")
    ap.add_argument("--fusion-weight", type=float, default=0.7, help="--fields: dense share of the fusion")
    ap.add_argument("--gate-quantile", type=float, default=IN_QUANTILE,
                    help="--fields: the gate gives the full head up to this quantile of held-out training queries' "
                         "distances (default: the gate's own)")
    ap.add_argument("--trained-on", nargs="+", default=["squad"], choices=["squad", "boolq", "fiqa", "quora", "quac"],
                    help="--fields: whose default heads; a head of another field is scored on its test part and SQuAD")
    ap.add_argument("--field-heads", default=str(WORK), metavar="DIR",
                    help="--fields: where the other fields' heads are kept (DIR/heads-FIELD/seedN; reused when this version trained them)")
    ap.add_argument("--squad-canary", type=int, default=0, metavar="N",
                    help="--fields: the other fields' heads trained with `projhead train --canary` of N SQuAD v1.1 "
                         "train questions (whole articles, the file's first) instead")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="--fields: one table of the rows of these OUT-fields.json files (seeds run apart); nothing runs")
    args = ap.parse_args()
    if args.merge:
        return merge_fields(args.merge, Path(args.out + "-fields"))
    data = os.environ.get("PROJHEAD_DATA")
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    if args.fields:
        return fields(args, enc, data)
    train = cache_dataset("squad-v1.1", "train", "sentence", enc, WORK, data)
    evals = {"squad-sentence": cache_dataset("squad-v1.1", "dev", "sentence", enc, WORK, data),
             "squad-paragraph": cache_dataset("squad-v1.1", "dev", "paragraph", enc, WORK, data),
             "quora": cache_dataset("quora", "dev", "question", enc, WORK, data)}
    frozen = score(evals, None)
    print("frozen " + json.dumps(frozen), flush=True)
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        saved = Path(args.heads_dir) / f"seed{seed}"
        if not head_reusable(saved, alpha=1.0):  # bench_squad.py's whole head of this code, or this bench's own
            saved = saved.with_name(saved.name + "-alpha1")
        if head_reusable(saved, alpha=1.0):
            head = projhead.load_head(saved)
            chosen = head.info["selection"]["chosen"]
        else:
            head, log = auto_train(train, projhead.TrainConfig(seed=seed, alpha=1.0), out=saved, progress=False)
            stamp(saved, alpha=1.0)
            chosen = log["selection"]["chosen"]
        seconds = time.perf_counter() - t0
        trained = {k: v.clone() for k, v in head.state_dict().items()}
        for alpha in args.alphas:
            head.load_state_dict(trained)
            if alpha < 1:
                head.interpolate(alpha)
            s = score(evals, head)
            rows.append({"seed": seed, "alpha": alpha, "run": "sweep", "chosen": chosen,
                         "train_seconds": seconds, "scores": s})
            print(f"seed {seed} alpha {alpha:.2f} " + line(s, frozen), flush=True)
        if seed in args.canary_seeds:
            t0 = time.perf_counter()
            cfg = projhead.TrainConfig(seed=seed, canaries=[str(evals["squad-paragraph"].path),
                                                            str(evals["quora"].path)])
            head, log = auto_train(train, cfg, progress=False)
            s = score(evals, head)
            d = log["decision"]
            rows.append({"seed": seed, "alpha": d.get("alpha"), "run": "canaries", "kept": d["kept"],
                         "train_seconds": time.perf_counter() - t0, "scores": s})
            print(f"seed {seed} --canary (alpha {d.get('alpha')}, kept {d['kept']}) " + line(s, frozen), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "ood", "encoder": DEFAULT_ENCODER, "frozen": frozen, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table(result))
    plot(result, out.with_suffix(".png"))
    print(table(result))


# field -> (dataset, split, granularity) of its test part and of the part that may calibrate a gate
FIELDS = {"quac": (("quac", "val-test", "sentence"), None),
          "boolq": (("boolq", "dev", "passage"), ("boolq", "train", "passage")),
          "fiqa": (("fiqa", "dev", "question"), ("fiqa", "train", "question")),
          "quora": (("quora", "dev", "question"), ("quora", "train", "question"))}
TRAIN_ONLY = {"quac": ("quac", "val-train", "sentence")}  # heads only: never a gate's other field
SQUAD_TRAIN, SQUAD_DEV = "squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5", "squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5"


def default_head(train, saved: Path, seed: int, canaries: tuple = ()):
    """The head ``projhead train`` saves with its defaults (bench_squad.py's, when it is there),
    or with ``--canary`` of each path in ``canaries``."""
    settings = {"canaries": [str(c) for c in canaries]} if canaries else {}
    if head_reusable(saved, **settings):
        return projhead.load_head(saved), "reused"
    head, _ = auto_train(train, projhead.TrainConfig(seed=seed, canaries=[str(c) for c in canaries]), out=saved,
                         progress=False)
    stamp(saved, **settings)
    return head, "trained"


def squad_canary(enc, data, n: int) -> Path:
    """A cache of the first whole articles of SQuAD v1.1 train holding at least ``n`` questions
    (sentence contexts): SQuAD-like questions a head of another field never saw, as a user's
    ``--canary`` of the other queries their index serves (no SQuAD dev article is in it)."""
    from projhead.cache import build_cache
    from projhead.data import load_pairs
    from projhead.pairs import PairTable

    path = WORK / f"squad-v1.1-train-first{n}-sentence-canary.h5"
    if not path.exists():
        pairs = load_pairs("squad-v1.1", "train", "sentence", data=data)
        table, seen = PairTable(), []
        for i, g in enumerate(pairs.groups):
            if g not in seen:
                if len(table.queries) >= n:
                    break
                seen.append(g)
            table.add(pairs.queries[i], pairs.contexts[pairs.q2c[i]], pairs.query_ids[i], g)
        build_cache(table.build({"dataset": "squad-v1.1", "split": "train", "granularity": "sentence",
                                 "subset": f"first articles, {len(table.queries)} questions"}, pairs.meta.get("source", "")),
                    enc, path, progress=False)
    return path


def field_scores(cache, head, spec: FusionSpec) -> dict:
    r = projhead.evaluate_cache(cache, head=head, bm25=True, fusion=spec)
    out = {k: r[k]["full_corpus"]["nDCG@10"] for k in ("frozen", "frozen+bm25", "head", "head+bm25") if k in r}
    out["top1"] = {k: r[k]["out_of_500"]["top1"] for k in ("frozen", "head") if k in r}
    return out


def fields(args, enc, data) -> None:
    squad = {"train": open_cache(Path(args.cache_dir) / SQUAD_TRAIN), "test": open_cache(Path(args.cache_dir) / SQUAD_DEV)}
    tests = {"squad": squad["test"], **{f: cache_dataset(*t, enc, WORK, data) for f, (t, _) in FIELDS.items()}}
    calib = {f: cache_dataset(*c, enc, WORK, data) for f, (_, c) in FIELDS.items() if c}
    spec = FusionSpec(weight=args.fusion_weight)
    rows = []
    for trained_on in args.trained_on:
        if trained_on == "squad":  # the SQuAD head on every field
            train, heads, scored = squad["train"], Path(args.heads_dir), list(tests)
        else:  # another field's head on its own test part and on SQuAD
            train = calib[trained_on] if trained_on in calib else cache_dataset(*TRAIN_ONLY[trained_on], enc, WORK, data)
            heads, scored = Path(args.field_heads) / f"heads-{trained_on}", [trained_on, "squad"]
        canaries = (squad_canary(enc, data, args.squad_canary),) if args.squad_canary and trained_on != "squad" else ()
        if canaries:
            heads = heads.with_name(f"{heads.name}-canary-squad{args.squad_canary}")
        label = trained_on + (f" (--canary: {len(open_cache(canaries[0]).q2c)} SQuAD train questions)" if canaries else "")
        for seed in args.seeds:
            rows += field_rows(label, train, default_head(train, heads / f"seed{seed}", seed, canaries), seed,
                               {f: tests[f] for f in scored}, calib, spec, args.gate_quantile)
    out = Path(args.out + "-fields")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "ood-fields", "encoder": DEFAULT_ENCODER, "fusion_weight": args.fusion_weight,
              "gate_quantile": args.gate_quantile, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}}
    write_fields(result, out)


def write_fields(result: dict, out: Path) -> None:
    """``OUT-fields.json`` and its table (``.md``, printed too)."""
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(fields_table(result))
    print(fields_table(result))


def merge_fields(paths: list[str], out: Path) -> None:
    """The rows of several ``--fields`` runs in one result (their settings must agree)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for r in parts:  # runs from before --gate-quantile: their gates' reports say it (q90: the 0.9 of then)
        gates = [row["gate"] for row in r["rows"] if "gate" in row]
        r.setdefault("gate_quantile", gates[0].get("in_quantile", 0.9 if "q90" in gates[0]["held_distance"] else None)
                     if gates else None)
    for key in ("fusion_weight", "gate_quantile"):
        values = {r[key] for r in parts if r[key] is not None}
        if len(values) > 1:
            raise SystemExit(f"--merge: the runs differ in {key}: {[r[key] for r in parts]}")
    result = {**parts[0], "gate_quantile": next((r["gate_quantile"] for r in parts if r["gate_quantile"] is not None), None),
              "rows": [row for r in parts for row in r["rows"]], "merged_from": paths}
    write_fields(result, out)


def field_rows(trained_on, train, head_how, seed, tests, calib, spec, gate_quantile=IN_QUANTILE) -> list[dict]:
    """One head scored on ``tests``, without and (query-side heads) with a gate calibrated on
    the fields of ``calib`` other than the one scored and the one trained on (the full head up
    to the ``gate_quantile`` distance of held-out training queries)."""
    t0 = time.perf_counter()
    head, how = head_how
    saved_gate = head.gate  # the gate model selection saved with the head, if any: scored too ("saved")
    head.set_gate(None)
    gated = head.config.towers == "query" and not head.config.passthrough
    if gated:  # the gate's training part and held-out part: whole groups, as model selection splits
        tr, held = split_by_group(split_groups(train), 0.05, seed)
        tr_q, held_q = train.queries[np.sort(tr)], train.queries[np.sort(held)]
    rows = []
    for field, cache in tests.items():
        plain = field_scores(cache, head, spec)
        row = {"trained_on": trained_on, "seed": seed, "field": field, "how": how,
               "head": f"{head.config.kind}-{head.config.towers}", "passthrough": head.config.passthrough,
               "alpha": head.info.get("decision", {}).get("alpha"), "plain": plain}
        if saved_gate is not None:
            head.set_gate(saved_gate)
            row.update(saved=field_scores(cache, head, spec), saved_gate=float(head.gate_values(cache.queries).mean()))
            head.set_gate(None)
        if gated:
            names = [f for f in calib if f not in (field, trained_on.split(" ")[0])]  # the field, not its label
            gate, report = fit_gate(tr_q, held_q, [np.asarray(calib[f].queries) for f in names], gate_quantile)
            head.set_gate(gate)
            row.update(gate=report, gate_fields=names, mean_gate=float(head.gate_values(cache.queries).mean()),
                       gated=field_scores(cache, head, spec))
            head.set_gate(None)
        rows.append(row)
        print(f"{trained_on} head seed {seed} on {field:<6} {row['head']}" + "".join(
            f"  {v} {k} {100 * (row[v][k] - plain[b]):+.2f}"
            for v in ("plain", "gated", "saved") if v in row for k, b in (("head", "frozen"), ("head+bm25", "frozen+bm25")))
            + (f"  mean gate {row['mean_gate']:.3f}" if gated else "")
            + f"  (frozen {100 * plain['frozen']:.2f}, fused {100 * plain['frozen+bm25']:.2f})", flush=True)
    print(f"{trained_on} head seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def fields_table(result: dict) -> str:
    lines = [f"Default heads against the frozen encoder, nDCG@10 points over each whole corpus (mean over seeds); "
             f"fused: BM25 z-scored, dense weight {result['fusion_weight']}; SQuAD also out-of-500 top-1.", "",
             "| head trained on | scored on | seeds | frozen | head | head, gated | frozen + BM25 | head + BM25 | "
             "head, gated + BM25 | mean gate |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["trained_on"], r["field"]) for r in result["rows"])
    for trained_on, field in keys:
        rs = [r for r in result["rows"] if (r["trained_on"], r["field"]) == (trained_on, field)]
        m = lambda f: 100 * float(np.mean([f(r) for r in rs]))  # noqa: E731
        g = any("gated" in r for r in rs)  # a seed without a gate (an identity head) counts as it is saved
        gated = lambda r: r.get("gated", r["plain"])  # noqa: E731
        cells = [f"{m(lambda r: r['plain']['frozen']):.2f}", f"{m(lambda r: r['plain']['head'] - r['plain']['frozen']):+.2f}",
                 f"{m(lambda r: gated(r)['head'] - r['plain']['frozen']):+.2f}" if g else "",
                 f"{m(lambda r: r['plain']['frozen+bm25']):.2f}",
                 f"{m(lambda r: r['plain']['head+bm25'] - r['plain']['frozen+bm25']):+.2f}",
                 f"{m(lambda r: gated(r)['head+bm25'] - r['plain']['frozen+bm25']):+.2f}" if g else "",
                 f"{np.mean([r['mean_gate'] for r in rs if 'gated' in r]):.3f}" if g else ""]
        seeds = ",".join(str(r["seed"]) for r in rs)
        lines.append(f"| {trained_on} | {field} | {seeds} | " + " | ".join(cells) + " |")
        if field == "squad":
            t = [f"{m(lambda r: r['plain']['top1']['frozen']):.2f}",
                 f"{m(lambda r: r['plain']['top1']['head'] - r['plain']['top1']['frozen']):+.2f}",
                 f"{m(lambda r: gated(r)['top1']['head'] - r['plain']['top1']['frozen']):+.2f}" if g else ""]
            lines.append(f"| {trained_on} | squad, out-of-500 top-1 | {seeds} | " + " | ".join(t) + " | | | | |")
    saved = [r for r in result["rows"] if "saved" in r]
    if saved:  # the heads as model selection saved them, gate and all (calibrated on their --canary, if any)
        lines += ["", "Heads as saved, with the gate model selection saved (seeds that kept a gated head), change "
                      "against frozen: dense / fused nDCG@10 (SQuAD: and out-of-500 top-1), mean saved gate.", "",
                  "| head trained on | scored on | seeds | as saved, dense | as saved, fused | mean saved gate |",
                  "|---|---|---|---|---|---|"]
        for trained_on, field in dict.fromkeys((r["trained_on"], r["field"]) for r in saved):
            rs = [r for r in saved if (r["trained_on"], r["field"]) == (trained_on, field)]
            m = lambda f: 100 * float(np.mean([f(r) for r in rs]))  # noqa: E731
            top1 = (f" (top-1 {m(lambda r: r['saved']['top1']['head'] - r['plain']['top1']['frozen']):+.2f})"
                    if field == "squad" else "")
            lines.append(f"| {trained_on} | {field} | {','.join(str(r['seed']) for r in rs)} | "
                         f"{m(lambda r: r['saved']['head'] - r['plain']['frozen']):+.2f}{top1} | "
                         f"{m(lambda r: r['saved']['head+bm25'] - r['plain']['frozen+bm25']):+.2f} | "
                         f"{np.mean([r['saved_gate'] for r in rs]):.3f} |")
    heads = sorted({(r["trained_on"], r["seed"], r["head"], r["alpha"], r["passthrough"]) for r in result["rows"]})
    lines += ["", "Heads: " + "; ".join(f"{t} seed {s} {h} (alpha {a}{', identity' if p else ''})"
                                        for t, s, h, a, p in heads) + "."]
    return "\n".join(lines) + "\n"


def line(s: dict, frozen: dict) -> str:
    return "  ".join(f"{name} top1 {100 * (v['top1'] - frozen[name]['top1']):+.1f} nDCG@10 "
                     f"{100 * (v['nDCG@10'] - frozen[name]['nDCG@10']):+.1f}" for name, v in s.items())


def _mean_change(rows: list[dict], frozen: dict, name: str, metric: str) -> tuple[float, float]:
    d = [100 * (r["scores"][name][metric] - frozen[name][metric]) for r in rows]
    return float(np.mean(d)), float(np.std(d))


def table(result: dict) -> str:
    f = result["frozen"]
    groups: dict = {}
    for r in result["rows"]:
        key = ("sweep", r["alpha"]) if r["run"] == "sweep" else ("canaries", None)
        groups.setdefault(key, []).append(r)
    lines = ["Change against the frozen encoder, points (mean ± std over seeds).", "",
             "| head | seeds | SQuAD sentence top-1 | SQuAD sentence nDCG@10 | SQuAD paragraph nDCG@10 | "
             "Quora nDCG@10 |", "|---|---|---|---|---|---|",
             f"| frozen (absolute) | | {100 * f['squad-sentence']['top1']:.1f} | "
             f"{100 * f['squad-sentence']['nDCG@10']:.1f} | {100 * f['squad-paragraph']['nDCG@10']:.1f} | "
             f"{100 * f['quora']['nDCG@10']:.1f} |"]
    for (run, alpha), rows in groups.items():
        cells = [_mean_change(rows, f, n, m) for n, m in (("squad-sentence", "top1"), ("squad-sentence", "nDCG@10"),
                                                           ("squad-paragraph", "nDCG@10"), ("quora", "nDCG@10"))]
        label = f"alpha {alpha:g}" if run == "sweep" else "--canary (both)"
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(f"{m:+.1f} ± {s:.1f}" for m, s in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result["frozen"]
    sweep = [r for r in result["rows"] if r["run"] == "sweep"]
    alphas = sorted({r["alpha"] for r in sweep})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, marker in (("squad-paragraph", "o"), ("quora", "s")):
        xs, ys = [], []
        for a in alphas:
            rs = [r for r in sweep if r["alpha"] == a]
            xs.append(_mean_change(rs, f, "squad-sentence", "top1")[0])
            ys.append(_mean_change(rs, f, name, "nDCG@10")[0])
        ax.plot(xs, ys, marker=marker, label=f"{name} nDCG@10")
        for a, x, y in zip(alphas, xs, ys):
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if ALPHA in alphas:  # the default, marked
            i = alphas.index(ALPHA)
            ax.scatter([xs[i]], [ys[i]], s=160, facecolors="none", edgecolors="red", zorder=3,
                       label="default (alpha 0.9)" if name == "quora" else None)
    ax.axhline(0, color="gray", ls="--")
    ax.axhline(-0.5, color="gray", ls=":", label="half a point lost")
    ax.set(xlabel="SQuAD dev sentence top-1 gain (points)", ylabel="canary change (points)",
           title="in-domain gain vs out-of-domain change (labels: alpha)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
