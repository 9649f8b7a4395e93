"""A head fixed in advance, judged on every held-out query's margin: selection's fallback, and
the rival of a kept candidate.

Usage::

    from projhead.recipe import train_recipe, judge_recipe
    head = train_recipe(cache, rows)                  # LlamaIndex's linear adapter, settings fixed
    verdict = judge_recipe(cache, fold_rows, cfg, fused=True)  # out of fold, dense and fused with BM25
    verdict = judge_recipe(cache, fold_rows, cfg, fused=True, rival=fold_heads)  # and another head's margins

Model selection (``select.auto_train``) chooses a candidate, its epoch and interpolation on half
of its held-out queries and decides on MRR@10 of the other half. At a few hundred pairs that
cannot see gains of the size a plain query-side adapter makes on a field the encoder did not
see (bench/bench_decision_stat.py). When k-fold selection keeps the identity, it tries one head
more that chooses nothing: the recipe (``RECIPE``: a query-side linear layer from the identity,
in-batch softmax over cosine x 20, batches of 10, AdamW at 1e-3 with 100 warm-up steps then
linear decay, 4 epochs). It is trained on each fold's other folds, and every query is scored out
of fold by its fold's head and by the frozen encoder. The statistic is the **margin**: the gold
context's score minus the best other candidate's (against every context and attached corpus
row), which moves for every query, where MRR@10 moves only for queries near the top. The paired
bootstrap over all queries must put the dense margin gain above 0; with both sides fused with
BM25 (per-query z-scores, dense weight ``fusion.DEFAULT_WEIGHT``, the run's BM25 settings) the
margin gain must not be below 0, unless the head is served dense alone or the cache has no
texts (``kept``). Only then is it trained on every pair and kept. Both sides are fused alike,
not each as it would be saved (the head at the weight and BM25 its fold heads choose afterwards,
the frozen encoder at its own): margins of fusions with different weights are not on one scale,
and judged as saved the check kept no more of the recipe's QuAC gains (bench/bench_fused_check.py).
The fused side is asked not to lose rather than to gain beyond noise: fused margins (z-scores
mixed with BM25's) are far noisier beside their gain than dense ones, and asking for a fused gain
beyond noise passed over QuAC heads that gained on the test questions dense and fused
(bench/bench_recipe_judge.py).

When k-fold selection keeps a candidate, the recipe is judged beside it (``beside``): the
candidate's fold heads as saved (epoch, alpha, gate) and the recipe's fold heads score the same
queries out of fold, and on the queries that decided (the ones that took no part in choosing the
candidate, its epoch or alpha) the recipe replaces the candidate only when it is kept by its own
rule and beats the candidate on the mean margin and on the mean of the selection metric
(MRR@10) both. The margin alone is not enough: on QuAC at 3,000 pairs and more the recipe's
margin beat kept candidates beyond noise in 9 runs of 10 while its MRR@10 was lower in all 10,
and on the test questions the recipe changed nDCG@10 by -0.51 to +0.04 where the candidates
gained +0.51 to +1.85 (bench/bench_corpus.py, README "The recipe beside a kept candidate").
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from .batches import held_out, within_documents
from .fusion import DEFAULT_WEIGHT, FusionSpec, fused_scorer
from .heads import Head, HeadConfig
from .metrics import PER_QUERY, dense_scorer, excluding, gold_ranks, paired_bootstrap, rank_metrics

# LlamaIndex's linear adapter recipe at the learning rate that did best on small data (bench_small_data)
RECIPE = {"lr": 1e-3, "warmup": 100, "epochs": 4, "batch": 10, "scale": 20.0}
NAME = "adapter-recipe"
CHUNK = 256  # held-out queries scored at a time (each a row over every ranked context)


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """sentence-transformers' WarmupLinear factor: linear warm-up over ``warmup`` steps, then
    linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_recipe(cache, rows: np.ndarray, seed: int = 0, lr: float = RECIPE["lr"], warmup: int = RECIPE["warmup"],
                 epochs: int = RECIPE["epochs"], batch: int = RECIPE["batch"], scale: float = RECIPE["scale"],
                 losses: list | None = None) -> Head:
    """The recipe on the query ``rows`` of ``cache``: a query-side linear head from the identity,
    cross-entropy over in-batch cosine x ``scale`` (rows sharing a gold context are not each
    other's negatives), AdamW with ``warmup_linear``. ``losses``: each epoch's mean loss appended."""
    torch.manual_seed(seed)
    head = Head(HeadConfig(kind="linear", towers="query", in_dim=cache.dim, encoder=cache.encoder,
                           encoder_weights_sha256=cache.encoder_info.get("weights_sha256", "")))
    lin = head.query
    opt = torch.optim.AdamW(lin.parameters(), lr=lr)
    rows = cache.query_rows(rows)
    Q, C = torch.from_numpy(np.asarray(cache.queries[rows], np.float32)), torch.from_numpy(np.asarray(cache.contexts))
    q2c = torch.from_numpy(np.asarray(cache.q2c[rows], np.int64))
    per_epoch = math.ceil(len(q2c) / batch)
    total, step = per_epoch * epochs, 0
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order, seen = torch.from_numpy(rng.permutation(len(q2c))), []
        for b in range(per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            q = torch.nn.functional.normalize(lin(Q[idx]), dim=1)
            logits = scale * q @ C[q2c[idx]].float().T
            same = q2c[idx][None, :] == q2c[idx][:, None]
            logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
            for g in opt.param_groups:
                g["lr"] = lr * warmup_linear(step, warmup, total)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            seen.append(loss.item())
        if losses is not None:
            losses.append(float(np.mean(seen)))
    return head.eval()


def margins(dev, head: Head | None, fused: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each query of ``dev`` (a ``batches.DevSet``) scored by ``head`` (None: the frozen
    encoder; a head on both towers encodes the contexts too): its gold rank and margin (gold score minus the best
    other candidate's, the query vector at unit length so that the two sides' margins share a
    scale; each query's own text left out), and with ``fused`` (``dev`` holds BM25 scores) the
    margin of dense and BM25 fused at ``dev.weight``."""
    q = np.asarray(dev.q if head is None else head.encode_queries(dev.q), np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(min=1e-12)  # both sides at one scale: ranks unchanged
    c = dev.c
    if head is not None and head.changes_contexts():  # a head on both towers (a kept candidate): its contexts too
        c = np.asarray(head.encode_contexts(np.asarray(c, np.float32)), np.float32)  # as DevSet.ranks has them
    dense = dense_scorer(q, c)  # fused before any text is left out, as DevSet.ranks scores
    if fused:
        mix = excluding(fused_scorer(dense, lambda rows: dev.bm25[rows].toarray(), FusionSpec(), dev.weight),
                        dev.exclude)
    dense = excluding(dense, dev.exclude)
    n = len(dev.gold)
    ranks, margin, mixed = np.empty(n, np.int64), np.empty(n), np.empty(n) if fused else None
    for a in range(0, n, CHUNK):
        rows = np.arange(a, min(a + CHUNK, n))
        s, gold = dense(rows), dev.gold[rows]
        ranks[rows] = gold_ranks(s, gold)
        margin[rows] = _margin(s, gold)
        if fused:
            mixed[rows] = _margin(mix(rows), gold)
    return ranks, margin, mixed


def _margin(s: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Each row's gold score minus its best other score; not finite where the gold is left out or
    stands alone (the judge drops those)."""
    s = np.array(s, np.float64)
    i = np.arange(len(gold))
    g = s[i, gold].copy()
    s[i, gold] = -np.inf
    return g - s.max(axis=1)


# training settings the candidates take from the run's TrainConfig: given, the recipe (its own) is not tried
# (the device is not one: the recipe is small enough for the CPU; a loss's chunk_size only bounds memory)
GIVEN = ("epochs", "min_steps", "stop_epoch", "batch_size", "batching", "weight_decay", "warmup", "init_temperature",
         "learn_temperature", "loss_settings", "after_folds")


def not_tried(cache, cfg, fixed: dict | None, dialog: bool) -> str | None:
    """Why selection does not fall back on the recipe for this run, or None."""
    base = type(cfg)()
    plain = {k: v for k, v in cfg.loss_settings.items() if k != "chunk_size"}
    given = [k for k in GIVEN if (plain if k == "loss_settings" else getattr(cfg, k)) != getattr(base, k)]
    why = [(not cfg.recipe, "--no-recipe"), (dialog, "dialog heads are searched"),
           (bool(fixed), "head or training settings were fixed"),
           (bool(given), f"training settings were given ({', '.join(given)})"),
           (cfg.hybrid, "--hybrid judges every head fused"),
           (bool(cfg.canaries), "canaries were given (the recipe is not shrunk for them)"),
           (cfg.loss != "clip", f"another objective was asked for (--loss {cfg.loss})"),
           (bool(cfg.mined), f"a mined set was asked for (--mined {cfg.mined})"),
           (cfg.anchor_weight > 0, "an anchor to the frozen encoder was asked for"),
           (cfg.bm25_aware, "a head trained beside BM25 was asked for"),
           (cfg.decision != "bootstrap", f"--decision {cfg.decision}"),
           (cfg.alpha not in (None, "auto"), f"alpha {cfg.alpha} was set (the recipe is kept whole)"),
           (within_documents(cache) is not None, "the pairs come from fewer than 5 documents")]
    return next((w for cond, w in why if cond), None)


def judge_recipe(cache, fold_rows: list[np.ndarray], cfg, fused: bool, rival: list[Head] | None = None) -> dict:
    """The recipe trained on each fold's other folds, its fold's queries scored by it and by
    the frozen encoder; the paired bootstrap (seeded with ``cfg.seed``) of the margin over every
    query, dense and (``fused``) fused with BM25. ``kept``: ``kept(out)``. ``rival``: another
    head per fold (a kept candidate's fold heads as saved), scored on the same queries: its ranks
    and dense margins in ``rival_ranks`` and ``rival_margins``, the recipe's in ``ranks`` and
    ``margins`` (fold order, as ``order``)."""
    all_rows = np.arange(len(cache.q2c))
    hybrid = replace(cfg, hybrid=True, fusion_weight=DEFAULT_WEIGHT) if fused else None
    heads, scored = [], {"head": [], "frozen": [], "rival": []}  # per side, each fold's (ranks, margins, fused)
    for i, held in enumerate(fold_rows):
        heads.append(train_recipe(cache, np.setdiff1d(all_rows, held), seed=cfg.seed))
        dev = held_out(cache, held, hybrid)
        for side, h in (("head", heads[-1]), ("frozen", None)):
            scored[side].append(margins(dev, h, fused))
        if rival is not None:
            scored["rival"].append(margins(dev, rival[i], False))

    def joined(side):  # (ranks, margins, fused margins or None) of every query, in fold order
        return [None if p[0] is None else np.concatenate(p) for p in zip(*scored[side])]

    (r_head, *m_head), (r_frozen, *m_frozen) = joined("head"), joined("frozen")
    out = {"fold_heads": heads, "order": np.concatenate(fold_rows), "ranks": r_head, "margins": m_head[0],
           "dev_head": rank_metrics(r_head), "dev_frozen": rank_metrics(r_frozen)}
    if rival is not None:
        out["rival_ranks"], out["rival_margins"], _ = joined("rival")
    f = PER_QUERY[cfg.select_metric]
    out["dev_gain"] = paired_bootstrap(f(r_head), f(r_frozen), seed=cfg.seed)
    for key, a, b in zip(("margin_gain", "fused_margin_gain"), m_head, m_frozen):
        if a is not None:
            ok = np.isfinite(a) & np.isfinite(b)
            out[key] = paired_bootstrap(a[ok], b[ok], seed=cfg.seed)
    out["kept"] = kept(out)
    return out


def kept(judged: dict) -> bool:
    """The rule: the dense margin gain's 95% interval above 0, and fused with BM25 (where judged)
    a margin gain not below 0."""
    fused = judged.get("fused_margin_gain")
    return judged["margin_gain"]["low"] > 0 and (fused is None or fused["gain"] >= 0)


def fall_back(cache, cfg, fold_rows: list[np.ndarray], fused: bool, say=print) -> dict:
    """``judge_recipe``, said; if kept, the recipe trained on every pair. Returns ``log`` (for the
    selection log) and, when kept: ``head``, ``run_log`` (its training, for the head folder),
    ``decision``, ``frozen`` (the frozen encoder's held-out metrics, every query), ``cfg`` (the
    training settings it stands for) and ``fold_heads`` (which choose its fusion weight)."""
    t0 = time.perf_counter()
    v = judge_recipe(cache, fold_rows, cfg, fused)
    log, parts = _logged(v, t0)
    say(f"  {NAME} (fixed in advance), out of fold on all {log['queries']} queries: " + "; ".join(parts)
        + f" -> {'kept: it replaces the identity' if v['kept'] else 'not kept'} ({log['seconds']:.1f}s)")
    return _trained(cache, cfg, v, log, parts, fused) if v["kept"] else {"log": log}


def beside(cache, cfg, fold_rows: list[np.ndarray], fused: bool, rival: list[Head], decide: np.ndarray,
           name: str, say=print) -> dict:
    """The recipe judged beside a kept candidate, ``name``, whose fold heads as saved are
    ``rival``: it replaces the candidate when ``kept`` by its own rule and, on the ``decide``
    queries (positions in fold order: the queries that took no part in choosing the candidate,
    its epoch or alpha), its mean margin (``versus``) and its mean ``cfg.select_metric``
    (``versus_metric``) are both above the candidate's (the paired bootstrap's gains). Returns
    what ``fall_back`` does."""
    t0 = time.perf_counter()
    v = judge_recipe(cache, fold_rows, cfg, fused, rival=rival)
    a, b = v["margins"][decide], v["rival_margins"][decide]
    ok = np.isfinite(a) & np.isfinite(b)
    versus = paired_bootstrap(a[ok], b[ok], seed=cfg.seed)
    f = PER_QUERY[cfg.select_metric]
    ranked = paired_bootstrap(f(v["ranks"][decide]), f(v["rival_ranks"][decide]), seed=cfg.seed)
    wins = bool(v["kept"] and versus["gain"] > 0 and ranked["gain"] > 0)
    log, parts = _logged(v, t0)
    log.update(beside=name, kept_alone=v["kept"], versus=versus, versus_metric={**ranked, "of": cfg.select_metric},
               kept=wins)
    say(f"  {NAME} (fixed in advance) beside {name}, out of fold: " + "; ".join(parts)
        + f" ({'kept' if v['kept'] else 'not kept'} on its own); against {name}'s fold heads on the {versus['n']} "
        f"queries that decided: margin {versus['gain']:+.4f} (95% interval {versus['low']:+.4f} to {versus['high']:+.4f}), "
        f"{cfg.select_metric} {ranked['gain']:+.4f} (95% interval {ranked['low']:+.4f} to {ranked['high']:+.4f})"
        f" -> {f'it replaces {name}' if wins else f'{name} stays'} ({log['seconds']:.1f}s)")
    if not wins:
        return {"log": log}
    return _trained(cache, cfg, v, log, parts, fused)


def _logged(v: dict, t0: float) -> tuple[dict, list[str]]:
    """The selection log's record of a judged recipe, and its gains said."""
    log = {"name": NAME, "settings": dict(RECIPE), "kept": v["kept"], "queries": len(v["order"]),
           **{k: v[k] for k in ("dev_gain", "margin_gain", "fused_margin_gain") if k in v}}
    parts = [f"margin gain {v[k]['gain']:+.4f} (95% interval {v[k]['low']:+.4f} to {v[k]['high']:+.4f})"
             + (" fused with BM25" if k.startswith("fused") else " dense") for k in ("margin_gain", "fused_margin_gain") if k in v]
    log["seconds"] = time.perf_counter() - t0
    return log, parts


def _trained(cache, cfg, v: dict, log: dict, parts: list[str], fused: bool) -> dict:
    """The recipe kept: trained on every pair, with what ``fall_back`` returns."""
    losses: list = []
    head = train_recipe(cache, np.arange(len(cache.q2c)), seed=cfg.seed, losses=losses)
    decision = {"kept": "head", "alpha": 1.0, "dev_head": v["dev_head"],
                "dev_gain": {**v["margin_gain"], "of": "margin"},
                "margin_gain": v["margin_gain"], **({"fused_margin_gain": v["fused_margin_gain"]} if fused else {}),
                "what": f"kept the {NAME} (fixed in advance; {RECIPE['epochs']} epochs)",
                "measured": f"out of fold, each fold's {NAME} head, on all {log['queries']} queries; kept on the dense "
                            + "interval above 0" + (" and a fused gain not below 0" if fused else "") + ": "
                            + " and ".join(parts)}
    run_log = {"epochs": [{"epoch": i + 1, "train_loss": x} for i, x in enumerate(losses)], "frozen_dev": {},
               "best_epoch": RECIPE["epochs"], "settings": dict(RECIPE)}
    steps = math.ceil(len(cache.q2c) / RECIPE["batch"]) * RECIPE["epochs"]
    settings = replace(cfg, lr=RECIPE["lr"], batch_size=RECIPE["batch"], epochs=RECIPE["epochs"], batching="random",
                       warmup=min(RECIPE["warmup"] / steps, 0.99), weight_decay=0.01, alpha=1.0, dev_fraction=0.0,
                       stop_epoch=None, init_temperature=1 / RECIPE["scale"], learn_temperature=False, anchor_weight=0.0)
    return {"log": log, "head": head, "run_log": run_log, "decision": decision, "frozen": v["dev_frozen"],
            "cfg": settings, "fold_heads": v["fold_heads"]}
