"""Model selection's fold heads, run again to the chosen epoch, and averaged into one head.

Usage::

    from projhead.soup import as_saved, average, averaged_log, fold_runs
    runs = fold_runs(cache, head_config, train_config, fold_rows, epoch)  # one fit per fold
    head = average([r["head"] for r in runs])
    log = averaged_log(runs, epoch)                     # its training log: the fold runs' means

k-fold selection trains the chosen candidate once per fold, on the other folds' pairs, and
picks the epoch out of fold. ``fold_runs`` trains those runs again with the same schedule and
seed, ended at that epoch (so each fold head is the one whose held-out ranks chose it).
``average`` takes the mean of their weights: for linear and dialog heads (linear maps, one
per tower) that is exactly the mean of the fold heads' outputs before normalising, an ensemble
at the cost of one head; for residual heads, which all start from the same weights, a weight
average of fine-tuned copies ("model soups", Wortsman et al., 2022).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from .config import TrainConfig, TrainError
from .heads import Head, HeadConfig
from .train import fit


def fold_runs(cache, hcfg: HeadConfig, tc: TrainConfig, fold_rows: list[np.ndarray], epoch: int) -> list[dict]:
    """Each fold's run again (trained on the other folds, its own fold as dev), ended at
    ``epoch``: ``fit``'s results, the head at that epoch."""
    if epoch < 1:
        raise TrainError("fold heads are run to an epoch of training (>= 1)")
    all_rows = np.arange(len(cache.q2c))
    return [fit(cache, hcfg, replace(tc, stop_epoch=epoch), rows=(np.setdiff1d(all_rows, rows), rows),
                progress=False, keep_later=False, keep_last=True) for rows in fold_rows]


def average(heads: list[Head]) -> Head:
    """A new head of the first one's settings whose weights are the mean of ``heads``' (all
    of one configuration: the same tensors and shapes)."""
    if not heads:
        raise TrainError("no heads to average")
    if any(h.config.passthrough or h.gate is not None for h in heads):
        raise TrainError("only trained heads without a per-query gate are averaged (not the identity, not gated heads)")
    if any(h.config != heads[0].config for h in heads[1:]):
        raise TrainError("heads of different settings cannot be averaged")
    states = [h.state_dict() for h in heads]
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise TrainError("heads of different settings cannot be averaged")
    out = Head(replace(heads[0].config), info=dict(heads[0].info))
    with torch.no_grad():
        out.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                             for k in keys})
    out.eval()
    return out


def averaged_log(runs: list[dict], epoch: int) -> dict:
    """The training log of the head ``average`` makes of ``runs`` (``fold_runs``' results, ended at
    ``epoch``): per epoch, the fold runs' mean training loss and mean held-out metrics (each on its
    own fold, which it did not train on), and the frozen encoder's the same way."""
    logs = [r["log"] for r in runs]

    def mean(dicts: list[dict]) -> dict:
        return {m: float(np.mean([d[m] for d in dicts])) for m in dicts[0]}

    epochs = [{"epoch": i + 1, "train_loss": float(np.mean([g["epochs"][i]["train_loss"] for g in logs])),
               "dev": mean([g["epochs"][i]["dev"] for g in logs])} for i in range(epoch)]
    return {"epochs": epochs, "frozen_dev": mean([g["frozen_dev"] for g in logs]), "best_epoch": epoch,
            "n_train": [g["n_train"] for g in logs], "n_dev": [g["n_dev"] for g in logs],
            "settings": logs[0]["settings"], "averaged": f"the weights of {len(runs)} fold runs at epoch {epoch}"}


def with_fold_share(runs: list[dict], cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the mean BM25 share (``bm25_weight``) the fold ``runs`` trained at, where they
    trained beside BM25 (each fold's share is taken on its own training pairs)."""
    shares = [r["cfg"].loss_settings.get("bm25_weight") for r in runs]
    return cfg if None in shares else replace(cfg, loss_settings={**cfg.loss_settings, "bm25_weight": float(np.mean(shares))})


def as_saved(runs: list[dict], alpha: float, gates: list | None = None) -> list[Head]:
    """Each fold run's head (``fold_runs``: the chosen epoch) as the head is saved: a copy
    interpolated to ``alpha`` (left as it is at 1, which heads that cannot interpolate keep),
    gated by its fold's gate of ``gates`` (``gate.fit_fold_gates``) if given."""
    heads = [copy.deepcopy(r["head"]) if alpha == 1.0 else copy.deepcopy(r["head"]).interpolate(alpha) for r in runs]
    return [h.set_gate(g) for h, g in zip(heads, gates)] if gates else heads
