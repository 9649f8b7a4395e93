"""Hybrid model selection's settings (``projhead train --hybrid``), fixed before any candidate
is trained: settings it refuses, BM25's k1 and b, the dense share at which held-out queries are
ranked fused with BM25, and the BM25 share the BM25-aware candidates train with.

Usage (``select.auto_train`` does this)::

    check_hybrid(cfg)                                   # refused settings, before anything is trained
    cfg, cands = hybrid_settings(cache, cfg, cands, held_rows, train_rows, log, say=print)
    why = not_above_fused(cfg, decision, fusion)         # after the fusion: a head that loses inside it gives way

Without ``--hybrid`` a head is decided on alone, then must also beat frozen + BM25 fused.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .batches import held_out
from .cache_reader import Cache
from .config import TrainConfig, TrainError
from .evaluate import PER_QUERY
from .fusion import BM25_GRID, DEFAULT_WEIGHT, WEIGHT_GRID
from .hybrid import best_weight, choose_bm25, weight_rows
from .lexical import bm25_share, settings_of, training_bm25


def check_hybrid(cfg: TrainConfig) -> None:
    """Hybrid settings refused before anything is trained."""
    ls = cfg.loss_settings or {}
    if cfg.loss != "clip" or ls.get("chunk_size") or "bm25_weight" in ls:
        raise TrainError("hybrid selection trains its BM25-aware candidates with the clip loss, the whole BM25 block "
                         "of each batch and its own BM25 share: use --loss clip, no --chunk-size and no bm25_weight "
                         f"loss setting (given: loss {cfg.loss}, settings {ls})")
    if cfg.fusion_weight is not None and cfg.fusion_weight == 0:
        raise TrainError("hybrid selection ranks held-out queries fused with a dense share above 0 (at 0 no head "
                         "could show): set fusion_weight in (0, 1]")


def bm25_choices(cfg: TrainConfig) -> list[tuple[float, float]]:
    """The (k1, b) pairs BM25 is chosen from: ``fusion.BM25_GRID``, with k1 or b as set in ``cfg``."""
    return list(dict.fromkeys((k1 if cfg.bm25_k1 is None else cfg.bm25_k1, b if cfg.bm25_b is None else cfg.bm25_b)
                              for k1, b in BM25_GRID))


def hybrid_settings(cache: Cache, cfg: TrainConfig, cands: list, held_rows: np.ndarray, train_rows: np.ndarray,
                   log: dict, say=print) -> tuple[TrainConfig, list]:
    """With ``cfg.hybrid``: BM25's k1 and b, unless set, and the dense share at which held-out
    queries are ranked (fused with BM25) while candidates are chosen and the head is decided
    on, unless set, both the frozen encoder's choice, by the rules ``projhead train`` saves a
    fusion with (``hybrid.kept_weight``: the default weight unless another beats it beyond
    noise), on every held-out query (``held_rows``: the
    choosing and the deciding ones, as ``projhead train`` chooses them after selection without
    ``--hybrid``; the choosing half alone makes noisier picks), ranked as
    selection ranks them (with any corpus rows), so the identity is compared at the fusion it
    would be saved with. Tuned to the frozen encoder and shared by both sides of the decision, they tilt it
    toward the identity if at all (they also set the BM25-aware candidates' share and the
    rankings the choosing half stops early on). The search samples at most
    ``hybrid.MAX_SETTINGS_QUERIES`` with ``cfg.seed``. k1 and b of ``bm25_choices`` by the search
    ``projhead train`` makes after selection without ``--hybrid`` (``hybrid.choose_bm25``),
    then the share above 0 at those (``hybrid.best_weight``). The BM25-aware
    candidates are trained beside that BM25, with their share (``lexical.bm25_share``) from
    that weight, once for every fold and the final run (from ``train_rows``). The head (or the
    identity) is saved fused at that weight and BM25, the fusion it was chosen and decided at."""
    if not cfg.hybrid:
        return cfg, cands
    if cfg.bm25_k1 is None or cfg.bm25_b is None:
        s0 = time.perf_counter()
        chosen, search = choose_bm25(cache, held_rows, cfg.select_metric, bm25_grid=bm25_choices(cfg), seed=cfg.seed)
        partly = "k1 as set, b " if cfg.bm25_k1 is not None else "b as set, k1 " if cfg.bm25_b is not None else ""
        cfg = replace(cfg, bm25_k1=chosen.k1, bm25_b=chosen.b)
        bm25 = {"how": f"{partly}the frozen encoder's fusion on {search['queries']} held-out queries",
                "search": search, "seconds": round(time.perf_counter() - s0, 1)}
    else:
        bm25 = {"how": "as set"}
    bm25 = {"k1": cfg.bm25_k1, "b": cfg.bm25_b, **bm25}
    say(f"  hybrid: BM25 k1 {cfg.bm25_k1:g}, b {cfg.bm25_b:g} ({bm25['how']}"
        + (f", of {len(bm25['search']['grid'])} settings, {bm25['seconds']:.1f}s" if "search" in bm25 else "") + ")")
    training_bm25(cache, settings_of(cfg), say=lambda t: say("  " + t))  # made (and stored) once, before any fold
    if cfg.fusion_weight is None:  # a share of 0 would leave every head unseen: the grid from its first step
        dev = held_out(cache, weight_rows(held_rows), replace(cfg, fusion_weight=WEIGHT_GRID[1]))  # as it is saved
        cfg = replace(cfg, fusion_weight=best_weight(dev, None, WEIGHT_GRID[1:], PER_QUERY[cfg.select_metric],
                                                     seed=cfg.seed))
        how = (f"the frozen encoder's on {len(dev)} of the {len(held_rows)} held-out queries: {DEFAULT_WEIGHT:g} unless "
               "another above 0 beats it beyond noise")
    else:
        how = "as set"
    lam = bm25_share(cache.queries[train_rows], cache.contexts, cfg.fusion_weight, cfg.seed)
    cands = [(name, hc, {**t, "loss_settings": {**cfg.loss_settings, "bm25_weight": lam}} if t.get("bm25_aware") else t)
             for name, hc, t in cands]
    log["hybrid"] = {"fusion_weight": cfg.fusion_weight, "how": how, "bm25_share": lam, "bm25": bm25}
    say(f"  hybrid: held-out queries ranked by dense fused with BM25 (z-scores), dense weight "
        f"{cfg.fusion_weight:g} ({how}); BM25-aware candidates add {lam:.4f} x z(BM25) to each cosine")
    return cfg, cands


def fused_against_frozen(fusion: dict) -> dict | None:
    """Head + BM25 against frozen + BM25 on the deciding queries, as ``tune_after_selection``'s
    result ``fusion`` records it (``fusion.chosen.against_frozen``), or None where it was not compared."""
    return ((fusion.get("fusion") or {}).get("chosen") or {}).get("against_frozen")


def not_above_fused(cfg: TrainConfig, decision: dict, fusion: dict) -> str | None:
    """Why a head kept on its own must still give way to the identity, or None: fused with
    BM25, each as it would be saved (its own BM25 settings and weight), the head is not above
    the frozen encoder on the deciding queries (``fusion.chosen.against_frozen``,
    ``hybrid.choose_weight``) by the rule of ``cfg.decision`` (bootstrap: the interval above 0;
    else the gain). ``--hybrid`` decides fused from the start and records no such comparison."""
    vs = fused_against_frozen(fusion)
    if decision.get("kept") != "head" or not vs:
        return None
    if (vs["low"] > 0) if cfg.decision == "bootstrap" else (vs["gain"] > 0):
        return None
    return (f"fused with BM25, each as it would be saved, the head is not above frozen + BM25: held-out {vs['metric']} "
            f"gain {vs['gain']:+.4f} (95% interval {vs['low']:+.4f} to {vs['high']:+.4f}, {vs['n']} queries)")
