"""A per-query gate: a query-side head applied in full to queries like its training queries,
fading to the frozen encoder for queries unlike them.

Usage::

    from projhead.gate import fit_gate
    gate, report = fit_gate(train_q, held_q, other_q)   # frozen query vectors, (N, D) each
    head.set_gate(gate)                                 # saved with the head, applied by load_head and both exports
    head.gate_values(query_vectors)                     # (N,) in [0, 1]

The signal is how far a frozen query vector lies from the training queries' distribution:
the Mahalanobis distance to their mean under their covariance (shrunk toward a multiple of the
identity, ``SHRINK``, so 384 dimensions are well estimated from a few thousand queries), as a
root mean square per dimension (about 1 for a typical training query). The gate is 1 up to
``lo`` and 0 from ``hi`` on, linear between:

- ``lo``: the ``IN_QUANTILE`` (95th percentile) distance of held-out training queries (never
  used for the mean and covariance), so 19 in 20 queries of the training field get the head
  in full;
- ``hi``: the ``OUT_QUANTILE`` (10th percentile) distance of queries of other fields (canary
  caches: text the head never saw), so nine in ten of those get the frozen encoder.

Where the two overlap (``hi <= lo``), or no other field is given, the ramp is ``MIN_RAMP`` wide
above ``lo``. On SQuAD train (bench_gate.py) every choice of other fields among BoolQ, FiQA and
Quora overlaps, so the bounds are the same with canaries or without.
The head's query output becomes ``x + g(x) * (tower(x) - x)`` before normalising: at g = 1 the
trained head, at g = 0 the frozen vector; contexts never change.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SHRINK = 0.1  # covariance + SHRINK x (mean eigenvalue) x I
# bench_ood.py --fields --gate-quantile, SQuAD heads on SQuAD and four other fields (3-seed means): at
# 0.9 the gate cost 0.18 out-of-500 top-1 in domain, at 0.95 0.09 with no field losing more than 0.07
# nDCG@10 dense or 0.13 fused; at 0.98 it passed half of FiQA's and Quora's queries (no longer telling fields apart)
IN_QUANTILE = 0.95
OUT_QUANTILE = 0.1
MIN_RAMP = 0.05  # the least width of the ramp, relative to lo


class QueryGate(nn.Module):
    """g(x) = clamp((hi - d(x)) / (hi - lo), 0, 1), d the per-dimension RMS Mahalanobis distance
    of the frozen query vector to the training queries (see module doc). Buffers only: saved in
    the head's safetensors as ``gate.mean`` (D,), ``gate.whiten`` (D, D), ``gate.bounds`` (2,)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("whiten", torch.eye(dim))
        self.register_buffer("bounds", torch.tensor([1.0, 2.0]))  # lo, hi

    def distance(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N,)
        z = (x - self.mean) @ self.whiten  # (N, D), whitened
        return z.pow(2).mean(dim=1).sqrt()

    def ramp(self, d: torch.Tensor) -> torch.Tensor:  # (N,) distances -> (N,) gates
        lo, hi = self.bounds[0], self.bounds[1]
        return ((hi - d) / (hi - lo)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N,)
        return self.ramp(self.distance(x))


