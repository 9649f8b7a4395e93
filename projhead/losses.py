"""Training objectives on embeddings, one registry.

Usage::

    from projhead.losses import get_loss
    loss_fn = get_loss("clip", init_temperature=0.05)
    loss = loss_fn(q, c, context_ids)   # q, c: (B, D) L2-normalised; context_ids: (B,) or None

A loss is a small ``nn.Module`` that takes embeddings only (never an encoder) and owns its
learnable parts (temperature, bias, a predictor, a target network), so the trainer puts
``loss_fn.parameters()`` that require grad in the optimiser beside the head.
``context_ids`` names each row's gold context: rows of a batch that share a context are not
each other's negatives (SQuAD puts ~1.6 questions on each answer sentence); ``query_ids``
does the same for rows of one query (silver pairs add rows for queries already in the data).

The trainer talks to every objective through ``Objective``: ``batch_loss(head, batch)``
runs the head on a ``Batch`` of frozen vectors and returns the loss, and ``after_step``
runs after each optimiser step (clamping a temperature, moving a BYOL target). Contrastive
losses take mined hard negatives as extra candidate columns. Adding an objective is one
class and one line in ``LOSSES``.
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import LOSS_NAMES, LossError


@dataclass
class Batch:
    """One training step's frozen vectors. Row i is the pair (query i, gold context i)."""

    q: torch.Tensor  # (B, D) frozen query vectors
    c: torch.Tensor  # (B, D) frozen vectors of each row's gold context
    context_ids: torch.Tensor | None = None  # (B,) context row of each pair in the cache
    query_ids: torch.Tensor | None = None  # (B,) query row of each pair (silver pairs repeat queries)
    negatives: torch.Tensor | None = None  # (B, n, D) frozen vectors of mined hard negatives
    negative_ids: torch.Tensor | None = None  # (B, n) their context rows; -1 marks padding
    teacher: torch.Tensor | None = None  # (B, 1 + n) teacher scores of [gold, negatives...]
    lexical: torch.Tensor | None = None  # (B, B + B*n) z-scored BM25 of every query with every candidate column


def _column_ids(context_ids, negative_ids, b: int, device) -> torch.Tensor:
    """Context id of every candidate column: the batch's gold contexts, then the negatives."""
    ids = context_ids if context_ids is not None else torch.arange(b, device=device)
    if negative_ids is None:
        return ids
    return torch.cat([ids, negative_ids.reshape(-1)])


def _blocked(row_ctx, col_ctx, row_q, col_q, offset: int) -> torch.Tensor | None:
    """(R, M) True where column j must not count as a negative of row ``offset + r``: another
    copy of the row's gold context, a row of the same query, or padding (-1). A row's own
    column (its positive) is never blocked. None when nothing is blocked."""
    r = len(row_ctx)
    m = (col_ctx[None, :] == row_ctx[:, None]) | (col_ctx[None, :] < 0)
    if row_q is not None:
        m[:, :len(col_q)] |= row_q[:, None] == col_q[None, :]
    idx = torch.arange(r, device=m.device)
    m[idx, offset + idx] = False
    return m if m.any() else None


