"""Training settings of the dialog candidates, chosen out of fold on QuAC val-train.

    PROJHEAD_DATA=../shared/data python bench/bench_dialog_settings.py [--seeds 0 1 2] [--turns 2]
        [--variants base t0.07 t0.1 ...] [--cache-dir bench/work] [--out bench/results/dialog_settings]

The dialogs of QuAC val-train (turns section of K earlier turns, as `projhead cache --dataset quac
--split val-train --turns K` makes it) cut in 4 parts by dialog, as ``bench_after_folds.py`` cuts them; a
fixed ``dialog-separate`` head (8 epochs; the candidates' settings of the time, ``base``: lr 1e-3,
random batches of 64, temperature 0.05 learned) with one setting changed is trained on three parts
and scored on the fourth, out-of-500 top-1 / top-10; val-test is not used. ``projhead-train``: the
whole of ``projhead train`` (model selection among today's dialog candidates, refit) on the same
parts. Writes OUT.json and OUT.md; one CPU thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from projhead.cache import open_cache
from projhead.config import HeadConfig
from projhead.data import load_pairs
from projhead.encoders import DEFAULT_ENCODER, get_encoder
from projhead.select import auto_train
from projhead.train import TrainConfig, train_head
from projhead.turns import build_with_turns, dialog_view

sys.path.insert(0, str(Path(__file__).parent))
from bench_after_folds import out_of_500, quac_parts  # noqa: E402

BASE = {"lr": 1e-3, "batching": "random", "batch_size": 64, "epochs": 8, "init_temperature": 0.05}
VARIANTS = {
    "base": {},
    "t0.07": {"init_temperature": 0.07},
    "t0.1": {"init_temperature": 0.1},
    "t0.15": {"init_temperature": 0.15},
    "t0.1-fixed": {"init_temperature": 0.1, "learn_temperature": False},
    "samtone": {"loss": "samtone"},
    "epochs16": {"epochs": 16},
    "batch128": {"batch_size": 128},
    "wd0.1": {"weight_decay": 0.1},
    "projhead-train": None,  # model selection as `projhead train` makes it
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--turns", type=int, default=2, help="earlier turns in the turns section")
    ap.add_argument("--cache-dir", default="bench/work")
    ap.add_argument("--out", default="bench/results/dialog_settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.cache_dir) / f"quac-turns{args.turns}-val-train.h5"
    build_with_turns(load_pairs("quac", "val-train", "sentence"), get_encoder(DEFAULT_ENCODER), path, args.turns,
                     progress=False)
    view = dialog_view(open_cache(path))
    head = HeadConfig(kind="dialog", towers="separate")
    rows = []
    for name in args.variants:
        runs, t0 = [], time.perf_counter()
        for p, train, test in quac_parts(view):
            for seed in args.seeds:
                if VARIANTS[name] is None:
                    trained, log = auto_train(train, TrainConfig(seed=seed, threads=1), progress=False)
                    chosen = {"kept": log["decision"]["kept"], "chosen": log["selection"]["chosen"]}
                else:
                    cfg = TrainConfig(seed=seed, threads=1, dev_fraction=0, **{**BASE, **VARIANTS[name]})
                    (trained, _), chosen = train_head(train, head, cfg, progress=False), {}
                runs.append({"part": p, "seed": seed, **chosen, **out_of_500(trained, test)})
        row = {"variant": name, "settings": None if VARIANTS[name] is None else {**BASE, **VARIANTS[name]},
               "runs": runs, "seconds": time.perf_counter() - t0,
               **{k: float(np.mean([r[k] for r in runs])) for k in ("top1", "top10")}}
        rows.append(row)
        print(f"{name:<12} top1 {row['top1']:6.2f}  top10 {row['top10']:6.2f}  ({row['seconds']:.0f}s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"encoder": DEFAULT_ENCODER, "seeds": args.seeds, "turns": args.turns,
                                                    "rows": rows}, indent=1))
    lines = [f"QuAC val-train in 4 parts by dialog, turns section of {args.turns} turns, fixed dialog-separate head, "
             f"seeds {args.seeds}; "
             "out-of-500 top-1 / top-10 on the part held out, mean of parts and seeds", "",
             "| variant | settings changed | top-1 | top-10 |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {_changed(VARIANTS[r['variant']])} | "
              f"{r['top1']:.2f} | {r['top10']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _changed(settings: dict | None) -> str:
    return "model selection, today's candidates" if settings is None else json.dumps(settings) if settings else "-"


if __name__ == "__main__":
    main()
