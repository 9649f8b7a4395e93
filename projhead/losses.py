"""Training objectives on embeddings, one registry.

Usage::

    from projhead.losses import get_loss
    loss_fn = get_loss("clip", init_temperature=0.05)
    loss = loss_fn(q, c, context_ids)   # q, c: (B, D) L2-normalised; context_ids: (B,) or None

A loss is a small ``nn.Module`` that takes embeddings only (never an encoder) and owns its
learnable scalars (temperature, bias), so the trainer puts ``loss_fn.parameters()`` in the
optimiser beside the head. ``context_ids`` names each row's gold context: rows of a batch
that share a context are not each other's negatives (SQuAD puts ~1.6 questions on each
answer sentence). Adding a loss is one class and one line in ``LOSSES``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class LossError(ValueError):
    """Unknown loss name or bad loss settings."""


def _same_context_mask(context_ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B, B) True where two different rows share a gold context: false negatives."""
    if context_ids is None:
        return None
    same = context_ids[:, None] == context_ids[None, :]
    same.fill_diagonal_(False)
    return same if same.any() else None


class _ScaledLoss(nn.Module):
    """Owns the learnable ``logit_scale = log(1 / temperature)``, clamped to [0, log(max_scale)]
    after each step as open_clip does (max_scale 100)."""

    def __init__(self, init_temperature: float, learn_temperature: bool, max_scale: float):
        super().__init__()
        if not init_temperature > 0:
            raise LossError(f"temperature must be > 0, not {init_temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                        requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_scale)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    def clamp_(self) -> None:
        """Called by the trainer after each step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.max_log_scale)


class _ChunkedClip(torch.autograd.Function):
    """Symmetric InfoNCE over a (B, B) logit matrix that is never held whole: row blocks of
    ``chunk`` rows are computed in the forward pass for the row and column log-sum-exps, and
    again in the backward pass for the exact gradient, d loss / d logit_ij =
    (softmax_row_ij + softmax_col_ij - 2 [i == j]) / 2B. Memory O(chunk * B) instead of O(B^2)."""

    @staticmethod
    def _block(q, c, scale, ids, start, stop):
        logits = scale * q[start:stop] @ c.T  # (R, B)
        if ids is not None:
            same = ids[start:stop, None] == ids[None, :]
            same[torch.arange(stop - start), torch.arange(start, stop)] = False
            logits = logits.masked_fill(same, float("-inf"))
        return logits

    @staticmethod
    def forward(ctx, q, c, logit_scale, ids, chunk):
        scale = logit_scale.exp()
        n = len(q)
        lse_row = torch.empty(n, dtype=q.dtype, device=q.device)
        col_parts = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = _ChunkedClip._block(q, c, scale, ids, start, stop)
            lse_row[start:stop] = torch.logsumexp(logits, dim=1)
            col_parts.append(torch.logsumexp(logits, dim=0))
        lse_col = torch.logsumexp(torch.stack(col_parts), dim=0)  # (B,)
        diag = scale * (q * c).sum(1)
        ctx.save_for_backward(q, c, logit_scale, lse_row, lse_col)
        ctx.ids, ctx.chunk = ids, chunk
        return ((lse_row - diag).mean() + (lse_col - diag).mean()) / 2

    @staticmethod
    def backward(ctx, grad):
        q, c, logit_scale, lse_row, lse_col = ctx.saved_tensors
        scale = logit_scale.exp()
        n = len(q)
        dq, dc = torch.zeros_like(q), torch.zeros_like(c)
        dscale = torch.zeros((), dtype=q.dtype, device=q.device)
        for start in range(0, n, ctx.chunk):
            stop = min(start + ctx.chunk, n)
            logits = _ChunkedClip._block(q, c, scale, ctx.ids, start, stop)  # (R, B)
            g = torch.exp(logits - lse_row[start:stop, None]) + torch.exp(logits - lse_col[None, :])
            g[torch.arange(stop - start), torch.arange(start, stop)] -= 2
            g = g * (grad / (2 * n))  # d loss / d logits
            sims = q[start:stop] @ c.T
            dq[start:stop] = scale * g @ c
            dc += scale * g.T @ q[start:stop]
            dscale += (g * sims).sum()
        # d loss / d logit_scale = d loss / d scale * scale
        return dq, dc, dscale * scale if logit_scale.requires_grad else None, None, None


class ClipLoss(_ScaledLoss):
    """Symmetric InfoNCE as in CLIP: cross-entropy over query->context and context->query
    similarity, scaled by the learnable logit scale. ``chunk_size``: batches larger than this
    are computed in row blocks with exact gradients (see ``_ChunkedClip``), so in-batch
    negatives can number tens of thousands on a CPU."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 chunk_size: int | None = None):
        super().__init__(init_temperature, learn_temperature, max_scale)
        self.chunk_size = chunk_size

    def logits(self, q: torch.Tensor, c: torch.Tensor, context_ids) -> torch.Tensor:
        logits = self.logit_scale.exp() * q @ c.T  # (B, B): row i = query i against every context
        mask = _same_context_mask(context_ids)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        return logits

    def forward(self, q: torch.Tensor, c: torch.Tensor, context_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.chunk_size and len(q) > self.chunk_size:
            return _ChunkedClip.apply(q, c, self.logit_scale, context_ids, self.chunk_size)
        logits = self.logits(q, c, context_ids)
        labels = torch.arange(len(q), device=q.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class SamToNeLoss(ClipLoss):
    """SamToNe (Moiseev et al., 2023): InfoNCE whose denominator also holds same-tower
    negatives. For query i the other queries j != i join the contexts as negatives; in the
    context->query direction the other contexts join the queries. ``same_tower_weight`` = 0
    gives back ``clip`` exactly."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 same_tower_weight: float = 1.0):
        super().__init__(init_temperature, learn_temperature, max_scale)
        self.same_tower_weight = same_tower_weight

    def _direction(self, a: torch.Tensor, b: torch.Tensor, context_ids) -> torch.Tensor:
        scale = self.logit_scale.exp()
        cross = self.logits(a, b, context_ids)  # (B, B)
        if self.same_tower_weight == 0:
            return F.cross_entropy(cross, torch.arange(len(a), device=a.device))
        same = scale * a @ a.T  # (B, B) same-tower similarities
        block = torch.eye(len(a), dtype=torch.bool, device=a.device)
        dup = _same_context_mask(context_ids)
        if dup is not None:
            block = block | dup
        same = same.masked_fill(block, float("-inf")) + math.log(self.same_tower_weight)
        logits = torch.cat([cross, same], dim=1)  # (B, 2B)
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))

    def forward(self, q, c, context_ids=None):
        return (self._direction(q, c, context_ids) + self._direction(c, q, context_ids)) / 2


class SigLipLoss(_ScaledLoss):
    """Pairwise sigmoid loss (SigLIP, Zhai et al., 2023) with learnable temperature and bias,
    initialised as in the paper: log-scale log(10), bias -10 (``init_temperature`` is not
    used: SigLIP's own start is kept). Pairs sharing a gold context count as positives."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0, learn_temperature: bool = True,
                 max_scale: float = 100.0, init_temperature: float | None = None):
        super().__init__(1.0 / init_scale, learn_temperature, max_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, q, c, context_ids=None):
        logits = self.logit_scale.exp() * q @ c.T + self.logit_bias  # (B, B)
        if context_ids is None:
            labels = torch.eye(len(q), device=q.device)
        else:
            labels = (context_ids[:, None] == context_ids[None, :]).to(q.dtype)
        signs = 2 * labels - 1  # +1 positive, -1 negative
        return -F.logsigmoid(signs * logits).sum() / len(q)


LOSSES: dict[str, type[nn.Module]] = {
    "clip": ClipLoss,
    "samtone": SamToNeLoss,
    "siglip": SigLipLoss,
}


def get_loss(name: str, **settings) -> nn.Module:
    """The loss registered as ``name``, built with ``settings``."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise LossError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in settings if k not in accepted)
    if unknown:
        raise LossError(f"loss {name!r} does not take setting(s) {unknown}")
    return cls(**settings)