class Objective(nn.Module):
    """What the trainer calls. Subclasses set ``forward`` on head outputs; ``batch_loss``
    runs the head (query tower on queries, context tower on gold contexts and negatives)."""

    def batch_loss(self, head, batch: Batch):
        """Loss, and the head's query and context outputs for the batch (for the anchor term)."""
        q, c = head(batch.q, batch.c)
        negs = None
        if batch.negatives is not None:
            b, n, d = batch.negatives.shape
            negs = head.encode_contexts(batch.negatives.reshape(b * n, d))  # (B*n, D')
        extra = {} if batch.lexical is None else {"lexical": batch.lexical}
        return self(q, c, batch.context_ids, negatives=negs, negative_ids=batch.negative_ids,
                    query_ids=batch.query_ids, **extra), q, c

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; ``progress`` runs from 0 to 1 over training."""

    @property
    def temperature(self) -> float:
        return float("nan")


class _ScaledLoss(Objective):
    """Owns the learnable ``logit_scale = log(1 / temperature)``, clamped to [0, log(max_scale)]
    after each step as open_clip does (max_scale 100)."""

    def __init__(self, init_temperature: float, learn_temperature: bool, max_scale: float):
        super().__init__()
        if not 1 / max_scale <= init_temperature <= 1:  # where clamp_ keeps it: a fixed one too, as recorded
            raise LossError(f"temperature must be in [{1 / max_scale:g}, 1] (the logit scale is kept in [1, max_scale "
                            f"{max_scale:g}]), not {init_temperature:g}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                        requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_scale)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    def clamp_(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.max_log_scale)

    def after_step(self, progress: float) -> None:
        self.clamp_()


class _ChunkedClip(torch.autograd.Function):
    """Symmetric InfoNCE over a (B, M) logit matrix (B queries; M = B gold contexts + mined
    negatives) that is never held whole: row blocks of ``chunk`` rows are computed in the
    forward pass for the row and column log-sum-exps, and again in the backward pass for the
    exact gradient, d loss / d logit_ij = (softmax_row_ij + [j < B] softmax_col_ij
    - 2 [i == j]) / 2B; the query->context half alone (``symmetric`` False):
    (softmax_row_ij - [i == j]) / B. Memory O(chunk * M) instead of O(B * M)."""

    @staticmethod
    def _block(q, cand, scale, ids, start, stop):
        logits = scale * q[start:stop] @ cand.T  # (R, M)
        row_ctx, col_ctx, qids = ids
        blocked = _blocked(row_ctx[start:stop], col_ctx, None if qids is None else qids[start:stop], qids, start)
        return logits if blocked is None else logits.masked_fill(blocked, float("-inf"))

    @staticmethod
    def forward(ctx, q, cand, logit_scale, ids, chunk, symmetric=True):
        scale = logit_scale.exp()
        n = len(q)
        lse_row = torch.empty(n, dtype=q.dtype, device=q.device)
        col_parts = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            logits = _ChunkedClip._block(q, cand, scale, ids, start, stop)
            lse_row[start:stop] = torch.logsumexp(logits, dim=1)
            if symmetric:  # the context->query half's column sums, only where that half is trained
                col_parts.append(torch.logsumexp(logits[:, :n], dim=0))
        lse_col = torch.logsumexp(torch.stack(col_parts), dim=0) if symmetric else lse_row.new_empty(0)  # (B,)
        diag = scale * (q * cand[:n]).sum(1)
        ctx.save_for_backward(q, cand, logit_scale, lse_row, lse_col)
        ctx.ids, ctx.chunk, ctx.symmetric = ids, chunk, symmetric
        if not symmetric:
            return (lse_row - diag).mean()
        return ((lse_row - diag).mean() + (lse_col - diag).mean()) / 2

    @staticmethod
    def backward(ctx, grad):
        q, cand, logit_scale, lse_row, lse_col = ctx.saved_tensors
        scale = logit_scale.exp()
        n = len(q)
        dq, dcand = torch.zeros_like(q), torch.zeros_like(cand)
        dscale = torch.zeros((), dtype=q.dtype, device=q.device)
        halves = 2 if ctx.symmetric else 1
        for start in range(0, n, ctx.chunk):
            stop = min(start + ctx.chunk, n)
            logits = _ChunkedClip._block(q, cand, scale, ctx.ids, start, stop)  # (R, M)
            g = torch.exp(logits - lse_row[start:stop, None])
            if ctx.symmetric:
                g[:, :n] += torch.exp(logits[:, :n] - lse_col[None, :])
            g[torch.arange(stop - start), torch.arange(start, stop)] -= halves
            g = g * (grad / (halves * n))  # d loss / d logits
            sims = q[start:stop] @ cand.T
            dq[start:stop] = scale * g @ cand
            dcand += scale * g.T @ q[start:stop]
            dscale += (g * sims).sum()
        # d loss / d logit_scale = d loss / d scale * scale
        return dq, dcand, dscale * scale if logit_scale.requires_grad else None, None, None, None


class ClipLoss(_ScaledLoss):
    """Symmetric InfoNCE as in CLIP: cross-entropy over query->context and context->query
    similarity, scaled by the learnable logit scale. Mined ``negatives`` join the contexts
    in the query->context direction. ``chunk_size``: batches larger than this are computed
    in row blocks with exact gradients (see ``_ChunkedClip``), so in-batch negatives can
    number tens of thousands on a CPU. ``bm25_weight`` (lambda): BM25-aware training (CLEAR's
    idea: the dense part learns what BM25 misses): each pair's z-scored BM25 score
    (``lexical``) is added to its cosine, ``scale * (cos + lambda * z_bm25)``: the fused
    ranking the head will serve in, with lambda fixed to match its weight (``lexical.bm25_share``).
    ``symmetric`` False: the query->context half alone, what retrieval ranks by (the trainer's
    choice for query-side heads, whose contexts cannot move: ``train.make_loss``)."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 chunk_size: int | None = None, bm25_weight: float | None = None, symmetric: bool = True):
        super().__init__(init_temperature, learn_temperature, max_scale)
        self.chunk_size = chunk_size
        if not isinstance(symmetric, bool):
            raise LossError(f"symmetric must be true or false, not {symmetric!r}")
        self.symmetric = symmetric
        if bm25_weight is not None and not bm25_weight >= 0:
            raise LossError(f"bm25_weight must be >= 0, not {bm25_weight}")
        self.bm25_weight = None if bm25_weight is None else float(bm25_weight)

    def _candidates(self, c, context_ids, negatives, negative_ids):
        cand = c if negatives is None else torch.cat([c, negatives])  # (M, D)
        return cand, _column_ids(context_ids, negative_ids, len(c), c.device)

    def logits(self, q, cand, context_ids, col_ids, query_ids) -> torch.Tensor:
        """(B, M) scaled similarities; blocked columns at -inf. Row i = query i."""
        logits = self.logit_scale.exp() * q @ cand.T
        row_ctx = context_ids if context_ids is not None else torch.arange(len(q), device=q.device)
        blocked = _blocked(row_ctx, col_ids, query_ids, query_ids, 0)
        return logits if blocked is None else logits.masked_fill(blocked, float("-inf"))

    def forward(self, q, c, context_ids=None, negatives=None, negative_ids=None, query_ids=None, lexical=None):
        cand, col_ids = self._candidates(c, context_ids, negatives, negative_ids)
        n = len(q)
        if (lexical is None) != (self.bm25_weight is None):
            raise LossError("BM25-aware training needs the BM25 block of every batch and a bm25_weight, both or neither")
        if self.chunk_size and n > self.chunk_size:
            if lexical is not None:
                raise LossError("BM25-aware training holds the whole (B, M) BM25 block: drop chunk_size")
            row_ctx = context_ids if context_ids is not None else torch.arange(n, device=q.device)
            return _ChunkedClip.apply(q, cand, self.logit_scale, (row_ctx, col_ids, query_ids), self.chunk_size,
                                      self.symmetric)
        logits = self.logits(q, cand, context_ids, col_ids, query_ids)
        if lexical is not None:
            logits = logits + self.logit_scale.exp() * self.bm25_weight * lexical
        labels = torch.arange(n, device=q.device)
        if not self.symmetric:
            return F.cross_entropy(logits, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :n].T, labels)) / 2


