"""How far a trained head moves from the frozen encoder: the interpolation ``alpha`` model
selection picks on its choosing queries (``--alpha auto``, and 5-fold selection without
``--alpha``).

Usage::

    from projhead.alpha import chooses_alpha, chosen_alpha
    if chooses_alpha(cfg, head):
        a = chosen_alpha(head, lambda a: ranks_of_the_choosing_queries_at(a), cfg, log)

The saved head is frozen + alpha x (trained - frozen) (``Head.interpolate``).
"""
from __future__ import annotations

from .heads import Head
from .metrics import PER_QUERY
from .train import TrainConfig, within_noise

# --alpha auto, and 5-fold selection without --alpha (chooses_alpha): the interpolations the choosing queries
# pick from (largest first: ties keep it); bench_corpus --alphas: under 5,000 pairs 0.5 and 0.75 beat 0.9 on test queries
AUTO_ALPHAS = (0.9, 0.75, 0.5)


def chooses_alpha(cfg: TrainConfig, head: Head) -> bool:
    """Whether 5-fold selection picks the alpha of ``head`` on its choosing queries: asked for
    (``alpha="auto"``), or no alpha given and the head is a linear or residual one that contains
    the frozen encoder (dialog heads keep ``ALPHA``, as their benchmarks were measured)."""
    return cfg.alpha == "auto" or (cfg.alpha is None and head.config.kind != "dialog" and head.can_interpolate())


def chosen_alpha(head: Head, ranks_at, cfg: TrainConfig, log: dict, progress: bool = False) -> float:
    """The interpolation of ``AUTO_ALPHAS`` for ``head``, on the queries that choose
    (``ranks_at(alpha)``: their ranks with the head as saved at that alpha; at 0 the frozen
    encoder's): the smallest alpha whose metric is within noise of the highest and clearly above
    the frozen encoder's (``within_noise``, as epochs are kept), else the highest (ties keep the
    larger): the head moves from the frozen encoder only as far as the held-out queries say it
    helps. The queries that decide then judge that one head. 1 (the head kept whole, and said)
    for a head that cannot be interpolated."""
    if not head.can_interpolate():
        log["alpha_choice"] = {"alphas": list(AUTO_ALPHAS), "chosen": 1.0,
                               "why": "only identity-initialised linear and residual heads of the encoder's dimension "
                                      "contain the frozen encoder: this one is kept whole (alpha 1)"}
        if progress:
            print(f"  alpha: {log['alpha_choice']['why']}", flush=True)
        return 1.0
    f = PER_QUERY[cfg.select_metric]
    ranks = {a: ranks_at(a) for a in AUTO_ALPHAS}
    scores = {a: float(f(ranks[a]).mean()) for a in AUTO_ALPHAS}
    best = max(AUTO_ALPHAS, key=lambda a: scores[a])  # the first of equal scores: the larger alpha
    smaller = sorted(a for a in AUTO_ALPHAS if a < best)
    r0 = ranks_at(0.0) if smaller else None
    chosen = next((a for a in smaller if within_noise(ranks[a], ranks[best], r0, cfg)), best)
    log["alpha_choice"] = {"alphas": list(AUTO_ALPHAS), "scores": [scores[a] for a in AUTO_ALPHAS], "best": best,
                           "chosen": chosen}
    if progress:
        print(f"  alpha: {chosen:g}" + (f" (the smallest within noise of the best, {best:g})" if chosen != best else "")
              + f", by {cfg.select_metric} on the choosing queries: "
              + ", ".join(f"{a:g} {scores[a]:.4f}" for a in AUTO_ALPHAS), flush=True)
    return chosen