def _distances(gate: QueryGate, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return gate.distance(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def fit_gate(train_q: np.ndarray, held_q: np.ndarray, other_q: np.ndarray | list[np.ndarray],
             in_quantile: float = IN_QUANTILE) -> tuple[QueryGate, dict]:
    """A gate from frozen query vectors: ``train_q`` (the training queries: mean and covariance),
    ``held_q`` (training-field queries not in ``train_q``: where the full head ends, at their
    ``in_quantile`` distance) and ``other_q`` (queries of other fields, one array or a list, may be
    empty: where the frozen encoder starts; without any, ``MIN_RAMP`` above ``lo``).
    Returns the gate and a report (bounds, distance quantiles, mean gate on each set)."""
    if len(held_q) == 0:
        raise ValueError("the gate needs held-out training queries to calibrate on")
    return _fit(train_q, held_q, _others(other_q), in_quantile)[:2]


def _fit(train_q: np.ndarray, held_q: np.ndarray, others: list[np.ndarray], in_quantile: float
         ) -> tuple[QueryGate, dict, np.ndarray]:
    """``fit_gate`` once its arguments are checked: the gate, its report, and the held-out
    queries' distances it was bounded with."""
    gate = _moments(train_q, in_quantile)
    d_held = _distances(gate, held_q)
    return (*_bounded(gate, d_held, others, in_quantile, len(train_q)), d_held)


def fit_fold_gates(queries: np.ndarray, fold_rows: list[np.ndarray], other_q: np.ndarray | list[np.ndarray],
                   in_quantile: float = IN_QUANTILE) -> tuple[QueryGate, dict, list[QueryGate]]:
    """The gates of k-fold model selection, where every query is held out once: each fold's
    (``fit_gate`` on the other folds' queries, its edge from its own fold's), for the fold heads
    that are scored out of fold; and the gate saved with the head trained on every query: its
    mean and covariance from all of ``queries``, its edge the ``in_quantile`` of every query's
    distance under its fold's gate (each measured as held out; the report's ``mean_gate_held``
    is the saved bounds applied to those distances). Returns (saved gate, its report, the fold
    gates in the order of ``fold_rows``)."""
    queries = np.asarray(queries, np.float32)
    others = _others(other_q)
    everything = np.arange(len(queries))
    folds, held = [], []
    for rows in fold_rows:  # its held-out distances also set the saved gate's edge
        g, _, d_held = _fit(queries[np.setdiff1d(everything, rows)], queries[rows], others, in_quantile)
        folds.append(g)
        held.append(d_held)
    gate, report = _bounded(_moments(queries, in_quantile), np.concatenate(held), others, in_quantile, len(queries))
    report.update(folds=len(fold_rows), held="every training query, out of fold (each fold's gate)")
    return gate, report, folds


def _others(other_q) -> list[np.ndarray]:
    return [o for o in (np.asarray(o, np.float32) for o in (other_q if isinstance(other_q, list) else [other_q]))
            if len(o)]


def _moments(train_q: np.ndarray, in_quantile: float) -> QueryGate:
    """A gate holding the training queries' mean and whitening (bounds not set yet)."""
    train_q = np.asarray(train_q, np.float64)
    if train_q.ndim != 2 or len(train_q) < 2:
        raise ValueError(f"the gate needs at least 2 training query vectors, got shape {train_q.shape}")
    if not 0 < in_quantile <= 1:
        raise ValueError(f"in_quantile is a share of the held-out training queries in (0, 1], not {in_quantile}")
    dim = train_q.shape[1]
    mean = train_q.mean(0)
    cov = np.cov(train_q, rowvar=False).reshape(dim, dim)
    cov += SHRINK * np.trace(cov) / dim * np.eye(dim)
    # whiten = L^-T for cov = L L^T, so ||(x - mean) whiten||^2 = (x - mean)^T cov^-1 (x - mean)
    chol = np.linalg.cholesky(cov)
    whiten = np.linalg.inv(chol).T
    gate = QueryGate(dim)
    gate.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    gate.whiten.copy_(torch.from_numpy(whiten.astype(np.float32)))
    return gate


def _bounded(gate: QueryGate, d_in: np.ndarray, others: list[np.ndarray], in_quantile: float,
             n_train: int) -> tuple[QueryGate, dict]:
    """``gate`` with its bounds: ``lo`` at the ``in_quantile`` of the held-out training queries'
    distances ``d_in``, ``hi`` from the other fields' queries; and the report."""
    per_other = [_distances(gate, o) for o in others]
    d_out = np.concatenate(per_other) if others else np.zeros(0)
    lo = float(np.quantile(d_in, in_quantile))
    hi = max(float(np.quantile(d_out, OUT_QUANTILE)) if others else 0.0, lo * (1 + MIN_RAMP))
    gate.bounds.copy_(torch.tensor([lo, hi]))
    gate.eval()

    def mean_gate(d: np.ndarray) -> float:
        with torch.no_grad():
            return float(gate.ramp(torch.from_numpy(np.asarray(d, np.float32))).mean())
    report = {"signal": "Mahalanobis distance to the training queries (RMS per dimension)",
              "lo": lo, "hi": hi, "n_train": int(n_train), "n_held": len(d_in),
              "n_other": [len(o) for o in others],
              "in_quantile": in_quantile, "held_distance": {"median": float(np.median(d_in)), "lo": lo},
              **({"other_distance": {"median": float(np.median(d_out)),
                                     "q10": float(np.quantile(d_out, OUT_QUANTILE))}} if others else {}),
              "mean_gate_held": mean_gate(d_in), "mean_gate_other": [mean_gate(d) for d in per_other]}
    return gate, report


def attach_gate(head, cache, cfg, canaries: list, train_rows: np.ndarray | None, held_rows: np.ndarray | None,
                say=lambda t: None, fold_rows: list[np.ndarray] | None = None) -> tuple[dict, list | None]:
    """A per-query gate for a kept query-side head (``projhead.heads.Head``) when ``cfg.gate``,
    set on ``head``: with a dev split the training queries' distribution from ``train_rows``
    of ``cache``, its edge from the held-out ``held_rows`` (``fit_gate``); with k-fold
    selection's ``fold_rows`` every query's, its edge out of fold (``fit_fold_gates``); the
    other fields from the canaries' queries (if any). Returns (``{"gate": report}`` or ``{}``,
    the fold gates or None)."""
    if not cfg.gate or head.config.towers != "query" or head.config.passthrough or head.config.kind == "dialog":
        return {}, None
    others = [np.asarray(c.cache.queries) for c in canaries]
    folds = None
    if fold_rows is not None:
        gate, report, folds = fit_fold_gates(np.asarray(cache.queries), fold_rows, others)
    else:
        gate, report = fit_gate(cache.queries[np.sort(train_rows)], cache.queries[np.sort(held_rows)], others)
    head.set_gate(gate)
    report["other_names"] = [c.name for c in canaries]
    say(f"  per-query gate: full up to distance {report['lo']:.3f}, frozen from {report['hi']:.3f}; mean gate "
        f"{report['mean_gate_held']:.3f} on held-out training queries" + (" (out of fold)" if folds else "")
        + ("" if canaries else " (no --canary: the frozen encoder from 5% beyond the training queries' edge)")
        + "".join(", " + f"{n} {v:.3f}" for n, v in zip(report["other_names"], report["mean_gate_other"])))
    return {"gate": report}, folds