class SamToNeLoss(ClipLoss):
    """SamToNe (Moiseev et al., 2023): InfoNCE whose denominator also holds same-tower
    negatives. For query i the other queries j != i join the contexts (and mined negatives)
    as negatives; in the context->query direction the other contexts join the queries.
    ``same_tower_weight`` = 0 gives back the symmetric ``clip`` exactly."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 same_tower_weight: float = 1.0):
        super().__init__(init_temperature, learn_temperature, max_scale)
        self.same_tower_weight = same_tower_weight

    def _direction(self, a, cross, context_ids, query_ids) -> torch.Tensor:
        labels = torch.arange(len(a), device=a.device)
        if self.same_tower_weight == 0:
            return F.cross_entropy(cross, labels)
        same = self.logit_scale.exp() * a @ a.T  # (B, B) same-tower similarities
        row_ctx = context_ids if context_ids is not None else labels
        block = _blocked(row_ctx, row_ctx, query_ids, query_ids, 0)
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        block = eye if block is None else block | eye
        same = same.masked_fill(block, float("-inf")) + math.log(self.same_tower_weight)
        return F.cross_entropy(torch.cat([cross, same], dim=1), labels)  # (B, M + B)

    def forward(self, q, c, context_ids=None, negatives=None, negative_ids=None, query_ids=None):
        cand, col_ids = self._candidates(c, context_ids, negatives, negative_ids)
        n = len(q)
        logits = self.logits(q, cand, context_ids, col_ids, query_ids)  # (B, M)
        return (self._direction(q, logits, context_ids, query_ids)
                + self._direction(c, logits[:, :n].T, context_ids, query_ids)) / 2


class SigLipLoss(_ScaledLoss):
    """Pairwise sigmoid loss (SigLIP, Zhai et al., 2023) with learnable temperature and bias,
    initialised as in the paper: log-scale log(10), bias -10 (set them with ``init_scale``
    and ``init_bias``; there is no softmax temperature to set). Pairs sharing a gold context or a query count as
    positives; mined negatives add negative pairs."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0, learn_temperature: bool = True,
                 max_scale: float = 100.0):
        super().__init__(1.0 / init_scale, learn_temperature, max_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, q, c, context_ids=None, negatives=None, negative_ids=None, query_ids=None):
        n = len(q)
        cand = c if negatives is None else torch.cat([c, negatives])
        col_ids = _column_ids(context_ids, negative_ids, n, q.device)
        row_ctx = context_ids if context_ids is not None else torch.arange(n, device=q.device)
        logits = self.logit_scale.exp() * q @ cand.T + self.logit_bias  # (B, M)
        positive = col_ids[None, :] == row_ctx[:, None]
        if query_ids is not None:
            positive[:, :n] |= query_ids[:, None] == query_ids[None, :]
        signs = 2 * positive.to(q.dtype) - 1  # +1 positive, -1 negative
        terms = -F.logsigmoid(signs * logits)
        return terms.masked_fill(col_ids[None, :] < 0, 0.0).sum() / n


