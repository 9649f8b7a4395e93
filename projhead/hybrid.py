"""Hybrid retrieval with a head: the fusion weight chosen on held-out queries.

Usage::

    from projhead.hybrid import choose_weight
    spec = choose_weight(cache, rows, head)        # FusionSpec, weight chosen on those queries

``choose_weight`` ranks the held-out queries ``rows`` against every context of the cache
(and the corpus rows attached to it for selection),
fusing dense and BM25 scores (``fusion.fuse``) at every weight of a grid, and keeps the
default weight unless the one of highest mean per-query metric beats it beyond noise
(``kept_weight``); the frozen encoder's weight is chosen on the same queries. ``projhead
train`` calls it (``tune_after_selection``) on the queries model selection held out, and saves
the spec in the head's config.json.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .evaluate import MISS, PER_QUERY, dense_scorer, self_matches
from .metrics import paired_bootstrap
from .retriever import HybridRetriever  # noqa: F401  (its home before projhead.retriever)
from .fusion import (BM25_GRID, DEFAULT_WEIGHT, WEIGHT_GRID, BM25Index, BM25Settings, FusionError, FusionSpec,
                     normalise, normalised_bm25, tokenize, weight_given)

MAX_TUNE_QUERIES = 4000  # held-out queries the weight is chosen on (a seeded sample beyond this)
MAX_SETTINGS_QUERIES = 2000  # held-out queries BM25's k1 and b are chosen on (a seeded sample beyond this)


def has_texts(cache, chunk: int = 2000) -> bool:
    """Whether the cache holds context texts BM25 can index: not vectors with empty texts, nor
    texts of stop words alone (BM25's tokens, with its default stop words; read a chunk at a
    time, so a cache of real texts answers after its first chunk)."""
    texts = [t for t in cache.context_texts if t.strip()]
    settings = BM25Settings()
    return any(any(tokenize(texts[a:a + chunk], settings)) for a in range(0, len(texts), chunk))


def choose_weight(cache, rows, head=None, spec: FusionSpec | None = None, metric: str = "mrr10",
                  grid=WEIGHT_GRID, max_queries: int = MAX_TUNE_QUERIES, seed: int = 0,
                  block: int = 250, bm25_grid=None, max_settings_queries: int = MAX_SETTINGS_QUERIES,
                  folds: list | None = None, judge=None, boot_seed: int = 0, frozen_bm25_grid=None,
                  stay: float | None | str = "default") -> FusionSpec:
    """``spec`` (default settings if None) with the weight of ``grid`` whose fusion of
    ``head`` (the frozen encoder if None or passthrough) and BM25 has the highest mean
    ``metric`` on the query ``rows`` of ``cache``, ranked against all its contexts (and the
    corpus rows attached to it for selection, ``Cache.ranked_contexts``), where it beats the
    weight ``stay`` beyond noise (``kept_weight``: chosen on half of the queries, judged on the
    other), else ``stay`` (None: the highest, whatever the margin); the frozen encoder's weight on
    the same queries, by the same rule, as ``frozen_weight`` (with ``judge``: that of frozen + BM25
    as the identity would be saved, and its BM25 as ``frozen_bm25`` where it is not the head's: the
    baseline an evaluation shows). Ties keep the lowest weight, and a
    best level with ``stay`` keeps ``stay``; ``boot_seed`` seeds the halves and the bootstrap.
    ``stay="default"``: ``DEFAULT_WEIGHT`` for z-scores, the weight it was measured for; None for
    the other normalisations, whose best weights lie elsewhere (min-max's lower).
    ``bm25_grid``: BM25 (k1, b) pairs to choose from first, on a sample of at most
    ``max_settings_queries`` of the rows and every other weight of ``grid``, by the best fusion
    of the head (the frozen encoder if none); ties keep the first pair. ``folds``:
    ``(rows, head)`` pairs of k-fold selection, each fold's head scoring the rows it was not
    trained on (the saved head, refit on every query, has no held-out queries of its own);
    given, they stand for ``head``. ``judge``: query rows (every one, not a sample) on which the
    head fused as chosen here is compared with frozen + BM25 as it would be chosen for the
    identity (its own BM25 of ``bm25_grid``, its own weight on the same sampled rows), query by
    query (the paired bootstrap of model selection):
    ``chosen["against_frozen"]``; ``frozen_bm25_grid``: the pairs the identity's BM25 would be
    chosen from where the head's is fixed (no ``bm25_grid``: a head trained beside one BM25).
    Raises FusionError if the cache has no texts."""
    spec = spec or FusionSpec()
    if isinstance(stay, str):
        if stay != "default":
            raise FusionError(f"stay must be a weight, None or 'default', not {stay!r}")
        stay = DEFAULT_WEIGHT if spec.normalisation == "zscore" else None
    t0 = time.perf_counter()
    rows = _checked_rows(cache, rows, "the fusion weight")
    grid = np.asarray(grid, dtype=np.float64)
    if judge is not None and not np.isin(judge, rows).all():  # refused before any ranking
        raise FusionError("the judging queries must be among the queries the weight is chosen on")
    if folds:
        held = np.concatenate([np.asarray(r, np.int64) for r, _ in folds])
        if len(np.unique(held)) < len(held) or not np.isin(rows, held).all():
            raise FusionError("fold heads choose a fusion weight on folds that hold each query once: these overlap, "
                              "or miss some of the queries")
    contexts, texts = cache.ranked_contexts()  # the contexts, then any corpus rows attached (selection's)
    towers = {"frozen": (None, contexts)}  # name: (head or None, its context vectors)
    if folds:  # per fold: its head, on its own rows only
        towers["head"] = [(np.asarray(r, np.int64), h, h.encode_contexts(contexts)) for r, h in folds]
    elif head is not None and not head.config.passthrough:
        towers["head"] = (head, head.encode_contexts(contexts))
    system = "head" if "head" in towers else "frozen"
    record = {"ranked": int(len(texts)), "distractors": int(len(texts) - len(cache.context_texts)),
              **({"folds": len(folds)} if folds else {})}
    if bm25_grid:
        bm25, index, record["bm25_search"], own = _bm25_search(cache, rows, towers, texts, spec, grid, metric, block,
                                                                bm25_grid, max_settings_queries, seed, system)
        spec = replace(spec, bm25=bm25)
    else:
        index = BM25Index(texts, spec.bm25)
        own = (spec.bm25, index, None)
        if judge is not None and system == "head" and frozen_bm25_grid:  # the identity's would be chosen
            own = _bm25_search(cache, rows, {"frozen": towers["frozen"]}, texts, spec, grid, metric, block,
                               frozen_bm25_grid, max_settings_queries, seed, "frozen")[3]
    rows = weight_rows(rows, max_queries, seed)
    per = _fused_scores(cache, rows, towers, [index], texts, grid, metric, spec.normalisation, block)[0]
    means = {name: v.mean(axis=0) for name, v in per.items()}
    best, moved = {}, {}
    for name, v in per.items():
        best[name], moved[name] = kept_weight(v, grid, stay, boot_seed)
    if judge is not None and system == "head":
        record["against_frozen"] = _against_frozen(cache, np.asarray(judge, np.int64), rows, towers, texts, spec, index,
                                                   per, own, grid, metric, block, boot_seed, stay, best["head"])
    chosen = {"queries": int(len(rows)), "metric": metric, "grid": [float(g) for g in grid],
              "scores": {name: [round(float(x), 5) for x in m] for name, m in means.items()},
              "stay": stay if stay is not None and np.isclose(grid, stay).any() else None,  # the rule applied
              **({"against_stay": {k: v for k, v in moved.items() if v}} if any(moved.values()) else {}),
              "system": system, **record, "seconds": round(time.perf_counter() - t0, 1)}
    # the baseline saved: frozen + BM25 as the identity would have been saved, where the head was judged against it
    base = record.get("against_frozen", {}).get("frozen")
    frozen_bm25 = replace(spec.bm25, k1=base["k1"], b=base["b"]) if base else spec.bm25
    return FusionSpec(weight=best.get("head", best["frozen"]), normalisation=spec.normalisation, bm25=spec.bm25,
                      frozen_weight=base["weight"] if base else best["frozen"], rrf_k=spec.rrf_k, chosen=chosen,
                      frozen_bm25=None if frozen_bm25 == spec.bm25 else frozen_bm25)


def kept_weight(per_query: np.ndarray, grid, stay: float | None, seed: int = 0) -> tuple[float, dict | None]:
    """The weight of ``grid`` to keep from ``per_query`` (queries x weights, a per-query metric):
    ``stay`` unless another beats it beyond noise, with the comparison made (None where there was
    none: ``stay`` scores as high as any on the choosing half, or ``stay`` is None or not in
    ``grid``, where the highest mean is kept, ties the lowest). As model selection chooses a head:
    the queries are cut in two at random (seeded with ``seed``); the weight of highest mean on
    one half is kept only where its paired-bootstrap gain over ``stay`` on the other half has a
    95% interval above 0. Chosen and judged on the same queries, the best of 21 weights beats the
    default by chance, and every weight it moved to that way scored below it on the test
    questions (bench/bench_fusion_choice.py)."""
    grid = np.asarray(grid, np.float64)
    at = np.flatnonzero(np.isclose(grid, stay)) if stay is not None else []
    if not len(at):
        return float(grid[int(np.argmax(per_query.mean(axis=0)))]), None
    order = np.random.default_rng(seed).permutation(len(per_query))
    choose, decide = order[:len(order) // 2], order[len(order) // 2:]
    means = per_query[choose].mean(axis=0) if len(choose) else np.zeros(len(grid))
    top = int(np.argmax(means))
    if means[top] <= means[at[0]]:  # the default is (level with) the highest
        return float(grid[at[0]]), None
    vs = paired_bootstrap(per_query[decide, top], per_query[decide, at[0]], seed=seed)
    return (float(grid[top]) if vs["low"] > 0 else float(grid[at[0]])), {"best": float(grid[top]),
                                                                        "chosen_on": int(len(choose)), **vs}


def _against_frozen(cache, judge, rows, towers, texts, spec, index, per, own, grid, metric, block, boot_seed, stay,
                    head_weight: float) -> dict:
    """The head fused at ``head_weight`` (BM25 ``index``) against frozen + BM25 as the
    identity would be saved (``own``: the frozen encoder's BM25 choice, its index and the record
    of its search or None, its weight chosen on ``rows`` at that BM25 by ``kept_weight``), each
    query of ``judge`` scored, paired bootstrap. ``frozen`` records the identity's whole choice
    (``identity_spec`` rebuilds its spec from it)."""
    fb, findex, searched = own
    v = per["frozen"]
    if findex is not index:  # the frozen encoder's own BM25 differs: its weight at that BM25
        v = _fused_scores(cache, rows, {"frozen": towers["frozen"]}, [findex], texts, grid, metric, spec.normalisation,
                          block)[0]["frozen"]
    fw, moved = kept_weight(v, grid, stay, boot_seed)
    one = {name: _fused_scores(cache, judge, {name: towers[name]}, [ix], texts, np.array([w]), metric,
                               spec.normalisation, block)[0][name][:, 0]
           for name, ix, w in (("head", index, head_weight), ("frozen", findex, fw))}
    return {**paired_bootstrap(one["head"], one["frozen"], seed=boot_seed), "metric": metric,
            "frozen": {"k1": fb.k1, "b": fb.b, "weight": fw, "scores": [round(float(x), 5) for x in v.mean(axis=0)],
                       **({"bm25_search": searched} if searched else {}),
                       **({"against_stay": moved} if moved else {})}}


def identity_spec(spec: FusionSpec) -> FusionSpec:
    """The fusion the identity would be saved with, as ``choose_weight`` without a head would
    choose it on the same queries, rebuilt from the record of a head's ``spec`` chosen with
    ``judge`` (``chosen["against_frozen"]["frozen"]``): no second search when the head gives way
    (its ``seconds``: those of the whole comparison)."""
    ch = spec.chosen
    vs = (ch.get("against_frozen") or {}).get("frozen")
    if not vs or "scores" not in vs:
        raise FusionError("this fusion was not compared with frozen + BM25: it holds no choice for the identity")
    chosen = {"queries": ch["queries"], "metric": ch["metric"], "grid": ch["grid"], "scores": {"frozen": vs["scores"]},
              "stay": ch.get("stay"),
              **({"against_stay": {"frozen": vs["against_stay"]}} if "against_stay" in vs else {}),
              "system": "frozen", "ranked": ch["ranked"], "distractors": ch["distractors"],
              **({"bm25_search": vs["bm25_search"]} if "bm25_search" in vs else {}), "seconds": ch["seconds"]}
    return FusionSpec(weight=vs["weight"], normalisation=spec.normalisation,
                      bm25=replace(spec.bm25, k1=vs["k1"], b=vs["b"]), frozen_weight=vs["weight"], rrf_k=spec.rrf_k,
                      chosen=chosen)


def choose_bm25(cache, rows, metric: str = "mrr10", grid=WEIGHT_GRID, bm25_grid=BM25_GRID, seed: int = 0,
                block: int = 250, max_settings_queries: int = MAX_SETTINGS_QUERIES) -> tuple[BM25Settings, dict]:
    """The BM25 search of ``choose_weight`` alone, for the frozen encoder: the (k1, b) pair of
    ``bm25_grid`` whose best fusion (every other weight of ``grid``) has the highest mean
    ``metric`` on a sample of at most ``max_settings_queries`` of the query ``rows``, and the
    record of the search. Raises FusionError if the cache has no texts or no rows are given."""
    rows = _checked_rows(cache, rows, "BM25's settings")
    contexts, texts = cache.ranked_contexts()
    bm25, _, record, _ = _bm25_search(cache, rows, {"frozen": (None, contexts)}, texts, FusionSpec(),
                                   np.asarray(grid, dtype=np.float64), metric, block, bm25_grid,
                                   max_settings_queries, seed, "frozen")
    return bm25, record


def _checked_rows(cache, rows, what: str) -> np.ndarray:
    """``rows`` as int64, after the checks every choice on held-out queries needs: texts for
    BM25, and some queries (FusionError naming ``what`` was to be chosen otherwise)."""
    if not has_texts(cache):
        raise FusionError(f"{cache.path}: the cache holds no context texts BM25 can index (none, or stop words "
                          "alone); fusion with BM25 needs texts")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise FusionError(f"no held-out queries to choose {what} on")
    return rows


def _bm25_search(cache, rows, towers, texts, spec, grid, metric, block, bm25_grid, max_queries, seed, system):
    """(the best BM25 settings of ``bm25_grid`` for ``system``'s best fusion at every other
    weight of ``grid``, its index, the record, (the frozen encoder's own best settings, their
    index, the record of a search for it alone)), on a sample of at most ``max_queries`` rows.
    A setting is scored by its best fusion, not at the weight ``kept_weight`` would then keep:
    scored at that weight, the settings chosen on 100 to 3,000 held-out queries did worse on the
    test questions on average (bench/bench_fusion_choice.py, README)."""
    settings = [replace(spec.bm25, k1=float(k1), b=float(b)) for k1, b in bm25_grid]
    tokenized = tokenize(texts, spec.bm25, return_ids=True)  # k1 and b leave the tokens alone
    indexes = [BM25Index(texts, s, tokenized=tokenized) for s in settings]
    some = _sample(rows, max_queries, seed)
    scored = _fused_scores(cache, some, towers, indexes, texts, grid[::2], metric, spec.normalisation, block)
    means = [{name: v.mean(axis=0) for name, v in per.items()} for per in scored]
    best = [float(m[system].max()) for m in means]
    pick = int(np.argmax(best))
    frozen_best = [float(m["frozen"].max()) for m in means]
    frozen = int(np.argmax(frozen_best))  # what the identity would be served with
    record = {"queries": int(len(some)), "grid": [[s.k1, s.b] for s in settings],
              "weights": [float(g) for g in grid[::2]]}
    return (settings[pick], indexes[pick], {**record, "best": [round(x, 5) for x in best]},
            (settings[frozen], indexes[frozen], {**record, "best": [round(x, 5) for x in frozen_best]}))


def weight_rows(rows, max_queries: int = MAX_TUNE_QUERIES, seed: int = 0) -> np.ndarray:
    """The query ``rows`` a fusion weight is chosen on: a seeded sample of ``max_queries`` beyond
    that many (``--hybrid`` ranks its held-out queries at the weight chosen on the same ones)."""
    return _sample(np.asarray(rows, np.int64), max_queries, seed)


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _fused_scores(cache, rows, towers: dict, indexes: list, texts: list, grid: np.ndarray, metric: str, how: str,
                  block: int) -> list[dict]:
    """Per BM25 index (one per setting, tokenised alike, over ``texts``), per tower: the
    ``metric`` of each query of ``rows`` (an array ``(len(rows), len(grid))``) ranked against
    every text by dense fused with BM25 (both normalised ``how``) at each weight of ``grid``. A
    tower given as a list of ``(rows, head, context vectors)`` (fold heads) scores each of the
    ``rows`` with the head of its fold."""
    rows = np.asarray(rows, np.int64)
    out = [{name: np.zeros((len(rows), len(grid))) for name in towers} for _ in indexes]
    folded = [name for name, t in towers.items() if isinstance(t, list)]
    if folded:  # one pass per fold, each fold's rows with its own head
        for fold_rows, h, c in towers[folded[0]]:
            at = np.flatnonzero(np.isin(rows, fold_rows))
            if len(at):
                t = {name: (tw if name not in folded else (h, c)) for name, tw in towers.items()}
                for k, per in enumerate(_fused_scores(cache, rows[at], t, indexes, texts, grid, metric, how, block)):
                    for name, v in per.items():
                        out[k][name][at] = v
        return out
    f = PER_QUERY[metric]
    tokens = indexes[0].tokens([cache.query_texts[i] for i in rows])
    exclude = self_matches([cache.query_texts[i] for i in rows], texts)
    q2c = np.asarray(cache.q2c)[rows]
    for start in range(0, len(rows), block):
        r = np.arange(start, min(start + block, len(rows)))
        ex = exclude[r]
        dense, q = {}, cache.queries[rows[r]]
        for name, (h, c) in towers.items():
            dense[name] = normalise(dense_scorer(q if h is None else h.encode_queries(q), c)(np.arange(len(r))), how)
        for k, index in enumerate(indexes):
            b = normalised_bm25(index.scores_of(tokens, r), how)  # (R, Nc) each side
            for name, d in dense.items():
                for j, ranks in enumerate(_fused_ranks(d, b, q2c[r], ex, grid)):
                    out[k][name][r, j] = f(ranks)
    return out


def _fused_ranks(d: np.ndarray, b: np.ndarray, gold: np.ndarray, exclude: np.ndarray, grid):
    """The gold ranks (``gold_ranks``'s) of ``w * d + (1 - w) * b`` (R, N) at each weight of
    ``grid``, a query's ``exclude`` column (its own text, -1: none) never a candidate. A context
    below the gold on the dense side and not above it on BM25 is below it fused at every weight
    above 0 (at 0 those level on BM25 tie with it), so the weights are tried on the others
    alone, each sum as the full matrix would compute it (a rounding tie in the last bit aside)."""
    ar = np.arange(len(gold))
    dg, bg = d[ar, gold], b[ar, gold]
    above = d >= dg[:, None]
    level = (b == bg[:, None]) & ~above & np.isfinite(d)  # tie with the gold at weight 0 only (0 x inf is no tie)
    mask = above | (b > bg[:, None])
    own = np.flatnonzero(exclude >= 0)
    mask[own, exclude[own]] = False
    level[own, exclude[own]] = False
    mask[ar, gold] = False  # the gold itself: the rank counts the others
    ties = level.sum(axis=1)
    rr, cc = np.nonzero(mask)
    dj, bj = d[rr, cc], b[rr, cc]
    lost = np.zeros(len(gold), bool)
    lost[own] = exclude[own] == gold[own]  # the gold is the query's own text: never retrieved
    for w in grid:
        sg = w * dg + (1 - w) * bg
        r = np.bincount(rr, weights=w * dj + (1 - w) * bj >= sg[rr], minlength=len(gold)).astype(np.int64)
        r = r + ties if w == 0 else r
        yield np.where(lost | ~np.isfinite(sg), MISS, r)


def best_weight(dev, head, grid, per_query, stay: float | None = DEFAULT_WEIGHT, seed: int = 0) -> float:
    """The dense weight of ``grid`` ``kept_weight`` keeps for ``head`` (None: the frozen encoder)
    fused with BM25, scored by ``per_query`` on ``dev`` (a ``batches.DevSet`` ranked with BM25:
    model selection's held-out queries, corpus rows included): the one of highest mean where it
    beats ``stay`` beyond noise (bootstrap seeded with ``seed``), else ``stay``."""
    if dev.bm25 is None:
        raise FusionError("a fusion weight is chosen on queries ranked with BM25: this set has none")
    was, scores = dev.weight, []
    for w in grid:
        dev.weight = float(w)
        scores.append(np.asarray(per_query(dev.ranks(head)), np.float64))
    dev.weight = was
    return kept_weight(np.stack(scores, axis=1), grid, stay, seed)[0]


def tune_after_selection(head, cache, rows, metric: str, say=print, grid=WEIGHT_GRID, bm25_grid=BM25_GRID,
                         folds: list | None = None, spec: FusionSpec | None = None, **judging) -> dict:
    """What ``projhead train`` adds to the head's config.json after model selection: the
    fusion spec chosen on the held-out ``rows`` (``{"fusion": {...}}``), or a note that the
    cache has no texts (``{}`` then: the head trains and saves as without fusion). ``grid``:
    the weights tried (a head chosen for fusion never gets 0, which would leave it unused);
    ``bm25_grid``: BM25's (k1, b) pairs chosen from first (None: the BM25 of ``spec``, default
    bm25s's defaults); ``folds``: k-fold selection's ``(rows, fold head)`` pairs, which stand for
    the head (``choose_weight``); ``judging``: ``boot_seed`` (the seed of the weight rule's halves
    and bootstraps), and ``judge`` and ``frozen_bm25_grid`` of ``choose_weight``, where head + BM25
    is compared with frozen + BM25."""
    if not has_texts(cache):
        say(f"fusion weight not chosen: {cache.path} holds no context texts BM25 can index (none, or stop words "
            "alone), and fusion with BM25 needs texts")
        return {}
    spec = choose_weight(cache, rows, head, spec=spec, metric=metric, grid=grid, bm25_grid=bm25_grid, folds=folds,
                         **judging)
    _say_fusion(spec, metric, say, folds)
    return {"fusion": spec.to_dict()}


def identity_after_selection(fusion: dict, metric: str, say=print) -> dict:
    """``tune_after_selection``'s result for the identity, from that of a head judged against
    frozen + BM25 (its ``fusion``): the frozen encoder's fusion as chosen on the same queries."""
    spec = identity_spec(FusionSpec.from_dict(fusion["fusion"]))
    _say_fusion(spec, metric, say)
    return {"fusion": spec.to_dict()}


def _say_fusion(spec: FusionSpec, metric: str, say, folds: list | None = None) -> None:
    search = spec.chosen.get("bm25_search")
    one = weight_given(spec.chosen)  # nothing chosen: no fold heads to speak of
    who = ("the head" + (f" (out of fold: each of {len(folds)} fold heads on its own fold)" if folds and not one else "")
           + f", {spec.frozen_weight:.2f} for the frozen encoder" if spec.chosen["system"] == "head"
           else "the frozen encoder (the identity head)")
    say(f"fusion with BM25 ({spec.normalisation}): dense weight {spec.weight:.2f} for {who}, "
        + ("the one weight given (--hybrid: the one its held-out queries were ranked at)" if one else
           f"chosen on {spec.chosen['queries']} held-out queries ({metric})")
        + f"; BM25 k1 {spec.bm25.k1:g}, b {spec.bm25.b:g}"
        + (f" (of {len(search['grid'])} settings, on {search['queries']} held-out queries)" if search else ""))
    for name, m in spec.chosen.get("against_stay", {}).items():
        if m["low"] <= 0:  # said where the default weight was kept over the best; a weight that moved is the one above
            say(f"  {'the head' if name == 'head' else 'the frozen encoder'}: {spec.chosen['stay']:.2f}, the default: "
                f"the best on half of these queries, {m['best']:.2f}, does not beat it beyond noise on the other "
                f"({metric} {m['gain']:+.4f}, 95% interval {m['low']:+.4f} to {m['high']:+.4f})")
    vs = spec.chosen.get("against_frozen")
    if vs:
        f = vs["frozen"]
        say(f"  head + BM25 against frozen + BM25 as the identity would be saved (k1 {f['k1']:g}, b {f['b']:g}, weight "
            f"{f['weight']:.2f}): {metric} {vs['gain']:+.4f} (95% interval {vs['low']:+.4f} to {vs['high']:+.4f}, "
            f"{vs['n']} deciding queries)")
