"""Model selection: which head, if any, to train on this data, chosen on held-out queries.

Usage::

    from projhead.select import auto_train
    head, log = auto_train("cache/mine.h5", out="heads/mine")          # what `projhead train` does
    head, log = auto_train("cache/mine.h5", fixed={"kind": "linear"})  # search only the rest

A few candidate heads (``candidates``), from a one-matrix query adapter to the residual MLP
on both towers, are trained on the cached vectors and scored on queries they did not see,
ranked against every context of the cache. Cheap, because the encoder never runs.

Groups are kept whole, and groups that share a gold context go together (``split_groups``),
so no held-out query's gold context is trained on. The held-out queries are cut in two by
groups (``_halves``): one half chooses (candidate and epoch), the other decides.

- Under ``CV_BELOW`` (5,000) queries the data is cut into ``folds`` (5) of whole groups;
  each candidate is trained once per fold for a fixed number of epochs, and every query is
  scored out of fold, epoch by epoch; only epochs every fold trained count. Each candidate's
  epoch is the latest whose mean out-of-fold metric on the choosing queries is within noise of
  its highest (``kept_epoch``); the best candidate wins, trained again on all pairs on the same
  schedule to that epoch (``after_folds`` "average": its fold heads averaged, ``soup``).
- From ``CV_BELOW`` queries on, one dev split of whole groups; each candidate stops early on
  its choosing half and keeps its latest epoch within noise of its best (``fit``); the best
  candidate wins.

Either way the winner is gated (a query-side head: ``gate.attach_gate``), interpolated
(``alpha``) and shrunk for canaries as it will be saved, and replaces the identity only if the
paired bootstrap over the deciding queries puts the gain of that head above 0
(``TrainConfig.decision``; in k-fold mode the fold heads are interpolated the same way, each
gated by its fold's gate, and scored out of fold). The log keeps every candidate's score and
time, and the gain with its 95% interval. The fusion with BM25 saved with the head
(``hybrid.tune_after_selection``) is chosen on held-out queries too: with a dev split the
saved head's; with folds each query scored by its fold's head as saved (the refit head saw
every query). There a kept head must also beat the frozen encoder fused, each as it would be
saved (its own BM25 settings and weight), on the deciding queries (the same bootstrap): else
the identity is saved, with the frozen encoder's fusion (``--hybrid`` decides fused from the
start, and saves the weight it decided at; ``dense_only`` skips it).

In k-fold mode, when that keeps the identity, one head fixed in advance is judged on every
query, out of fold, on the margin of its gold context (``recipe.fall_back``); it replaces the
identity only if that gain is above noise dense and not below 0 fused with BM25
(``recipe.kept``; ``recipe.not_tried``: when it is not tried). When a candidate is kept, the
same head is judged beside it (``recipe.beside``): it replaces the candidate only if kept by
that rule and above the candidate's fold heads as saved on both the margin and the metric of
the deciding queries.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from .cache_reader import Cache, open_cache
from .corpus import corpus_for_training
from .metrics import PER_QUERY, not_above_zero, paired_bootstrap, rank_metrics
from .gate import attach_gate
from .heads import Head, HeadConfig
from .lexical import settings_of
from .soup import as_saved, average, averaged_log, fold_runs, with_fold_share
from .checkpoint import CHECKPOINT_NAME, check_out
from .fusion import WEIGHT_GRID, FusionSpec
from .hybrid import has_texts, identity_after_selection, tune_after_selection
from .alpha import AUTO_ALPHAS, chooses_alpha, chosen_alpha  # noqa: F401 (AUTO_ALPHAS re-exported)
from .hybrid_select import bm25_choices, check_hybrid, fused_against_frozen, hybrid_settings, not_above_fused
from .query_side import none_beat, prefer_query_side
from .recipe import NAME as RECIPE_NAME, beside, fall_back, not_tried
from .turns import DIALOG_CANDIDATES, dialog_slots, dialog_view
from .card import selection_brief
from .config import with_fixed
from .train import (SMALL, TrainConfig, TrainError, checked_canaries, dev_fraction, finish, fit,
                    has_temperature, held_out, joined_by_gold, save_trained, split_by_group, split_groups,
                    within_documents, within_noise)

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
# it leads every variant on SQuAD train); query-side heads (the adapter and the residual MLP)
# stay at every size, since selection keeps one unless a two-tower head is better beyond noise.
LARGE = ("linear-query", "residual-query", "residual-separate")


def candidates(n_queries: int, fixed: dict | None = None, pool: list | None = None) -> list[tuple[str, HeadConfig, dict]]:
    """The candidates for a cache of ``n_queries``, with ``fixed`` settings (head or
    training keys) applied to each; candidates that then coincide are tried once. ``pool``:
    other candidates than ``CANDIDATES`` (the dialog heads of a cache with turns), all tried."""
    fixed = dict(fixed or {})
    head_fixed = {k: v for k, v in fixed.items() if k in HEAD_KEYS}
    train_fixed = {k: v for k, v in fixed.items() if k not in HEAD_KEYS}
    out, seen = [], set()
    for name, h, t in pool or CANDIDATES:
        if n_queries >= CV_BELOW and name not in LARGE and not head_fixed and not pool:
            continue
        h, t = {**h, **head_fixed}, {**t, **train_fixed}
        key = repr(sorted(h.items())) + repr(sorted(t.items()))
        if key in seen:
            continue
        seen.add(key)
        label = name if not head_fixed else "-".join(str(h[k]) for k in ("kind", "towers"))
        out.append((label, HeadConfig(**h), t))
    labels = [label for label, _, _ in out]  # a fixed head setting can leave two that differ only in lr
    return [(f"{label}-lr{t['lr']:g}" if labels.count(label) > 1 else label, h, t) for label, h, t in out]


def group_folds(groups: list[str], k: int, seed: int, gold: np.ndarray | None = None) -> list[np.ndarray]:
    """``k`` folds of query rows; whole groups go to one fold (shuffled with ``seed``),
    filled in turn so the folds hold about as many queries each. ``gold``: each row's gold
    context row; groups sharing one are kept together (``auto_train`` passes groups already
    joined this way, by ``split_groups``)."""
    if gold is not None:
        groups = joined_by_gold(groups, gold)
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
    training settings every candidate must use (``{"kind": "linear", "lr": 1e-3}``; so is a ``config.lr`` not 5e-4)."""
    say = partial(_say, progress)  # a line of progress, printed if asked for
    cfg = config or TrainConfig()
    if cfg.lr != TrainConfig.lr and "lr" not in (fixed or {}):  # a learning rate given: every candidate's, as --lr
        fixed = {**(fixed or {}), "lr": cfg.lr}
    cfg = with_fixed(cfg, fixed, HEAD_KEYS)  # its training settings are the run's in both modes
    check_out(out)
    if cfg.stream:
        raise TrainError("model selection needs the cache in memory: train with fixed settings to use --stream")
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    # a turns section: dialog heads, which see the turns apart, unless another kind is asked for
    slots = dialog_slots(cache) if (fixed or {}).get("kind", "dialog") == "dialog" else 0
    cache = dialog_view(cache) if slots else cache
    t0 = time.perf_counter()
    ranked = _ranked_against(cache, cfg)
    n = len(cache.q2c)
    k = folds if folds is not None else (FOLDS if n < CV_BELOW else 0)
    dialog = {"kind": "dialog", "slots": slots, "sentence_slots": cache.attrs["sentence_slots"]} if slots else {}
    base = HeadConfig(in_dim=cache.dim, encoder=cache.encoder, **dialog,
                      encoder_weights_sha256=cache.encoder_info.get("weights_sha256", ""))
    pool = DIALOG_CANDIDATES if slots else None
    given = {"init_temperature": cfg.init_temperature, "loss": cfg.loss, "loss_settings": cfg.loss_settings,
             **(fixed or {})}
    if slots and (given["init_temperature"] is not None or not has_temperature(given["loss"])
                  or "init_temperature" in given["loss_settings"]):  # a temperature asked for, or a loss without one
        pool = [(name, h, {k: v for k, v in t.items() if k != "init_temperature"}) for name, h, t in pool]
    cands = candidates(n, fixed, pool)
    if cfg.hybrid:  # each candidate also trained beside BM25 (lexical.py), all judged fused with BM25
        if slots or not has_texts(cache):
            raise TrainError(f"{cache.path}: hybrid selection is not made for dialog heads: train them without --hybrid"
                             if slots else f"{cache.path}: hybrid selection needs context texts for BM25")
        check_hybrid(cfg)
        cands = cands + [(f"{name}+bm25", hc, {**t, "bm25_aware": True}) for name, hc, t in cands]
    if cfg.batch_size is not None:  # the batch size asked for wins over a candidate's own
        cands = [(name, hc, {k: v for k, v in t.items() if k != "batch_size"}) for name, hc, t in cands]
    if cfg.alpha not in (None, "auto") and cfg.alpha < 1:  # refused before anything is trained, as train_head does
        rigid = [name for name, hc, _ in cands if not Head(replace(base, **_head_dict(hc))).can_interpolate()]
        if rigid:
            raise TrainError(f"alpha {cfg.alpha} interpolates toward the frozen encoder, which only identity-initialised "
                             f"linear and residual heads of the encoder's dimension contain; candidate(s) "
                             f"{', '.join(rigid)} cannot be interpolated: drop --alpha or the head setting that rules it out")
    canaries = checked_canaries(cfg, base)
    groups = split_groups(cache, need=5)  # documents where there are 5, else gold contexts (within_documents)
    if k and len(set(groups)) < k:  # more folds asked for than groups: one fold a group, never a group on both
        k = len(set(groups)) if len(set(groups)) >= 5 else 0  # sides; under 5 groups, one held-out split
    log = {"mode": f"{k}-fold" if k else "dev split", "candidates": [], "n_queries": n,
           "not_used": _not_used(cfg, k, cache), **ranked}
    say(f"model selection on {n} queries ({log['mode']}), {len(cands)} candidates; "
        f"metric {cfg.select_metric} of held-out queries against {ranked['ranked_against']}")
    for note in log["not_used"]:
        say(f"  not used: {note}")
    ckpt = Path(out) / CHECKPOINT_NAME if out is not None else None
    if ckpt is not None and ckpt.exists():  # a --no-auto run's: it would resume onto this folder's new head
        log["removed"] = f"{ckpt}: the checkpoint of an earlier --no-auto run, replaced by this head"
        say(f"  {log['removed']}")
    f = PER_QUERY[cfg.select_metric]
    gate, fold_gates = {}, None  # a per-query gate for a kept query-side head (with folds, one per fold head too)
    weight_folds = None  # with folds, a kept head's fusion weight is chosen on its fold heads, out of fold
    if k:
        fold_rows = group_folds(groups, k, cfg.seed)
        all_rows = np.arange(n)
        n_train = n - n // k
        # out-of-fold ranks come in fold order; half the queries (whole groups) choose, the others decide
        choose_rows, decide_rows = _halves(groups, all_rows, cfg.seed, log)
        if log.get("halves"):
            say(f"  note: {log['halves']}")
        cfg, cands = hybrid_settings(cache, cfg, cands, all_rows, all_rows, log, say=say)
        order = np.concatenate(fold_rows)
        sel, dec = np.flatnonzero(np.isin(order, choose_rows)), np.flatnonzero(np.isin(order, decide_rows))
        results = {}
        for name, hc, t in cands:
            tc = replace(cfg, **t).sized(n_train)
            tc = replace(tc, patience=tc.epochs + 1)  # every fold runs every epoch: out-of-fold scores per epoch
            s0 = time.perf_counter()
            runs = [fit(cache, replace(base, **_head_dict(hc)), tc, rows=(np.setdiff1d(all_rows, rows), rows),
                        progress=False, keep_later=False)  # the epoch is chosen below, out of fold
                    for rows in fold_rows]
            # only epochs every fold trained are candidates (--stop-epoch, or a fold stopped by a non-finite loss)
            trained = min(max(run["epoch_ranks"]) for run in runs)
            oof = [np.concatenate([run["epoch_ranks"][e] for run in runs]) for e in range(trained + 1)]
            scores = [float(f(r[sel]).mean()) for r in oof]
            e_best = kept_epoch([r[sel] for r in oof], scores, cfg)
            stopped = next((run["log"]["stopped"] for run in runs if run["log"].get("stopped")), None)
            entry = {"name": name, "head": _head_dict(hc), "train": t, "epochs": tc.epochs, "trained_epochs": trained,
                     "batch_size": tc.batch_size, "best_epoch": e_best, "score": scores[e_best],
                     "frozen": scores[0], "seconds": time.perf_counter() - s0, **({"stopped": stopped} if stopped else {})}
            log["candidates"].append(entry)
            say(f"  {name:<20} {cfg.select_metric} {scores[e_best]:.4f} at epoch {e_best}/{trained}"
                + (f" (of {tc.epochs} scheduled)" if trained < tc.epochs else "")
                + f" (frozen {scores[0]:.4f}; batch {tc.batch_size}) {entry['seconds']:.1f}s"
                + (f"; a fold {stopped}" if stopped else ""))
            results[name] = (scores[e_best], name, hc, t, e_best, oof, tc)
        name = prefer_query_side([(r[1], r[2].towers, r[0], r[5][r[4]][sel]) for r in results.values()],
                                 cfg, log, say=say)
        _, name, hc, t, e_best, oof, tc = results[name]
        log.update(chosen=name, frozen_dev=rank_metrics(oof[0][dec]), chosen_dev_trained=rank_metrics(oof[e_best][dec]))
        # the winner again on every pair: the schedule of the folds, ended at the epoch that won (never
        # later than the folds trained, so never past --stop-epoch)
        final_cfg = replace(cfg, **{**t, "epochs": tc.epochs, "stop_epoch": max(1, e_best),
                                    "batch_size": tc.batch_size, "patience": tc.epochs + 1, "dev_fraction": 0.0})
        hcfg = replace(base, **_head_dict(hc))
        fold_heads = at_epoch = None  # the fold runs at the chosen epoch (averaged into the saved head), when needed
        if e_best == 0:  # no epoch beat the frozen encoder: nothing is trained on every pair
            head, run_log = Head(hcfg), {"epochs": [], "frozen_dev": {}, "best_epoch": 0}
        elif cfg.after_folds != "refit":  # no refit: the fold heads' weights averaged
            s0 = time.perf_counter()
            fold_heads = at_epoch = fold_runs(cache, hcfg, tc, fold_rows, e_best)
            head, run_log = average([r["head"] for r in fold_heads]), averaged_log(fold_heads, e_best)
            final_cfg = with_fold_share(fold_heads, final_cfg)
            averaged = {"after_folds": f"the weights of the {k} fold heads at epoch {e_best} averaged",
                        "after_folds_seconds": time.perf_counter() - s0}
        else:
            run = fit(cache, hcfg, final_cfg, rows=(all_rows, all_rows[:0]), progress=False, canaries=canaries)
            head, run_log = run["head"], run["log"]
            final_cfg = replace(final_cfg, loss_settings=run["cfg"].loss_settings)  # any BM25 share it trained at
        frozen = log["frozen_dev"]
        if e_best == 0:
            head.reset_to_identity()
            decision = {"kept": "identity", "why": none_beat(name, log) + " out of fold",
                        "dev_head": frozen}
        elif fold_heads is None and run_log.get("stopped"):  # the refit did not reach the epoch the folds judged
            head.reset_to_identity()
            decision = {"kept": "identity", "dev_head": frozen,
                        "why": f"{name} trained again on every pair stopped before epoch {e_best} "
                               f"({run_log['stopped']}): the head the folds judged could not be saved"}
        else:  # the gate first, as with a dev split: each fold's head is then judged with its fold's gate
            gate, fold_gates = attach_gate(head, cache, cfg, canaries, None, None, say=say,
                                           fold_rows=fold_rows)
            if chooses_alpha(cfg, head):  # each fold's head at each alpha, its choosing queries ranked
                at_epoch = at_epoch or (fold_runs(cache, hcfg, tc, fold_rows, e_best) if head.can_interpolate() else None)
                final_cfg = replace(final_cfg, alpha=chosen_alpha(head, lambda a: np.concatenate(
                    [run["dev"].ranks(h) for run, h in zip(at_epoch, as_saved(at_epoch, a, fold_gates))])[sel],
                    cfg, log, progress))
            decision = finish(head, final_cfg, None, None, canaries, run_log)  # alpha, shrunk for canaries
            if decision["kept"] == "head":  # decide on the head as saved: its alpha and gate, out of fold
                a = decision["alpha"]
                if a != 1.0 or fold_gates:  # each fold's run again to that epoch, as saved, its held-out fold ranked
                    at_epoch = at_epoch or fold_runs(cache, hcfg, tc, fold_rows, e_best)
                r = (oof[e_best] if a == 1.0 and not fold_gates else np.concatenate(
                    [run["dev"].ranks(h) for run, h in zip(at_epoch, as_saved(at_epoch, a, fold_gates))]))[dec]
                boot = paired_bootstrap(f(r), f(oof[0][dec]), seed=cfg.seed)
                keep = boot["low"] > 0 if cfg.decision == "bootstrap" else boot["gain"] > 0
                narrow = within_documents(cache) if cfg.decision == "bootstrap" else None
                decision.update(dev_gain=boot, dev_head=rank_metrics(r),
                                measured=f"out of fold, each fold's {name} head at epoch {e_best}, alpha {a:g}"
                                         f"{', gated' if gate else ''}, on the {len(dec)} held-out queries that did "
                                         "not choose it")
                if not keep or narrow:
                    head.reset_to_identity()
                    decision.update(kept="identity", why=not_above_zero(cfg.select_metric, boot) if not keep else narrow)
        if decision["kept"] == "head" and has_texts(cache):  # its fusion weight: each fold's head as saved, out of fold
            s0 = time.perf_counter()
            at_epoch = at_epoch or fold_runs(cache, hcfg, tc, fold_rows, e_best)
            a = decision["alpha"]
            weight_folds = list(zip(fold_rows, as_saved(at_epoch, a, fold_gates)))
            log["fusion_folds_seconds"] = time.perf_counter() - s0
            say(f"  fold heads for the fusion weight: each of the {k} at epoch {e_best}, alpha {a:g}"
                f"{', gated by its fold' if fold_gates else ''} ({log['fusion_folds_seconds']:.1f}s)")
        if fold_heads is not None and decision["kept"] == "head":  # said below, if the head is still saved then
            log.update(averaged)
        log.update(dev_gain=decision.get("dev_gain"), chosen_dev=decision.get("dev_head"))
    else:
        if cfg.dev_fraction == 0:
            raise TrainError("model selection chooses and decides on held-out queries: --dev-fraction must be above 0")
        # held-out groups: half choose (early stopping, the kept epoch, the candidate), the others decide
        train_rows, held = split_by_group(groups, dev_fraction(cfg, n), cfg.seed)
        if not len(held):
            raise TrainError(f"{cache.path}: its {n} queries all have one gold context: model selection holds out the "
                             "queries of whole contexts and needs at least two; --no-auto trains fixed settings")
        choose_rows, decide_rows = _halves(groups, held, cfg.seed, log)
        if log.get("halves"):
            say(f"  note: {log['halves']}")
        cfg, cands = hybrid_settings(cache, cfg, cands, held, train_rows, log, say=say)
        decide = held_out(cache, decide_rows, cfg)
        results = {}
        for name, hc, t in cands:
            s0 = time.perf_counter()
            run = fit(cache, replace(base, **_head_dict(hc)), replace(cfg, **t), rows=(train_rows, choose_rows, decide_rows),
                      progress=False, canaries=canaries)
            rl = run["log"]
            score = run["best"]["score"] if run["best"]["state"] is not None else -math.inf
            entry = {"name": name, "head": _head_dict(hc), "train": t, "epochs": rl["settings"]["epochs"],
                     "batch_size": rl["settings"]["batch_size"], "best_epoch": rl["best_epoch"],
                     "score": run["best"]["score"], "frozen": run["frozen"].get(cfg.select_metric),
                     "seconds": time.perf_counter() - s0}
            log["candidates"].append(entry)
            say(f"  {name:<20} {cfg.select_metric} {entry['score']:.4f} at epoch {entry['best_epoch']}"
                f"/{entry['epochs']} (frozen {entry['frozen']:.4f}; batch {entry['batch_size']}) "
                f"{entry['seconds']:.1f}s")
            results[name] = (score, name, run, replace(cfg, **t), hc)
        name = prefer_query_side([(r[1], r[4].towers, r[0], r[2]["epoch_ranks"][r[2]["best"]["epoch"]])
                                  for r in results.values()], cfg, log, say=say)
        _, name, run, final_cfg, _ = results[name]
        head, run_log = run["head"], run["log"]
        log["chosen"] = name
        r0 = decide.ranks(None)
        if run["best"]["state"] is None:
            head.reset_to_identity()
            run_log["decision"] = {"kept": "identity", "why": none_beat(name, log)}
        else:  # the gate first, so that the canaries and the decision see the head as it will be saved
            gate = attach_gate(head, cache, cfg, canaries, train_rows, held, say=say)[0]
            if cfg.alpha == "auto":  # the head at each alpha (gated, as saved), the choosing queries ranked
                a = chosen_alpha(head, lambda a: run["dev"].ranks(copy.deepcopy(head).interpolate(a)), cfg, log, progress)
                final_cfg, run["cfg"] = replace(final_cfg, alpha=a), replace(run["cfg"], alpha=a)  # run's: sized
            d = finish(head, final_cfg, decide, r0, canaries, run_log, narrow=within_documents(cache))
            if d.get("measured"):
                d["measured"] = (f"alpha {d['alpha']:g}{', gated' if gate else ''}, on the {len(decide)} held-out "
                                 "queries that did not choose it")
        frozen = rank_metrics(r0)
        decision = run_log["decision"]
        log.update(dev_gain=decision.get("dev_gain"), frozen_dev=frozen, chosen_dev=decision.get("dev_head"))
        final_cfg = run["cfg"]
    if decision["kept"] == "identity" and gate:  # the identity is saved (alone, or shrunk for canaries): no gate
        head.set_gate(None)
        gate = {}
    run_log["decision"] = decision
    log["seconds"] = time.perf_counter() - t0
    run_log["selection"] = log
    run_log["seconds"] = log["seconds"]
    gain = log.get("dev_gain") or {}
    say(f"chosen: {name}; kept: {decision['kept']}"
        + (f"; dev {gain.get('of', cfg.select_metric)} gain {gain['gain']:+.4f} (95% interval {gain['low']:+.4f} to "
           f"{gain['high']:+.4f}, {gain['n']} queries)" if gain else "")
        + (f" ({decision['why']})" if decision.get("why") and not (
            gain and decision["why"] == not_above_zero(cfg.select_metric, gain)) else "")  # a gain said once
        + f"; {log['seconds']:.1f}s")
    # the fusion weight, on queries the saved head was not trained on: the held-out ones; with folds the
    # final head saw every query, so each query is scored by the head of the fold that held it out (as saved:
    # that epoch and alpha), and the frozen encoder's weight is chosen on all of them
    # served beside the BM25 it was chosen or trained beside, or that was set
    set_bm25 = cfg.hybrid or None not in (cfg.bm25_k1, cfg.bm25_b)  # else chosen, unless the head trained beside it
    pinned = set_bm25 or (final_cfg.bm25_aware and not head.config.passthrough)
    # without --hybrid the head was decided alone: inside the fusion it must beat frozen + BM25 too (on the deciding
    # queries, each side as it would be saved: the identity's own BM25 of the grid unless set, and its own weight)
    fusion = tune_after_selection(None if k else head, cache, all_rows if k else held, cfg.select_metric,
                                  say=say, grid=(cfg.fusion_weight,) if cfg.hybrid else WEIGHT_GRID,
                                  folds=weight_folds, bm25_grid=None if pinned else bm25_choices(cfg),
                                  judge=None if cfg.hybrid or cfg.dense_only else decide_rows, boot_seed=cfg.seed,
                                  frozen_bm25_grid=None if set_bm25 else bm25_choices(cfg),
                                  spec=FusionSpec(bm25=settings_of(cfg)) if pinned else None)
    why = not_above_fused(cfg, decision, fusion)
    if why:
        head.reset_to_identity().set_gate(None)
        gate = {}
        decision.update(kept="identity", why=why, fused_gain=fused_against_frozen(fusion))
        for key in ("after_folds", "after_folds_seconds"):  # no averaged head is saved
            log.pop(key, None)
        say(f"kept: identity ({why}); the frozen encoder's fusion, chosen beside the head's:")
        fusion = identity_after_selection(fusion, cfg.select_metric, say=say)
    if not k:
        why_not = "a dev split (" + ("asked for: folds 0" if folds == 0 else
                                     f"{CV_BELOW:,} queries or more" if n >= CV_BELOW else "fewer than 5 groups") + ")"
    else:
        why_not = not_tried(cache, cfg, fixed, bool(slots))
    if why_not is None:  # a head fixed in advance, judged on every query's margin; its fold heads choose its fusion
        fused = has_texts(cache) and not cfg.dense_only
        if decision["kept"] == "identity":
            say(f"  {name} not kept ({decision.get('why')}); the adapter recipe judged instead:")
            fb = fall_back(cache, cfg, fold_rows, fused, say=say)
            why, fused_gain = decision.get("why"), decision.get("fused_gain")  # fused_gain: it gave way fused
        else:  # beside the kept candidate: its fold heads as saved, on the queries that decided
            fb = beside(cache, cfg, fold_rows, fused, [h for _, h in weight_folds] if weight_folds else as_saved(
                at_epoch or fold_runs(cache, hcfg, tc, fold_rows, e_best), decision["alpha"], fold_gates), dec, name, say)
            vs, vm = fb["log"]["versus"], fb["log"]["versus_metric"]
            why = (f"the {RECIPE_NAME} beat its fold heads on the {vs['n']} queries that decided: margin "
                   f"{vs['gain']:+.4f}, {vm['of']} {vm['gain']:+.4f}")
            fused_gain = fused_against_frozen(fusion)  # it passed fused
        if fb.get("head") is not None:
            fb["decision"]["candidate_not_kept"] = f"{name}: {why}"
            fb["decision"]["measured"] += f" (instead of {name}: {why})"
            log["passed_over"] = {"name": name, "why": why, **({"dev_gain": decision["dev_gain"]} if decision.get(
                "dev_gain") else {}), **({"fused_gain": fused_gain} if fused_gain else {}), **{  # what described it
                key: log.pop(key) for key in ("alpha_choice", "towers", "chosen_dev_trained", "frozen_dev", "choose_queries",
                                              "decide_queries", "fusion_folds_seconds", "after_folds",
                                              "after_folds_seconds") if key in log}}
            head, decision, frozen, final_cfg, name, gate = (fb["head"], fb["decision"], fb["frozen"], fb["cfg"],
                                                             RECIPE_NAME, {})
            log.update(chosen=name, dev_gain=decision["dev_gain"], chosen_dev=decision["dev_head"], frozen_dev=frozen)
            run_log = {**fb["run_log"], "decision": decision, "selection": log}
            fusion = tune_after_selection(None, cache, all_rows, cfg.select_metric, say=say, boot_seed=cfg.seed,
                                          folds=list(zip(fold_rows, fb["fold_heads"])),
                                          bm25_grid=None if set_bm25 else bm25_choices(cfg),
                                          spec=FusionSpec(bm25=settings_of(cfg)) if set_bm25 else None)
    if why_not is not None:
        say(f"  {RECIPE_NAME} not judged: {why_not}")
    log["recipe"] = fb["log"] if why_not is None else {"not_tried": why_not}
    run_log["seconds"] = log["seconds"] = time.perf_counter() - t0
    if log.get("after_folds"):
        say(f"saved: {log['after_folds']} ({log['after_folds_seconds']:.1f}s)")
    # an identity records the run's settings (the rejected candidate's are in the selection log)
    return save_trained(head, run_log, cache, final_cfg if decision["kept"] == "head" else cfg, frozen, out, ckpt,
                        extra={"selection": selection_brief(log), **fusion, **gate})


