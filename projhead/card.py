"""The model card: the README.md written beside a saved head, generated from its config.json.

Usage::

    from projhead.card import model_card
    text = model_card(json.loads(Path("heads/my-head/config.json").read_text()))

It says how to load and apply the head, whether an existing index stays as it is, how model
selection chose it and how far that may be trusted, its held-out metrics, the fusion with BM25
saved with it, and the training settings.
"""
from __future__ import annotations

import json

from .fusion import weight_given


def _decision_lines(d: dict, selection: dict | None, rule: str = "bootstrap", corpus: str = "") -> list[str]:
    """The model card's account of how the head was chosen and how far it may be trusted
    (``rule``: the training settings' ``decision``; ``corpus``: what the held-out queries were also
    ranked against, said after "every context of the training cache")."""
    lines = []
    if selection:
        lines += [f"## How it was chosen ({selection.get('mode')})", "",
                  "Candidates trained on the cached vectors and scored on held-out queries ranked against every "
                  "context of the training cache" + corpus
                  + " (the half of them that choose; the other half decide):", "",
                  "| candidate | held-out score | frozen | kept epoch | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['score']:.4f} | {c['frozen']:.4f} | {c['best_epoch']}/{c['epochs']} | "
                  f"{c['seconds']:.1f} |" for c in selection.get("candidates", [])]
        lines += ["", f"Chosen: `{selection.get('chosen')}`."
                  + (f" Saved: {selection['after_folds']}." if selection.get("after_folds") else ""), ""]
        hy = selection.get("hybrid")
        if hy:
            lines += [f"**Chosen for use fused with BM25** (`projhead train --hybrid`): held-out queries were ranked by "
                      f"dense fused with BM25 (z-scores, dense weight {hy['fusion_weight']}, {hy['how']}"
                      + (f"; BM25 k1 {hy['bm25']['k1']:g}, b {hy['bm25']['b']:g}, {hy['bm25']['how']}" if hy.get("bm25") else "")
                      + "), and the gain below is the fused one. Candidates named `+bm25` were trained with each pair's "
                      "BM25 score added to its cosine, so that the head learns what BM25 misses: serve them fused "
                      "(`head.fuse`).", ""]
    g = d.get("dev_gain")
    if g:
        lines += [f"Held-out {g['of'] + ' ' if g.get('of') else ''}gain over the frozen encoder{' (dense, the head alone)' if d.get('fused_gain') else ''}: "
                  f"{g['gain']:+.4f} (95% paired-bootstrap interval {g['low']:+.4f} to {g['high']:+.4f}, {g['n']} "
                  "queries); a head is kept only when " + ("the interval is above 0." if rule == "bootstrap" else
                                                   f"the gain is above 0 (decision {rule!r}).") + (f" Measured on the head {'not kept' if d.get('kept') == 'identity' else 'as saved'} ({d['measured']})." if d.get("measured") else ""),
                  ""]
    if d.get("alpha") is not None and d["alpha"] < 1 and d.get("kept") != "identity":  # an identity moved nothing
        lines += [f"Interpolated toward the frozen encoder: alpha {d['alpha']} (weights = frozen + alpha x "
                  "(trained - frozen))" + (f"; {d['shrunk']}." if d.get("shrunk") else "."), ""]
    if d.get("canaries"):
        lines += ["## Other domains (canaries, nDCG@10)", "", "| canary | frozen | "
                  + ("head not kept" if d.get("kept") == "identity" else "head") + " |", "|---|---|---|"]
        lines += [f"| {n} | {c['frozen']:.4f} | {c['head']:.4f} |" if c.get("head") is not None
                  else f"| {n} | {c['frozen']:.4f} | |" for n, c in d["canaries"].items()]
        lines.append("")
    return lines


def _index_line(h: dict) -> str:
    if h.get("kind") == "dialog":
        return ("**A dialog head** reads each question beside its earlier turns and each sentence beside its "
                "neighbours: the rows of `turns.dialog_view` over a cache made with `projhead cache --turns` "
                f"(turn slots {h.get('slots')}, vectors per sentence {h.get('sentence_slots')}: as the training cache), "
                "not plain vectors of the encoder; "
                + ("contexts go through it too." if h.get("towers") == "separate" and not h.get("passthrough") else
                   "**contexts are unchanged**: its context side returns each sentence's own frozen vector."))
    if h.get("passthrough") or h.get("towers") == "query":
        return ("**Contexts are unchanged**: `encode_contexts` returns the frozen encoder's vectors, so an existing "
                "index of context vectors stays as it is; only queries go through the head.")
    return ("**Context vectors change**: re-encode the index with `head.encode_contexts` (the frozen encoder's "
            "context vectors do not match this head's queries).")