class DistillLoss(ClipLoss):
    """Learn from a teacher's scores over a candidate list: the gold context and the mined
    negatives of each query (``projhead mine --teacher``). ``mode="kl"``: KL divergence from
    the teacher's softmax (scores standardised per list, divided by
    ``teacher_temperature``) to the student's (scaled cosines); ``mode="margin_mse"``: squared
    error between student and teacher margins gold - negative (Hofstaetter et al., 2020).
    ``contrastive_weight`` adds the in-batch ``clip`` loss (0: teacher only)."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 mode: str = "kl", teacher_temperature: float = 1.0, contrastive_weight: float = 1.0):
        super().__init__(init_temperature, learn_temperature, max_scale)
        if mode not in ("kl", "margin_mse"):
            raise LossError(f"distill mode must be 'kl' or 'margin_mse', not {mode!r}")
        if not teacher_temperature > 0:
            raise LossError(f"teacher_temperature must be > 0, not {teacher_temperature}")
        self.mode, self.teacher_temperature, self.contrastive_weight = mode, teacher_temperature, contrastive_weight

    def distill(self, q, c, negatives, negative_ids, teacher) -> torch.Tensor:
        """q, c: (B, D'); negatives (B*n, D'); negative_ids (B, n); teacher (B, 1 + n)."""
        b, n = negative_ids.shape
        cand = torch.cat([c[:, None, :], negatives.reshape(b, n, -1)], dim=1)  # (B, 1 + n, D')
        student = self.logit_scale.exp() * torch.einsum("bd,bkd->bk", q, cand)  # (B, 1 + n)
        valid = torch.cat([torch.ones_like(negative_ids[:, :1], dtype=torch.bool), negative_ids >= 0], dim=1)
        valid &= torch.isfinite(teacher)
        t = teacher.masked_fill(~valid, 0.0)
        count = valid.sum(1, keepdim=True).clamp_min(1)
        mean = t.sum(1, keepdim=True) / count
        std = (((t - mean) ** 2).masked_fill(~valid, 0.0).sum(1, keepdim=True) / count).sqrt().clamp_min(1e-6)
        t = (t - mean) / std  # standardised per list: any teacher's scale works
        rows = valid[:, 1:].any(1)  # lists with at least one negative
        if self.mode == "kl":
            log_p = torch.log_softmax((t / self.teacher_temperature).masked_fill(~valid, float("-inf")), dim=1)
            log_s = torch.log_softmax(student.masked_fill(~valid, float("-inf")), dim=1)
            kl = (log_p.exp() * (log_p - log_s)).masked_fill(~valid, 0.0).sum(1)
            return kl[rows].mean() if rows.any() else student.sum() * 0
        s_margin = student[:, :1] - student[:, 1:]  # (B, n)
        t_margin = t[:, :1] - t[:, 1:]
        err = ((s_margin - t_margin) ** 2).masked_fill(~valid[:, 1:], 0.0)
        return err.sum() / valid[:, 1:].sum().clamp_min(1)

    def forward(self, q, c, context_ids=None, negatives=None, negative_ids=None, query_ids=None):
        raise LossError("the distill loss learns from teacher scores, which a call on embeddings alone does not "
                        "carry: call distill(q, c, negatives, negative_ids, teacher), or batch_loss(head, batch) "
                        "with a Batch that holds them")

    def batch_loss(self, head, batch: Batch):
        if batch.teacher is None or batch.negatives is None:
            raise LossError("the distill loss needs a mined set with teacher scores and hard negatives "
                            "(projhead mine --teacher ..., then train with --mined NAME --hard-negatives N)")
        q, c = head(batch.q, batch.c)
        b, n, d = batch.negatives.shape
        negs = head.encode_contexts(batch.negatives.reshape(b * n, d))
        loss = self.distill(q, c, negs, batch.negative_ids, batch.teacher)
        if self.contrastive_weight:
            loss = loss + self.contrastive_weight * ClipLoss.forward(
                self, q, c, batch.context_ids, negs, batch.negative_ids, batch.query_ids)
        return loss, q, c


class _Predictor(nn.Module):
    """BYOL's predictor, as a residual MLP whose last layer starts at zero: it starts as the
    identity, so the identity-initialised head is not pushed around by a random predictor."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return x + self.mlp(x)