def _ranked_against(cache: Cache, cfg: TrainConfig) -> dict:
    """Attach the cache's corpus rows as distractors of the held-out queries (unless these or
    a user's are attached already) and say what the queries are ranked against."""
    corpus_for_training(cache, cfg.corpus_sample, cfg.seed, strict=False)  # a sample of no corpus: said (_not_used)
    nc, nd = len(cache.contexts), cache.n_distractors
    return {"contexts": nc, "distractors": nd,
            "ranked_against": f"all {nc} contexts" + (f" + {nd} corpus texts (distractors)" if nd else "")}


def kept_epoch(ranks: list[np.ndarray], scores: list[float], cfg: TrainConfig) -> int:
    """The epoch to keep from per-epoch held-out ranks (0 = frozen): the latest one within
    noise of the highest and clearly above the frozen encoder (``within_noise``, as ``fit``
    keeps epochs), else the highest; 0 if none beat the frozen encoder."""
    peak = int(np.argmax(scores))
    if peak == 0:
        return 0
    return next((e for e in range(len(scores) - 1, peak, -1)
                 if within_noise(ranks[e], ranks[peak], r0=ranks[0], cfg=cfg)), peak)


def _halves(groups: list[str], rows: np.ndarray, seed: int, log: dict) -> tuple[np.ndarray, np.ndarray]:
    """Held-out ``rows`` cut in two by whole groups: the queries that choose (candidate, epoch)
    and the ones that decide whether the chosen head beats the frozen encoder. The decision
    then tests one head on queries that took no part in choosing it, so under no real gain it
    keeps a head about as often as its interval says (bench_null.py), not once per look.
    Rows of one group cannot be cut: they then both choose and decide (said in the log)."""
    rows = np.asarray(rows, np.int64)
    if len({groups[i] for i in rows}) < 2:
        log.update(choose_queries=len(rows), decide_queries=len(rows),
                   halves="held-out queries of one group: the same queries choose and decide")
        return rows, rows
    a, b = group_folds([groups[i] for i in rows], 2, seed + 1)
    log.update(choose_queries=len(a), decide_queries=len(b))
    return np.sort(rows[a]), np.sort(rows[b])


def _not_used(cfg: TrainConfig, k: int, cache: Cache) -> list[str]:
    """Settings given that model selection does not use in this mode, said rather than dropped."""
    out = []
    if cfg.corpus_sample and "corpus" not in cache.sections and not cache.n_distractors:
        out.append(f"corpus_sample {cfg.corpus_sample}: the cache has no corpus section (held-out queries rank "
                   "against its contexts)")
    if k and cfg.patience is not None:
        out.append(f"patience {cfg.patience}: in {k}-fold selection every fold runs every epoch and the epoch is "
                   "chosen out of fold")
    if k and cfg.dev_fraction is not None:
        out.append(f"dev_fraction {cfg.dev_fraction}: in {k}-fold selection every query is held out once")
    if not k and cfg.after_folds != "refit":
        out.append(f"after_folds {cfg.after_folds}: with one held-out split there are no fold heads; the head "
                   "trained on the training split is saved")
    return out


def _head_dict(hc: HeadConfig) -> dict:
    return {k: getattr(hc, k) for k in HEAD_KEYS}