def model_card(config: dict) -> str:
    """A short README for a saved head, generated from its config."""
    h = config["head"]
    m = config.get("metrics", {})
    lines = [
        "# projhead projection head",
        "",
        f"A `{h['kind']}` head ({h['towers']} towers, {h['in_dim']} -> {h['out_dim'] or h['in_dim']}) trained with projhead "
        f"on vectors of the frozen encoder `{h['encoder'] or 'unrecorded'}`.",
        "",
        "```python",
        "import projhead",
        "head = projhead.load_head('THIS_FOLDER')",
        *(["from projhead.turns import dialog_view",
           "view = dialog_view(projhead.open_cache('CACHE_WITH_TURNS.h5'))  # projhead cache --turns, as for training",
           "q = head.encode_queries(view.queries)",
           "c = head.encode_contexts(view.contexts)"] if h["kind"] == "dialog" else
          ["q = head.encode_queries(query_vectors)      # vectors from the same encoder",
           "c = head.encode_contexts(context_vectors)"]),
        "```",
        "",    ]
    precision = (config.get("encoder_build") or {}).get("precision")
    if precision:
        lines += [f"The training vectors were encoded in {precision}. The head accepts vectors of the same encoder in any "
                  "precision (fp32 and bf16 vectors of one text agree to a cosine of 0.9999 or better).", ""]
    d = config.get("decision") or {}
    lines += [_index_line(h), ""]
    if h.get("gate"):
        g = config.get("gate") or {}
        lines += ["**Per-query gate**: each query vector gets the head in full when it lies as close to the training "
                  "queries as most of them (Mahalanobis distance up to "
                  f"{g.get('lo', float('nan')):.3f}), the frozen encoder from {g.get('hi', float('nan')):.3f} on, "
                  "and a linear blend between; `head.gate_values(query_vectors)` shows it per query."
                  + (f" Mean gate on held-out training queries {g['mean_gate_held']:.3f}" if "mean_gate_held" in g
                     else "")
                  + "".join(f"; on {n} {v:.3f}" for n, v in zip(g.get("other_names") or [], g.get("mean_gate_other") or []))
                  + ".", ""]
    if h.get("passthrough"):
        lines += ["**This head is the identity**: model selection kept the frozen vectors"
                  + (f" ({d['why']})." if d.get("why") else "."), ""]
    nd = ((config.get("selection") or config.get("cache") or {}).get("distractors") or 0)  # --no-auto: the cache's
    corpus = f" and {nd:,} corpus texts" if nd else ""  # ranked beside the contexts
    lines += _decision_lines(d, config.get("selection"), (config.get("training") or {}).get("decision", "bootstrap"),
                             corpus)
    if m:
        hy = (config.get("selection") or {}).get("hybrid")
        fused = f", ranked fused with BM25 at dense weight {hy['fusion_weight']}" if hy else ""
        streamed = (config.get("training") or {}).get("stream")  # its dev split ranks its own contexts only
        against = "the held-out split's own contexts (streamed training)" if streamed else f"all its contexts{corpus}"
        lines += [f"## Held-out metrics (queries of the training cache not trained on, against {against}{fused})",
                  "", "| | " + " | ".join(m.get("frozen", {})) + " |",
                  "|---|" + "---|" * len(m.get("frozen", {}))]
        for row in ("frozen", "head"):
            if row in m:
                lines.append(f"| {row} | " + " | ".join(f"{v:.4f}" for v in m[row].values()) + " |")
        lines.append("")
    fz = config.get("fusion")
    if fz:
        b = fz.get("bm25", {})
        ch = fz.get("chosen") or {}
        lines += ["## Fusion with BM25", "",
                  f"`head.fuse(dense, bm25)`: {fz['weight']} x dense + {round(1 - fz['weight'], 4)} x BM25, each "
                  f"{fz['normalisation']}-normalised per query over every context"
                  + (f" (frozen encoder: dense weight {fz['frozen_weight']})" if fz.get("frozen_weight") is not None
                     else "") + ".",
                  *([f"Frozen + BM25 as the identity would have been saved (the baseline of `projhead eval`): BM25 "
                     f"k1 {fz['frozen_bm25'].get('k1')}, b {fz['frozen_bm25'].get('b')}."] if fz.get("frozen_bm25") else []),
                  f"BM25: bm25s {b.get('method')}, k1 {b.get('k1')}, b {b.get('b')}, stemmer "
                  f"{b.get('stemmer') or 'none'}, stopwords {b.get('stopwords') or 'none'}."
                  + (" Weight: the one its held-out queries were ranked at while the head was chosen and decided on "
                     "(`--hybrid`, above)." if weight_given(ch) else
                     (f" Weight chosen on {ch['queries']} held-out queries ({ch['metric']})"
                      + (f", each scored by the head of the fold that held it out ({ch['folds']} folds)"
                         if ch.get("folds") else "")
                      + (f": {ch['stay']} unless another beats it beyond noise" if ch.get("stay") is not None else "")
                      + ".") if ch.get("queries") else "")
                  + (f" k1 and b chosen first, of {len(ch['bm25_search']['grid'])} settings, on "
                     f"{ch['bm25_search']['queries']} held-out queries." if ch.get("bm25_search") else ""), ""]
    t = config.get("training", {})
    if t:
        lines += ["## Training", "", "```json", json.dumps(t, indent=1), "```", ""]
    c = config.get("cache", {})
    if c:
        lines += [f"Trained on cache `{c.get('path')}` (fingerprint `{c.get('fingerprint', '')[:16]}...`, "
                  f"{c.get('dataset')} {c.get('split')}, {c.get('granularity')} contexts).", ""]
    return "\n".join(lines)


def selection_brief(log: dict) -> dict:
    """What config.json keeps of model selection's log (``select.auto_train``), for the model card and
    for readers of the head folder."""
    return {"mode": log["mode"], "chosen": log.get("chosen"), "dev_gain": log.get("dev_gain"),
            **({"towers": log["towers"]} if log.get("towers") else {}),
            **({"hybrid": log["hybrid"]} if log.get("hybrid") else {}),
            **({"after_folds": log["after_folds"]} if log.get("after_folds") else {}),
            **({"alpha_choice": log["alpha_choice"]} if log.get("alpha_choice") else {}),
            **{key: log[key] for key in ("recipe", "passed_over") if log.get(key)},
            "ranked_against": log.get("ranked_against"), "distractors": log.get("distractors", 0),
            "candidates": [{k: c[k] for k in ("name", "score", "frozen", "best_epoch", "epochs", "seconds")}
                           for c in log["candidates"]]}
