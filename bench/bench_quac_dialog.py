"""Prototype: a dialog-aware query head on QuAC, against text concatenation.

    PROJHEAD_DATA=../shared/data python bench/bench_quac_dialog.py [--seeds 0 1 2] [--turns 2]
        [--work bench/work] [--out bench/results/quac_dialog]

The concatenation rows of ``bench_quac.py`` encode "earlier turns + question" as one text, so one
pooled vector holds both what is asked now and what was said before. Here the encoder runs once
per *turn text* instead: the current question, and each of the ``--turns`` earlier turns'
question and answer (CANNOTANSWER as "no answer"), each its own vector (all-MiniLM-L6-v2). The
head sees them apart and combines them into the query vector:

- ``slot-weights``: q = v(question) + sum_s w_s v(slot s), one learned weight per slot (position
  and kind), then L2-normalised;
- ``slot-linear``: q = v(question) + sum_s W_s v(slot s) + W_0 v(question), a 384 x 384 matrix per
  slot (from zero: step 0 is the question alone).

Against concatenation, on the same recipe: ``concat-linear`` is q = v + W v over the one vector of
"earlier turns + question" (``bench_quac.py``'s cache at history ``--turns``), and ``frozen
concatenation`` that vector as it is.

Contexts are the frozen gold sentences (the cache of ``bench_quac.py`` at history 0), left as
they are. Training: symmetric InfoNCE (temperature 0.05, fixed), random batches of 256, AdamW lr
1e-3 (weight decay 0.01), ``--epochs`` (8) epochs, the last epoch kept: nothing is chosen on the
test split. Scored on ``val-test`` by out-of-500 top-1 / top-10 beside the frozen question alone.

The turn vectors live in ``WORK/quac-turns-*.npy`` with the texts in a ``.json`` beside them, not in
the cache format (a prototype; the cache keeps one vector per query). Prints one line per
(system, seed); writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from projhead.cache import build_cache, open_cache
from projhead.data import load_pairs, resolve_data_file
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.evaluate import dense_scorer, out_of_n
from projhead.quac import read_dialogs, split_dialogs


def turn_texts(split: str, turns: int, query_ids: list[str]) -> list[list[str]]:
    """Per query row: [question, q_{k-1}, a_{k-1}, q_{k-2}, a_{k-2}, ...] ("" where there is no turn)."""
    dialogs = split_dialogs(read_dialogs(resolve_data_file("quac", split)), split)
    by_id = {}
    for d in dialogs:
        for k, t in enumerate(d.turns):
            slots = [t.question]
            for back in range(1, turns + 1):
                e = d.turns[k - back] if k - back >= 0 else None
                slots += [e.question, e.answer or "no answer"] if e else ["", ""]
            by_id[t.qid] = slots
    return [by_id[q] for q in query_ids]


def encode_slots(enc, slots: list[list[str]], path: Path) -> np.ndarray:
    """(N, S, D) vectors of the slot texts (zeros for ""), encoded once per distinct text."""
    texts = sorted({t for row in slots for t in row if t})
    names = path.with_suffix(".json")
    if path.is_file() and names.is_file() and json.loads(names.read_text()) == texts:
        vecs = np.load(path)
    else:
        vecs = enc.encode(texts, role="query").astype(np.float32)
        np.save(path, vecs)
        names.write_text(json.dumps(texts))
    row = {t: i for i, t in enumerate(texts)}
    out = np.zeros((len(slots), len(slots[0]), vecs.shape[1]), np.float32)
    for i, r in enumerate(slots):
        for s, t in enumerate(r):
            if t:
                out[i, s] = vecs[row[t]]
    return out


class SlotHead(torch.nn.Module):
    def __init__(self, slots: int, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "slot-weights":
            self.w = torch.nn.Parameter(torch.zeros(slots))  # (S,), slot 0 is the question: weight 1 + w_0
        else:
            self.w = torch.nn.Parameter(torch.zeros(slots, dim, dim))  # (S, D, D)

    def forward(self, x):  # x: (B, S, D)
        if self.kind == "slot-weights":
            q = x[:, 0] + torch.einsum("s,bsd->bd", self.w, x)
        else:
            q = x[:, 0] + torch.einsum("sed,bsd->be", self.w, x)
        return F.normalize(q, dim=1)


def train(x, c, q2c, kind: str, seed: int, epochs: int, batch: int = 256, lr: float = 1e-3, t: float = 0.05):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = SlotHead(x.shape[1], x.shape[2], kind)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    X, C, G = torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(q2c)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(X)))
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            q = head(X[idx])  # (B, D)
            gold = G[idx]
            logits = q @ C[gold].T / t  # (B, B)
            same = (gold[:, None] == gold[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))  # rows sharing a gold are not negatives
            labels = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--out", default="bench/results/quac_dialog")
    args = ap.parse_args(argv)
    if not os.environ.get("PROJHEAD_DATA"):
        raise SystemExit("set PROJHEAD_DATA to the shared data folder (it holds quac/)")
    work = Path(args.work)
    enc = get_encoder(DEFAULT_ENCODER)
    data = {}
    for split in ("val-train", "val-test"):
        pairs = load_pairs("quac", split, "sentence", quac_history=0)
        path = work / f"quac-history0-{split}-sentence-{enc.name.split(':', 1)[-1]}.h5"
        build_cache(pairs, enc, path, progress=False)  # the same cache as bench_quac.py's history 0
        cache = open_cache(path)
        slots = turn_texts(split, args.turns, cache.query_ids)
        data[split] = (encode_slots(enc, slots, work / f"quac-turns{args.turns}-{split}.npy"), cache)
    (xt, ct), (xe, ce) = data["val-train"], data["val-test"]
    concat = {}
    for split in ("val-train", "val-test"):  # the concatenated text, one vector (bench_quac.py's caches)
        pairs = load_pairs("quac", split, "sentence", quac_history=args.turns)
        path = work / f"quac-history{args.turns}-{split}-sentence-{enc.name.split(':', 1)[-1]}.h5"
        build_cache(pairs, enc, path, progress=False)
        cc = open_cache(path)
        assert cc.query_ids == data[split][1].query_ids and (cc.q2c == data[split][1].q2c).all()
        concat[split] = cc.queries[:, None, :]  # (N, 1, D): one slot

    def score(q):
        m = out_of_n(dense_scorer(q, ce.contexts), ce.q2c)
        return {"top1": 100 * m["top1"], "top10": 100 * m["top10"]}

    rows = [{"system": "frozen question alone", **score(xe[:, 0])},
            {"system": "frozen concatenation", **score(concat["val-test"][:, 0])}]
    for r in rows:
        print(f"{r['system']:<24} top1 {r['top1']:5.1f}  top10 {r['top10']:5.1f}", flush=True)
    for system, kind, train_x, test_x in (("concat-linear", "slot-linear", concat["val-train"], concat["val-test"]),
                                          ("slot-weights", "slot-weights", xt, xe), ("slot-linear", "slot-linear", xt, xe)):
        runs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            head = train(train_x, ct.contexts, ct.q2c, kind, seed, args.epochs)
            with torch.no_grad():
                q = head(torch.from_numpy(test_x)).numpy()
            run = {"seed": seed, "seconds": time.perf_counter() - t0, **score(q)}
            if kind == "slot-weights":
                run["weights"] = [round(float(w), 3) for w in head.w.detach()]
            runs.append(run)
            print(f"{system:<24} top1 {run['top1']:5.1f}  top10 {run['top10']:5.1f}  seed {seed}  {run['seconds']:.0f}s"
                  + (f"  weights {run['weights']}" if "weights" in run else ""), flush=True)
        rows.append({"system": system, "runs": runs, **{k: float(np.mean([r[k] for r in runs]))
                                                      for k in ("top1", "top10", "seconds")}})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"turns": args.turns, "epochs": args.epochs, "seeds": args.seeds,
                                                    "test_queries": len(ce.q2c), "rows": rows}, indent=1))
    lines = [f"QuAC val-test ({len(ce.q2c)} questions), sentence contexts, {DEFAULT_ENCODER}, question + {args.turns} "
             f"earlier turns as separate vectors; out-of-500 top-1 / top-10, mean of seeds "
             f"{', '.join(map(str, args.seeds))}", "", "| system | top-1 | top-10 | training s |", "|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['top1']:.1f} | {r['top10']:.1f} | {r.get('seconds', 0):.0f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
