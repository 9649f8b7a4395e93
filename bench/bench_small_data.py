"""Small data: heads trained on 100 to 87,599 pairs, next to the frozen encoder, a one-matrix
adapter recipe and fine-tuning the encoder itself.

    PROJHEAD_DATA=../shared/data python bench/bench_small_data.py [--sizes 100 300 1000 3000 10000]
        [--seeds 0 1 2] [--full] [--quora] [--quora-objectives] [--finetune-sizes 1000] [--encoder-layers N]
        [--out bench/results/small_data]

Training sets: SQuAD v1.1 train subsets (articles in a seeded random order, taken whole until
the size is reached, the last one cut), the full train set (``--full``, seed 0) and the Quora
duplicate-question sample (``--quora``: its train pairs, seeds as given). Every head is scored
on SQuAD v1.1 dev (sentence contexts, both protocols) and on the Quora test pairs (every
question of the sample is a candidate), so each row shows its own domain and the other one.

Systems:
- ``frozen``: all-MiniLM-L6-v2 as it is.
- ``projhead``: ``projhead train`` defaults (model selection, ``projhead.select.auto_train``);
  ``projhead-dense-only``: ``projhead train --dense-only`` (for dense search alone: a head kept
  on its own is not also judged fused with BM25).
- ``fixed``: ``projhead train --no-auto`` (one residual head, settings sized to the data).
- ``adapter``: LlamaIndex's linear adapter recipe as its docs give it (query-side linear layer
  from the identity, in-batch softmax over cosine x 20, batch 10, AdamW lr 2e-5 with 10,000
  linear warm-up steps, 4 epochs); ``adapter-lr1e-3``: the same with lr 1e-3 and 100 warm-up steps.
- ``finetune``: the encoder itself fine-tuned with sentence-transformers' in-batch softmax loss
  (MultipleNegativesRankingLoss: cosine x 20, batch 32, AdamW lr 2e-5, 10% warm-up, 1 epoch),
  then SQuAD dev and the Quora corpus encoded again (both times reported).
``--quora-objectives``: on the Quora pairs, ``clip`` against ``byol`` (one shared residual
tower, ``--no-auto``, the best epoch kept whenever it is better on held-out pairs).
``--encoder-layers N``: every cache encoded again by the default encoder cut to its first N
transformer layers, a weaker frozen encoder (real weights) that knows these data less well,
so heads have something to gain: does model selection keep a real gain from few pairs?
Prints one line per (training set, system) and writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import projhead
from projhead.cache import Cache
from projhead.cache import cache_dataset
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.heads import Head, HeadConfig
from projhead.recipe import train_recipe, warmup_linear
from projhead.select import auto_train

WORK = Path("bench/work")


def subset_rows(groups: list[str], size: int, seed: int) -> np.ndarray:
    """Rows of whole groups (articles) in a seeded random order, cut at ``size``."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    rows = []
    for g in np.random.default_rng(seed).permutation(len(names)):
        rows.extend(np.flatnonzero(inverse.reshape(-1) == g).tolist())
        if len(rows) >= size:
            break
    return np.array(rows[:size])


def adapter(train, lr: float, warmup: int, seed: int, epochs: int = 4, batch: int = 10, scale: float = 20.0) -> Head:
    """LlamaIndex's linear adapter recipe (``projhead.recipe.train_recipe``, what model selection
    falls back on) on every pair of ``train``, at these settings."""
    return train_recipe(train, np.arange(len(train.q2c)), seed=seed, lr=lr, warmup=warmup, epochs=epochs, batch=batch,
                        scale=scale)