class ByolLoss(Objective):
    """BYOL (Grill et al., 2020) on cached vectors: no negatives. The online network is the
    head plus a predictor; the target network is a copy of the head moved only by an
    exponential moving average of the online weights (tau from ``tau`` rising to 1 on a
    cosine schedule); loss 2 - 2 cos(predictor(online(view 1)), target(view 2)), target under
    stop-gradient, both view orders.

    ``views="augment"``: two augmentations of the same vector, per tower: the vector mixed
    with its nearest neighbour in the batch (weight up to ``mix``), dimensions dropped
    (``dim_dropout``), Gaussian noise (``noise``, relative to the vector's norm per
    dimension). ``views="pair"``: the query and its gold context are the two views (online
    query tower -> target context tower and back): BYOL on the same labelled pairs ``clip``
    uses, without negatives."""

    def __init__(self, tau: float = 0.996, views: str = "augment", hidden: int = 1024, noise: float = 0.5,
                 dim_dropout: float = 0.1, mix: float = 0.3):
        super().__init__()
        if views not in ("augment", "pair"):
            raise LossError(f"byol views must be 'augment' or 'pair', not {views!r}")
        if not 0 <= tau <= 1:
            raise LossError(f"byol tau must be in [0, 1], not {tau}")
        self.tau0, self.tau, self.views, self.hidden = tau, tau, views, hidden
        self.noise, self.dim_dropout, self.mix = noise, dim_dropout, mix
        self.target = None
        self.predictor = None

    def attach(self, head) -> None:
        """Make the target network (a frozen copy of the head) and the predictors; the
        trainer calls this before building the optimiser."""
        self.target = copy.deepcopy(head)
        self.__dict__["_online"] = head  # a reference, not a submodule: its weights are the head's
        for p in self.target.parameters():
            p.requires_grad_(False)
        d = head.config.output_dim
        self.predictor = nn.ModuleDict({"query": _Predictor(d, self.hidden), "context": _Predictor(d, self.hidden)})

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random view of each row of ``x`` (B, D)."""
        if self.mix and len(x) > 1:
            sims = x @ x.T
            sims.fill_diagonal_(float("-inf"))
            lam = self.mix * torch.rand(len(x), 1, dtype=x.dtype, device=x.device)
            x = (1 - lam) * x + lam * x[sims.argmax(1)]
        if self.dim_dropout:
            keep = (torch.rand_like(x) >= self.dim_dropout).to(x.dtype)
            x = x * keep / (1 - self.dim_dropout)
        if self.noise:
            x = x + self.noise * torch.randn_like(x) * x.norm(dim=1, keepdim=True) / math.sqrt(x.shape[1])
        return x

    @staticmethod
    def _pair_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()

    def _tower(self, net, role: str, x):
        return net.encode_queries(x) if role == "query" else net.encode_contexts(x)

    def batch_loss(self, head, batch: Batch):
        if self.target is None:
            raise LossError("byol: call attach(head) before training (the trainer does)")
        q, c = head(batch.q, batch.c)
        loss = q.new_zeros(())
        if self.views == "pair":
            with torch.no_grad():
                tq, tc = self.target(batch.q, batch.c)
            loss = loss + self._pair_loss(self.predictor["query"](q), tc)
            if any(p.requires_grad for p in head.context.parameters()):
                loss = loss + self._pair_loss(self.predictor["context"](c), tq)
            return loss, q, c
        for role, x, tower in (("query", batch.q, head.query), ("context", batch.c, head.context)):
            if role == "context" and (tower is head.query or not any(True for _ in tower.parameters())):
                continue  # shared tower: trained through the query side; identity: nothing to learn
            v1, v2 = self.augment(x), self.augment(x)
            with torch.no_grad():
                z1, z2 = self._tower(self.target, role, v1), self._tower(self.target, role, v2)
            pred = self.predictor[role]
            loss = loss + self._pair_loss(pred(self._tower(head, role, v1)), z2) \
                + self._pair_loss(pred(self._tower(head, role, v2)), z1)
        return loss, q, c

    def after_step(self, progress: float) -> None:
        """Move the target toward the online head: tau rises from tau0 to 1 (cosine)."""
        self.tau = 1 - (1 - self.tau0) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
        with torch.no_grad():
            for t, o in zip(self.target.parameters(), self._online.parameters()):
                t.mul_(self.tau).add_(o.detach(), alpha=1 - self.tau)


LOSSES: dict[str, type[Objective]] = {
    "clip": ClipLoss,
    "samtone": SamToNeLoss,
    "siglip": SigLipLoss,
    "distill": DistillLoss,
    "byol": ByolLoss,
}
assert tuple(LOSSES) == LOSS_NAMES, "config.LOSS_NAMES names every loss (the CLI offers them without torch)"


def get_loss(name: str, **settings) -> Objective:
    """The loss registered as ``name``, built with ``settings``."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise LossError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in settings if k not in accepted)
    if unknown:
        raise LossError(f"loss {name!r} does not take setting(s) {unknown}")
    return cls(**{k: _checked(name, k, v, str(accepted[k].annotation)) for k, v in settings.items()})


