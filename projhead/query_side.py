"""Which towers to keep: a query-side head (the index stays) unless a two-tower one beats it.

Usage::

    from projhead.query_side import prefer_query_side
    name = prefer_query_side([(name, towers, score, ranks), ...], cfg, log)

Model selection (``select.auto_train``) calls it with each candidate's score and per-query ranks
on the choosing queries.
"""
from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig
from .metrics import PER_QUERY, paired_bootstrap


def prefer_query_side(scored: list[tuple[str, str, float, np.ndarray]], cfg: TrainConfig, log: dict,
                      say=None) -> str:
    """The candidate to keep, from ``(name, towers, score, ranks on the choosing queries)``: the
    best query-side head (contexts, and so an existing index, stay as they are) unless the
    best-scoring candidate changes contexts and beats it beyond noise on the same queries (the
    95% paired-bootstrap interval of its gain above 0, as the frozen-vs-head decision). Only
    candidates of one kind of towers (``--towers``): the best one. Said in ``log["towers"]``, and
    to ``say`` (a function of a line) if given."""
    top = max(scored, key=lambda s: s[2])
    query = [s for s in scored if s[1] == "query"]
    if top[1] == "query" or not query:
        return top[0]
    q = max(query, key=lambda s: s[2])
    f = PER_QUERY[cfg.select_metric]
    boot = paired_bootstrap(f(top[3]), f(q[3]), seed=cfg.seed)
    beyond = bool(boot["low"] > 0 and math.isfinite(top[2]))
    chosen = top[0] if beyond else q[0]
    log["towers"] = {"query_side": q[0], "two_tower": top[0], "gain": boot, "chosen": chosen,
                     "why": (f"{top[0]} beats {q[0]} beyond noise on the choosing queries" if beyond else
                             f"{top[0]} is not better than {q[0]} beyond noise on the choosing queries: the "
                             "query-side head is kept, and contexts stay as they are")}
    if say is not None:
        say(f"  two-tower {top[0]} vs query-side {q[0]}: {cfg.select_metric} gain {boot['gain']:+.4f} "
            f"(95% interval {boot['low']:+.4f} to {boot['high']:+.4f}, {boot['n']} queries); keeping "
            + (f"{chosen} (contexts change: re-encode the index)" if beyond else f"{chosen} (contexts unchanged)"))
    return chosen


def none_beat(name: str, log: dict) -> str:
    """Why the identity, when the chosen candidate has no epoch above the frozen encoder."""
    tw = log.get("towers")
    return ("no epoch of any candidate beat the frozen encoder" if not tw or tw["chosen"] == tw["two_tower"] else
            f"no epoch of {name} beat the frozen encoder ({tw['two_tower']} scored higher, not beyond noise of it)")