def finetune(train, seed: int, batch: int = 32, lr: float = 2e-5, scale: float = 20.0):
    """The encoder itself, one epoch of in-batch softmax (MultipleNegativesRankingLoss)."""
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    path = get_encoder(DEFAULT_ENCODER).describe()["resolved"]
    model = SentenceTransformer(path, device="cpu")
    model.train()
    q_text, c_text = train.query_texts, train.context_texts
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(q_text))
    steps = math.ceil(len(order) / batch)
    warm = max(1, int(0.1 * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def embed(texts):
        feats = model.tokenize(texts)
        return torch.nn.functional.normalize(model(feats)["sentence_embedding"], dim=1)

    for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        gold = train.q2c[idx]
        ctx, col = np.unique(gold, return_inverse=True)
        q = embed([q_text[i] for i in idx])
        c = embed([c_text[i] for i in ctx])
        loss = torch.nn.functional.cross_entropy(scale * q @ c.T, torch.from_numpy(col.reshape(-1)))
        for g in opt.param_groups:
            g["lr"] = lr * warmup_linear(s, warm, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def truncated_encoder(layers: int):
    """The default encoder cut to its first ``layers`` transformer layers (same tokenizer and
    mean pooling): real weights, a weaker encoder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(get_encoder(DEFAULT_ENCODER).describe()["resolved"], device="cpu")
    stack = model[0].auto_model.encoder.layer
    if not 1 <= layers < len(stack):
        raise SystemExit(f"--encoder-layers must be between 1 and {len(stack) - 1}")
    model[0].auto_model.encoder.layer = stack[:layers]
    return model.eval()


def encode_cache_with(model, ref):
    """``ref``'s texts encoded by ``model``: a stand-in cache with the same queries and contexts."""
    q = model.encode(ref.query_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    c = model.encode(ref.context_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    arrays = dict(ref._arrays, **{"queries/vectors": q.astype(np.float32), "contexts/vectors": c.astype(np.float32)})
    return Cache(ref.path, dict(ref.attrs), arrays)


def scores(results: dict, system: str) -> dict:
    r = results[system]
    return {"top1": r["out_of_500"]["top1"], "top10": r["out_of_500"]["top10"],
            "R@1": r["full_corpus"]["R@1"], "nDCG@10": r["full_corpus"]["nDCG@10"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 300, 1000, 3000, 10000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="also the full SQuAD train set (seed 0)")
    ap.add_argument("--quora", action="store_true", help="also the Quora train pairs")
    ap.add_argument("--finetune-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--systems", nargs="+", default=["projhead", "fixed", "adapter", "adapter-lr1e-3"])
    ap.add_argument("--quora-objectives", action="store_true",
                    help="Quora: also clip against byol, one shared residual tower, every epoch kept if better")
    ap.add_argument("--encoder-layers", type=int, default=0,
                    help="cut the encoder to its first N transformer layers: a weaker frozen encoder, "
                         "one that knows the data less well (every cache is encoded again with it)")
    ap.add_argument("--out", default="bench/results/small_data")
    args = ap.parse_args()
    if args.encoder_layers and args.finetune_sizes:
        raise SystemExit("--finetune-sizes fine-tunes the whole encoder: not with --encoder-layers")
    data = os.environ.get("PROJHEAD_DATA")
    WORK.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(DEFAULT_ENCODER)
    squad_train = cache_dataset("squad-v1.1", "train", "sentence", enc, WORK, data)
    evals = {"squad-dev": cache_dataset("squad-v1.1", "dev", "sentence", enc, WORK, data),
             "quora-test": cache_dataset("quora", "dev", "question", enc, WORK, data)}
    quora_train = cache_dataset("quora", "train", "question", enc, WORK, data) if args.quora else None
    weaker = truncated_encoder(args.encoder_layers) if args.encoder_layers else None
    if weaker is not None:
        evals = {name: encode_cache_with(weaker, c) for name, c in evals.items()}
        quora_train = encode_cache_with(weaker, quora_train) if quora_train is not None else None
    frozen = {name: scores(projhead.evaluate_cache(c), "frozen") for name, c in evals.items()}
    print("frozen " + "  ".join(f"{n}: {v}" for n, v in frozen.items()), flush=True)

    def own(c):  # a training set's vectors from the encoder under test
        return encode_cache_with(weaker, c) if weaker is not None else c

    jobs = [(f"squad-{size}", size, seed, own(squad_train.subset(subset_rows(squad_train.groups, size, seed))))
            for size in args.sizes for seed in args.seeds]
    if args.full:
        jobs.append(("squad-full", len(squad_train.q2c), 0, own(squad_train)))
    if quora_train is not None:
        jobs += [("quora", len(quora_train.q2c), seed, quora_train) for seed in args.seeds]

    rows = []
    for name, size, seed, train in jobs:
        systems = {}
        for system in args.systems:
            t0 = time.perf_counter()
            extra = {}
            if system in ("projhead", "projhead-dense-only"):
                head, log = auto_train(train, projhead.TrainConfig(seed=seed, dense_only=system != "projhead"),
                                       progress=False)
                extra = {"chosen": log["selection"]["chosen"], "kept": log["decision"]["kept"],
                         "dev_gain": log["decision"].get("dev_gain"), "why": log["decision"].get("why"),
                         "fused_gain": log["decision"].get("fused_gain")}
            elif system == "fixed":
                head, log = projhead.train_head(train, HeadConfig(), projhead.TrainConfig(seed=seed), progress=False)
                extra = {"kept": log["decision"]["kept"]}
            elif system == "adapter":
                head = adapter(train, lr=2e-5, warmup=10000, seed=seed)
            elif system == "adapter-lr1e-3":
                head = adapter(train, lr=1e-3, warmup=100, seed=seed)
            else:
                raise SystemExit(f"unknown system {system}")
            seconds = time.perf_counter() - t0
            res = {ev: scores(projhead.evaluate_cache(c, head=head), "head") for ev, c in evals.items()}
            systems[system] = {"train_seconds": seconds, **res, **extra}
            print(f"{name:<12} seed {seed} n {len(train.q2c):>6} {system:<15} {seconds:7.1f}s  "
                  + "  ".join(f"{ev} top1 {100 * r['top1']:.1f} nDCG@10 {100 * r['nDCG@10']:.1f}"
                              for ev, r in res.items())
                  + (f"  [{extra.get('chosen', '')} {extra.get('kept', '')}]" if extra else ""), flush=True)
        if name == "quora" and args.quora_objectives:
            for loss in ("clip", "byol"):
                t0 = time.perf_counter()
                head, log = projhead.train_head(train, HeadConfig(kind="residual", towers="shared"),
                                                projhead.TrainConfig(loss=loss, seed=seed, decision="better"),
                                                progress=False)
                res = {ev: scores(projhead.evaluate_cache(c, head=head), "head") for ev, c in evals.items()}
                systems[f"{loss}-shared"] = {"train_seconds": time.perf_counter() - t0, **res,
                                             "kept": log["decision"]["kept"], "best_epoch": log["best_epoch"]}
                print(f"{name:<12} seed {seed} {loss + '-shared':<15} " + "  ".join(
                    f"{ev} nDCG@10 {100 * r['nDCG@10']:.1f}" for ev, r in res.items())
                    + f"  [{log['decision']['kept']}, best epoch {log['best_epoch']}]", flush=True)
        if name.startswith("squad-") and size in args.finetune_sizes and seed == args.seeds[0]:
            t0 = time.perf_counter()
            model = finetune(train, seed)
            t_train = time.perf_counter() - t0
            res, t_enc = {}, 0.0
            for ev, c in evals.items():
                t1 = time.perf_counter()
                re = encode_cache_with(model, c)
                t_enc += time.perf_counter() - t1
                res[ev] = scores(projhead.evaluate_cache(re), "frozen")
            systems["finetune"] = {"train_seconds": t_train, "encode_seconds": t_enc, **res}
            print(f"{name:<12} seed {seed} n {len(train.q2c):>6} {'finetune':<15} {t_train:7.1f}s + encode "
                  f"{t_enc:.0f}s  " + "  ".join(f"{ev} top1 {100 * r['top1']:.1f} nDCG@10 {100 * r['nDCG@10']:.1f}"
                                               for ev, r in res.items()), flush=True)
        rows.append({"train_set": name, "size": int(len(train.q2c)), "seed": seed, "systems": systems})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "small_data", "encoder": DEFAULT_ENCODER, "encoder_layers": args.encoder_layers or None,
              "frozen": frozen, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(result: dict) -> str:
    """Mean over seeds (and the seed spread) per training set and system, percent."""
    groups: dict = {}
    for r in result["rows"]:
        for system, v in r["systems"].items():
            groups.setdefault((r["train_set"], system), []).append((r["size"], v))
    lines = [f"Encoder: {result['encoder']}" + (f" cut to its first {result['encoder_layers']} layers"
                                             if result.get("encoder_layers") else "") + ". Percent, mean ± std over seeds.",
             "", "| training set | pairs | system | seeds | heads kept | SQuAD dev top-1 | SQuAD dev nDCG@10 | "
             "Quora test nDCG@10 | train s |", "|---|---|---|---|---|---|---|---|---|"]
    f = result["frozen"]
    lines.append(f"| (none) | 0 | frozen | | | {100 * f['squad-dev']['top1']:.1f} | {100 * f['squad-dev']['nDCG@10']:.1f} "
                 f"| {100 * f['quora-test']['nDCG@10']:.1f} | |")

    def cell(vals):
        m = 100 * np.mean(vals)
        return f"{m:.1f}" if len(vals) == 1 else f"{m:.1f} ± {100 * np.std(vals):.1f}"

    for (name, system), items in groups.items():
        vs = [v for _, v in items]
        size = int(np.mean([s for s, _ in items]))
        secs = np.mean([v["train_seconds"] + v.get("encode_seconds", 0) for v in vs])
        kept = (f"{sum(v['kept'] == 'head' for v in vs)} of {len(vs)}" if all("kept" in v for v in vs) else "")
        lines.append(f"| {name} | {size:,} | {system} | {len(vs)} | {kept} | {cell([v['squad-dev']['top1'] for v in vs])} | "
                     f"{cell([v['squad-dev']['nDCG@10'] for v in vs])} | {cell([v['quora-test']['nDCG@10'] for v in vs])}"
                     f" | {secs:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