# what each numeric setting must be, beyond its type (a setting left out has its default)
SETTING_RULES = {"init_temperature": (lambda v: v > 0, "> 0"), "max_scale": (lambda v: v > 1, "> 1"),
                 "chunk_size": (lambda v: v >= 1, ">= 1"), "bm25_weight": (lambda v: v >= 0, ">= 0"),
                 "same_tower_weight": (lambda v: v >= 0, ">= 0"), "init_scale": (lambda v: v > 0, "> 0"),
                 "teacher_temperature": (lambda v: v > 0, "> 0"), "contrastive_weight": (lambda v: v >= 0, ">= 0"),
                 "tau": (lambda v: 0 <= v <= 1, "in [0, 1]"), "hidden": (lambda v: v >= 1, ">= 1"),
                 "noise": (lambda v: v >= 0, ">= 0"), "dim_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
                 "mix": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def _checked(loss: str, key: str, v, annotation: str):
    """Setting ``key`` of ``loss`` checked against its annotation ("float", "int | None",
    "bool", "str") and ``SETTING_RULES``; numbers as plain Python numbers."""
    if v is None and "None" in annotation:
        return v
    kind = annotation.split(" |")[0]
    ok = {"bool": isinstance(v, bool), "str": isinstance(v, str),
          "int": isinstance(v, numbers.Integral) and not isinstance(v, bool),
          "float": isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}.get(kind, True)
    rule = SETTING_RULES.get(key)
    if not ok or (rule and kind in ("int", "float") and not rule[0](v)):
        need = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a name"}.get(kind, kind)
        raise LossError(f"loss {loss!r}: setting {key} must be {need}" + (f" {rule[1]}" if rule else "")
                        + (" (or none)" if "None" in annotation else "") + f", not {v!r}")
    return int(v) if kind == "int" else float(v) if kind == "float" else v
