"""Model selection: which head, if any, to train on this data, chosen on held-out queries.

Usage::

    from projhead.select import auto_train
    head, log = auto_train("cache/mine.h5", out="heads/mine")          # what `projhead train` does
    head, log = auto_train("cache/mine.h5", fixed={"kind": "linear"})  # search only the rest

A few candidate heads (``candidates``), from a one-matrix query adapter to the residual MLP
on both towers, are trained on the cached vectors and scored on queries they did not see,
ranked against every context of the cache. Cheap, because the encoder never runs.

- Under ``CV_BELOW`` (5,000) queries the data is cut into ``folds`` (5) of whole groups;
  each candidate is trained once per fold for a fixed number of epochs, and every query is
  scored out of fold, epoch by epoch. Each candidate's epoch is the latest whose mean
  out-of-fold metric is within noise of its highest (``kept_epoch``); the best candidate
  wins, and is trained again on all pairs on the same schedule, ended at that epoch.
- From ``CV_BELOW`` queries on, one dev split of whole groups; each candidate stops early on
  it and keeps its latest epoch within noise of its best (``fit``); the best candidate wins.

Either way the winner replaces the identity only if the paired bootstrap over the held-out
queries puts its gain above 0 (``TrainConfig.decision``); the log keeps every candidate's
score and time, and the gain with its 95% interval.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import numpy as np

from .cache import Cache, open_cache
from .evaluate import PER_QUERY, paired_bootstrap, rank_metrics
from .batches import dev_fraction, split_by_group
from .heads import Head, HeadConfig
from .hybrid import tune_after_selection
from .train import (SMALL, Canary, TrainConfig, TrainError, finish, fit, save_trained, split_groups, within_documents,
                    within_noise)

CV_BELOW = SMALL  # queries: below this, k-fold selection (every query scored once, out of fold)
FOLDS = 5
HEAD_KEYS = ("kind", "towers", "hidden", "layers", "activation", "dropout", "init", "out_dim")

# (name, head settings, training settings). Query-side heads leave an existing index of
# context vectors as it is; linear heads are LlamaIndex's adapter on our schedule.
CANDIDATES = [
    ("linear-query", {"kind": "linear", "towers": "query"}, {"lr": 1e-3}),
    ("linear-separate", {"kind": "linear", "towers": "separate"}, {"lr": 1e-3}),
    ("residual-query", {"kind": "residual", "towers": "query"}, {"lr": 5e-4}),
    ("residual-separate", {"kind": "residual", "towers": "separate"}, {"lr": 5e-4}),
]
# On a large cache the residual MLP on both towers is the one worth its time (bench_ablation:
# it leads every variant on SQuAD train); the query adapter stays as the cheap alternative.
LARGE = ("linear-query", "residual-separate")


def candidates(n_queries: int, fixed: dict | None = None) -> list[tuple[str, HeadConfig, dict]]:
    """The candidates for a cache of ``n_queries``, with ``fixed`` settings (head or
    training keys) applied to each; candidates that then coincide are tried once."""
    fixed = dict(fixed or {})
    head_fixed = {k: v for k, v in fixed.items() if k in HEAD_KEYS}
    train_fixed = {k: v for k, v in fixed.items() if k not in HEAD_KEYS}
    out, seen = [], set()
    for name, h, t in CANDIDATES:
        if n_queries >= CV_BELOW and name not in LARGE and not head_fixed:
            continue
        h, t = {**h, **head_fixed}, {**t, **train_fixed}
        key = repr(sorted(h.items())) + repr(sorted(t.items()))
        if key in seen:
            continue
        seen.add(key)
        label = name if not head_fixed else "-".join(str(h[k]) for k in ("kind", "towers"))
        out.append((label, HeadConfig(**h), t))
    return out


def group_folds(groups: list[str], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds of query rows; whole groups go to one fold (shuffled with ``seed``),
    filled in turn so the folds hold about as many queries each."""
    names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = np.empty(len(names), dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    for g in order:  # the next group goes to the emptiest fold
        f = int(np.argmin(sizes))
        fold_of[g] = f
        sizes[f] += counts[g]
    row_fold = fold_of[inverse.reshape(-1)]
    return [np.flatnonzero(row_fold == f) for f in range(k)]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def auto_train(cache: Cache | str | os.PathLike, config: TrainConfig | None = None, fixed: dict | None = None,
               out: str | os.PathLike | None = None, progress: bool = True, folds: int | None = None
               ) -> tuple[Head, dict]:
    """Search the candidates (see module doc), keep the best or the identity, save to ``out``.
    ``config``: the shared training settings (loss, seed, canaries, ...); ``fixed``: head or
    training settings every candidate must use (``{"kind": "linear", "lr": 1e-3}``)."""
    cfg = config or TrainConfig()
    if cfg.stream:
        raise TrainError("model selection needs the cache in memory: train with fixed settings to use --stream")
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    t0 = time.perf_counter()
    n = len(cache.q2c)
    k = folds if folds is not None else (FOLDS if n < CV_BELOW else 0)
    base = HeadConfig(in_dim=cache.dim, encoder=cache.encoder,
                      encoder_weights_sha256=cache.encoder_info.get("weights_sha256", ""))
    cands = candidates(n, fixed)
    canaries = [Canary(c) for c in cfg.canaries]
    for c in canaries:
        Head(base).check_cache(c.cache)
    groups = split_groups(cache, need=max(k, 5))
    if k and len(set(groups)) < k:
        k = 0  # too few groups and contexts to fold: one split
    log = {"mode": f"{k}-fold" if k else "dev split", "candidates": [], "n_queries": n}
    _say(progress, f"model selection on {n} queries ({log['mode']}), {len(cands)} candidates; "
                   f"metric {cfg.select_metric} of held-out queries against all {len(cache.contexts)} contexts")
    f = PER_QUERY[cfg.select_metric]
    if k:
        fold_rows = group_folds(groups, k, cfg.seed)
        all_rows = np.arange(n)
        n_train = n - n // k
        best = None
        for name, hc, t in cands:
            tc = replace(cfg, **t).sized(n_train)
            tc = replace(tc, patience=tc.epochs + 1)  # every fold runs every epoch: out-of-fold scores per epoch
            s0 = time.perf_counter()
            per_epoch = [[] for _ in range(tc.epochs + 1)]
            for rows in fold_rows:
                run = fit(cache, replace(base, **_head_dict(hc)), tc, rows=(np.setdiff1d(all_rows, rows), rows),
                          progress=False, keep_later=False)  # the epoch is chosen below, out of fold
                er = run["epoch_ranks"]
                last = max(er)
                for e in range(tc.epochs + 1):
                    per_epoch[e].append(er[min(e, last)])  # a run stopped by a non-finite loss keeps its last
            oof = [np.concatenate(p) for p in per_epoch]
            scores = [float(f(r).mean()) for r in oof]
            e_best = kept_epoch(oof, scores, cfg)
            entry = {"name": name, "head": _head_dict(hc), "train": t, "epochs": tc.epochs,
                     "batch_size": tc.batch_size, "best_epoch": e_best, "score": scores[e_best],
                     "frozen": scores[0], "seconds": time.perf_counter() - s0}
            log["candidates"].append(entry)
            _say(progress, f"  {name:<20} {cfg.select_metric} {scores[e_best]:.4f} at epoch {e_best}/{tc.epochs} "
                           f"(frozen {scores[0]:.4f}; batch {tc.batch_size}) {entry['seconds']:.1f}s")
            if best is None or scores[e_best] > best[0]:
                best = (scores[e_best], name, hc, t, e_best, oof, tc)
        _, name, hc, t, e_best, oof, tc = best
        boot = paired_bootstrap(f(oof[e_best]), f(oof[0]), seed=cfg.seed)
        keep = e_best > 0 and (boot["low"] > 0 if cfg.decision == "bootstrap" else boot["gain"] > 0)
        narrow = within_documents(cache) if cfg.decision == "bootstrap" else None
        log.update(chosen=name, dev_gain=boot, frozen_dev=rank_metrics(oof[0]),
                   chosen_dev=rank_metrics(oof[e_best]))
        # the winner again on every pair: the schedule of the folds, ended at the epoch that won
        final_cfg = replace(cfg, **{**t, "epochs": tc.epochs, "stop_epoch": max(1, e_best),
                                    "batch_size": tc.batch_size, "patience": tc.epochs + 1, "dev_fraction": 0.0})
        run = fit(cache, replace(base, **_head_dict(hc)), final_cfg, rows=(all_rows, all_rows[:0]), progress=False)
        head, run_log = run["head"], run["log"]
        if keep and not narrow:
            finish(head, final_cfg, None, None, canaries, run_log)
        else:
            head.reset_to_identity()
            run_log["decision"] = {"kept": "identity", "why": _why(cfg, boot, e_best) if not keep else narrow}
        frozen = log["frozen_dev"]
        decision = dict(run_log["decision"], dev_gain=boot, dev_head=log["chosen_dev"])
    else:
        best = None
        for name, hc, t in cands:
            s0 = time.perf_counter()
            run = fit(cache, replace(base, **_head_dict(hc)), replace(cfg, **t), progress=False)
            rl = run["log"]
            score = run["best"]["score"] if run["best"]["state"] is not None else -math.inf
            entry = {"name": name, "head": _head_dict(hc), "train": t, "epochs": rl["settings"]["epochs"],
                     "batch_size": rl["settings"]["batch_size"], "best_epoch": rl["best_epoch"],
                     "score": run["best"]["score"], "frozen": run["frozen"].get(cfg.select_metric),
                     "seconds": time.perf_counter() - s0}
            log["candidates"].append(entry)
            _say(progress, f"  {name:<20} {cfg.select_metric} {entry['score']:.4f} at epoch {entry['best_epoch']}"
                           f"/{entry['epochs']} (frozen {entry['frozen']:.4f}; batch {entry['batch_size']}) "
                           f"{entry['seconds']:.1f}s")
            if best is None or score > best[0]:
                best = (score, name, run, replace(cfg, **t))
        _, name, run, final_cfg = best
        head, run_log = run["head"], run["log"]
        log["chosen"] = name
        if run["best"]["state"] is None:
            head.reset_to_identity()
            run_log["decision"] = {"kept": "identity", "why": "no epoch of any candidate beat the frozen encoder"}
        else:
            er = run["epoch_ranks"]
            finish(head, final_cfg, run["dev"], er[0], canaries, run_log, er[run["best"]["epoch"]],
                   narrow=within_documents(cache))
        frozen = run["frozen"]
        decision = run_log["decision"]
        log.update(dev_gain=decision.get("dev_gain"), frozen_dev=frozen, chosen_dev=decision.get("dev_head"))
        final_cfg = run["cfg"]
    run_log["decision"] = decision
    log["seconds"] = time.perf_counter() - t0
    run_log["selection"] = log
    run_log["seconds"] = log["seconds"]
    gain = log.get("dev_gain") or {}
    _say(progress, f"chosen: {name}; kept: {decision['kept']}"
                   + (f"; dev {cfg.select_metric} gain {gain['gain']:+.4f} (95% interval {gain['low']:+.4f} to "
                      f"{gain['high']:+.4f}, {gain['n']} queries)" if gain else "")
                   + (f" ({decision['why']})" if decision.get("why") else "") + f"; {log['seconds']:.1f}s")
    rows = all_rows if k else split_by_group(split_groups(cache), dev_fraction(final_cfg, n), final_cfg.seed)[1]
    # folds: the final head saw every query, so the weight is the frozen encoder's, chosen on all of them
    fusion = tune_after_selection(None if k else head, cache, rows, cfg.select_metric, say=lambda t: _say(progress, t))
    return save_trained(head, run_log, cache, final_cfg, frozen, out, extra={"selection": _brief(log), **fusion})


def kept_epoch(ranks: list[np.ndarray], scores: list[float], cfg: TrainConfig) -> int:
    """The epoch to keep from per-epoch held-out ranks (0 = frozen): the latest one within
    noise of the highest and clearly above the frozen encoder (``within_noise``, as ``fit``
    keeps epochs), else the highest; 0 if none beat the frozen encoder."""
    peak = int(np.argmax(scores))
    if peak == 0:
        return 0
    return next((e for e in range(len(scores) - 1, peak, -1)
                 if within_noise(ranks[e], ranks[peak], r0=ranks[0], cfg=cfg)), peak)


def _why(cfg: TrainConfig, boot: dict, epoch: int) -> str:
    if epoch == 0:
        return "no epoch of any candidate beat the frozen encoder out of fold"
    return (f"dev {cfg.select_metric} gain {boot['gain']:+.4f} (95% interval {boot['low']:+.4f} to "
            f"{boot['high']:+.4f}) is not above 0")


def _head_dict(hc: HeadConfig) -> dict:
    return {k: getattr(hc, k) for k in HEAD_KEYS}


def _brief(log: dict) -> dict:
    """What the model card shows of the search."""
    return {"mode": log["mode"], "chosen": log.get("chosen"), "dev_gain": log.get("dev_gain"),
            "candidates": [{k: c[k] for k in ("name", "score", "frozen", "best_epoch", "epochs", "seconds")}
                           for c in log["candidates"]]}
