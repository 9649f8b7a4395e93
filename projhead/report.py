"""A report people can look at: Markdown + PNG plots of a head against its frozen encoder.

Usage::

    from projhead.report import write_report
    write_report(cache, head, "reports/minilm-squad", results)   # results from evaluate_cache
    # projhead eval DEV.h5 --head heads/minilm-squad --bm25 --report reports/minilm-squad

Writes ``report.md`` and, beside it: ``training_curve.png`` (from the head's training log),
``recall_at_k.png`` (full-corpus recall@k, frozen vs head, BM25 if scored),
``top1_similarity.png`` (the score of each query's top-ranked context, split by whether it
is the gold one), ``towers_2d.png`` (queries and their gold contexts projected to 2-D by PCA,
before and after the head: how the two towers line up), and a table of retrieved examples
where the head changed the answer, wins and losses.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .evaluate import dense_scorer, format_table, system_ranks
from .turns import frozen_blocks


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_log(log: dict, path: Path, metric: str) -> Path | None:
    """Training loss and dev metric per epoch, frozen baseline dashed (the loss alone when the
    run had no held-out queries; None, nothing drawn, when it trained no epoch). Needs matplotlib."""
    try:
        plt = _plt()
    except ImportError:
        return None
    ep = [e["epoch"] for e in log["epochs"]]
    if not ep:  # nothing trained on every pair (an identity kept out of fold): no curve to draw
        return None
    fig, axes = plt.subplots(1, 2 if log["frozen_dev"] else 1, figsize=(9 if log["frozen_dev"] else 4.5, 3.2),
                             squeeze=False)
    a = axes[0, 0]
    a.plot(ep, [e["train_loss"] for e in log["epochs"]], marker="o")
    a.set(xlabel="epoch", ylabel="train loss", title="training loss")
    if log["frozen_dev"]:  # k-fold selection's run on every pair has no held-out queries of its own
        b = axes[0, 1]
        b.plot([0] + ep, [log["frozen_dev"][metric]] + [e["dev"][metric] for e in log["epochs"]], marker="o",
               label="head")
        b.axhline(log["frozen_dev"][metric], ls="--", color="gray", label="frozen encoder")
        b.set(xlabel="epoch", ylabel=f"held-out {metric}", title="held-out queries, all contexts")
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _alignment(q: np.ndarray, c: np.ndarray, q2c: np.ndarray) -> dict:
    """Mean cosine of a query to its gold context, and the gap between the centroids of the
    normalised queries and contexts (the "modality gap")."""
    with np.errstate(all="ignore"):  # a head whose outputs overflow gives NaN here, said as such
        q, c = np.asarray(q, np.float64), np.asarray(c, np.float64)  # large float32 norms do not overflow
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        return {"gold_cosine": float((qn * cn[q2c]).sum(1).mean()),
                "centroid_gap": float(np.linalg.norm(qn.mean(0) - cn.mean(0)))}


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2]


REPORT_FILES = ("report.md", "report.json", "training_curve.png", "recall_at_k.png", "top1_similarity.png",
                "towers_2d.png")


@contextlib.contextmanager
def _written_into(out: Path):
    """A fresh folder to write the report into: beside ``out`` when there is none yet (then
    renamed to it), else inside it, its files then replacing an earlier report's (the user's
    other files stay). A failure while writing leaves ``out`` as it was, or absent."""
    fresh = not out.exists()
    if fresh:
        out.parent.mkdir(parents=True, exist_ok=True)
    work = (out.parent / f".{out.name}.report.tmp{os.getpid()}" if fresh
            else out / f".report.tmp{os.getpid()}")  # names files.foreign_files passes over
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        if fresh:
            os.replace(work, out)
            return
        written = {p.name for p in work.iterdir()}
        for name in written:
            os.replace(work / name, out / name)
        for name in set(REPORT_FILES) - written:  # an earlier report's file this one does not have
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report(cache, head, out: str | os.PathLike, results: dict, head_path: str | os.PathLike | None = None,
                 n_examples: int = 5, n_points: int = 400, seed: int = 0, ranks: dict | None = None,
                 fusion=None, index: str | None = None) -> Path:
    """Write the report folder (see module doc); returns the path of report.md. ``ranks``:
    the systems' ranks from ``evaluate_cache(..., return_ranks=True)``, so nothing is scored
    twice (computed here when not given: every context scored, a query's own text left out,
    BM25 with ``fusion``'s settings, default the head's, as ``evaluate_cache`` does).
    ``index``: the FAISS index the table's full-corpus figures came from (said in the report:
    its curves and examples score every context). Written whole or not at all."""
    from .evaluate import excluding, self_matches

    plt = _plt()
    out = Path(out)
    q2c = cache.q2c
    hq, hc = head.encode_queries(cache.queries), head.encode_contexts(cache.contexts)
    Q, C = frozen_blocks(cache)  # of a dialog view, the question and the sentence
    exclude = self_matches(cache.query_texts, cache.context_texts)
    ranks = dict(ranks or {})
    for name, (q, c) in (("frozen", (Q, C)), ("head", (hq, hc))):
        if ranks.get(name) is None or ranks[name].top is None:  # an index's ranks hold no top-1 context
            ranks[name] = system_ranks(excluding(dense_scorer(q, c), exclude), q2c)
    n_corpus = int(cache.attrs.get("n_distractors", 0))
    lines = [f"# projhead report: `{head_path or 'head'}` on `{cache.path.name}`", "",
             f"{len(q2c)} queries, {len(C) - n_corpus} distinct contexts"
             + (f" + {n_corpus} corpus texts (distractors, full corpus only)" if n_corpus else "")
             + f", encoder `{cache.encoder}`; head: {head.config.kind} ({head.config.towers} towers)"
             + (", **identity (training kept the frozen encoder)**" if head.config.passthrough else "") + ".", "",
             "## Retrieval (percent)", "", format_table(results), ""]
    if index:
        lines += [f"The table's full-corpus figures come from the index `{index}`; the curves, counts and "
                  "examples below score every context exactly.", ""]
    with _written_into(out) as work:
        _figures(plt, cache, head, head_path, work, results, ranks, lines, hq, hc, Q, C, fusion, exclude,
                 n_examples, n_points, seed)
    return out / "report.md"


def _figures(plt, cache, head, head_path, work: Path, results, ranks, lines, hq, hc, Q, C, fusion, exclude,
             n_examples, n_points, seed) -> None:
    """The report's figures, tables and files, written into ``work``. A query's top-1 is right
    only when its gold context ranks first under the tie rule (``ranks.full == 0``), as in the table."""
    from .evaluate import bm25_scorer, excluding

    q2c = cache.q2c
    r_frozen, val_f = ranks["frozen"].full, ranks["frozen"].top_score
    r_head, val_h = ranks["head"].full, ranks["head"].top_score

    # training curve, redrawn from the log the trainer saved beside the head
    log_path = Path(head_path) / "train_log.json" if head_path else None
    if log_path is not None and log_path.is_file():
        metric = head.info.get("training", {}).get("select_metric", "mrr10")
        if plot_log(json.loads(log_path.read_text()), work / "training_curve.png", metric) is not None:
            lines += ["## Training", "", "![training curve](training_curve.png)", ""]

    # recall@k curves
    ks = np.unique(np.round(np.logspace(0, np.log10(min(1000, len(C))), 40)).astype(int))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(ks, [(r_frozen < k).mean() for k in ks], label="frozen encoder", color="gray", ls="--")
    ax.plot(ks, [(r_head < k).mean() for k in ks], label="head", color="C0")
    if "bm25" in results:
        if ranks.get("bm25") is None:  # as evaluate_cache scores it: the fusion's settings, own texts left out
            settings = (fusion or head.fusion).bm25 if (fusion or head.fusion) is not None else None
            ranks["bm25"] = system_ranks(excluding(bm25_scorer(cache.query_texts, cache.context_texts, settings),
                                                   exclude), q2c)
        r_bm25 = ranks["bm25"].full
        ax.plot(ks, [(r_bm25 < k).mean() for k in ks], label="BM25", color="C2", ls=":")
    ax.set(xscale="log", xlabel="k", ylabel="recall@k (full corpus)", title="recall@k")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(work / "recall_at_k.png", dpi=110)
    plt.close(fig)
    lines += ["## Recall@k, every context a candidate", "", "![recall at k](recall_at_k.png)", ""]

    # the score of the top-ranked context, right vs wrong
    right_f, right_h = r_frozen == 0, r_head == 0
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    vals = np.concatenate([val_f, val_h])
    vals = vals[np.isfinite(vals)]
    bins = np.linspace(vals.min(), vals.max(), 40) if len(vals) and vals.max() > vals.min() else 40
    for ax, right, val, name in ((axes[0], right_f, val_f, "frozen encoder"), (axes[1], right_h, val_h, "head")):
        ok = np.isfinite(val)
        ax.hist(val[right & ok], bins=bins, alpha=0.6, label=f"top-1 is gold ({right.mean():.1%})")
        ax.hist(val[~right & ok], bins=bins, alpha=0.6, label="top-1 is not gold")
        ax.set(title=name, xlabel="similarity of the top-1 context")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("queries")
    fig.tight_layout()
    fig.savefig(work / "top1_similarity.png", dpi=110)
    plt.close(fig)
    lines += ["## How sure is the top-1 answer?", "",
              "Similarity of each query's top-ranked context, split by whether it is the gold one. "
              "The further apart the two, the more a score threshold can tell right from wrong.", "",
              "![top-1 similarity](top1_similarity.png)", ""]

    # the two towers in 2-D, before and after
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(q2c), size=min(n_points, len(q2c)), replace=False)
    a_f, a_h = _alignment(Q, C, q2c), _alignment(hq, hc, q2c)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, qq, cc, name, a in ((axes[0], Q, C, "frozen encoder", a_f), (axes[1], hq, hc, "head", a_h)):
        ax.set(xticks=[], yticks=[])
        both = np.concatenate([qq[pick], cc[q2c[pick]]])
        both = both / np.linalg.norm(both, axis=1, keepdims=True)
        if not np.isfinite(both).all():  # a head whose outputs overflow: nothing to project
            ax.set(title=f"{name}\nvectors hold NaN or Inf: not drawn")
            continue
        mean, comps = _pca2(both)
        p = (both - mean) @ comps.T
        pq, pc = p[:len(pick)], p[len(pick):]
        for i in range(min(40, len(pick))):
            ax.plot([pq[i, 0], pc[i, 0]], [pq[i, 1], pc[i, 1]], color="lightgray", lw=0.6, zorder=0)
        ax.scatter(pq[:, 0], pq[:, 1], s=6, label="queries", color="C0")
        ax.scatter(pc[:, 0], pc[:, 1], s=6, label="gold contexts", color="C1")
        ax.set(title=f"{name}\ngold cosine {a['gold_cosine']:.3f}, centroid gap {a['centroid_gap']:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(work / "towers_2d.png", dpi=110)
    plt.close(fig)
    lines += ["## The two towers", "",
              f"{len(pick)} queries and their gold contexts, PCA to 2-D (each panel its own PCA; grey lines join "
              "a query to its context). Mean cosine of a query to its gold context: frozen "
              f"{a_f['gold_cosine']:.3f}, head {a_h['gold_cosine']:.3f}; distance between the centroids of "
              f"queries and contexts: frozen {a_f['centroid_gap']:.3f}, head {a_h['centroid_gap']:.3f}.", "",
              "![towers in 2-D](towers_2d.png)", ""]

    # examples where the head changed the top-1 answer
    wins, losses = np.flatnonzero(right_h & ~right_f), np.flatnonzero(~right_h & right_f)
    lines += ["## Where the head changed the answer", "",
              f"Full corpus, top-1: the head fixes {len(wins)} queries the frozen encoder got wrong, and breaks "
              f"{len(losses)} it got right (net {len(wins) - len(losses):+d} of {len(q2c)}).", ""]
    for title, rows in (("Wins", wins), ("Losses", losses)):
        if not len(rows):
            continue
        lines += [f"### {title}", "", "| query | gold context | frozen top-1 | head top-1 |", "|---|---|---|---|"]
        for i in rng.choice(rows, size=min(n_examples, len(rows)), replace=False):
            cells = [cache.query_texts[i], cache.context_texts[q2c[i]],
                     _answer(cache, i, Q, C, r_frozen[i], exclude), _answer(cache, i, hq, hc, r_head[i], exclude)]
            lines.append("| " + " | ".join(_cell(t) for t in cells) + " |")
        lines.append("")
    (work / "report.md").write_text("\n".join(lines))
    finite = {k: {m: (v if np.isfinite(v) else None) for m, v in a.items()} for k, a in (("frozen", a_f), ("head", a_h))}
    (work / "report.json").write_text(json.dumps({"results": results, "alignment": finite, "wins": int(len(wins)),
                                                  "losses": int(len(losses))}, indent=1))


def _answer(cache, i: int, q: np.ndarray, c: np.ndarray, rank: int, exclude: np.ndarray) -> str:
    """What a system gives query ``i`` first, as the counts judge it: its gold context when it
    ranks first (``rank`` 0), else the best other context (one that ties with the gold
    included), never the query's own text."""
    with np.errstate(all="ignore"):
        s = np.asarray(c, np.float64) @ np.asarray(q[i], np.float64)
    if not np.isfinite(s).all():
        return "(scores not finite)"
    gold = int(cache.q2c[i])
    if rank == 0:
        return cache.context_texts[gold]
    s[gold] = -np.inf
    if exclude[i] >= 0:
        s[exclude[i]] = -np.inf
    return cache.context_texts[int(np.argmax(s))]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"
