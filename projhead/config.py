"""Settings: what a head is and how it is trained, and the names the command line offers.

Usage::

    from projhead.config import HeadConfig, TrainConfig
    HeadConfig(kind="linear", towers="query")
    TrainConfig(loss="clip", lr=1e-3).sized(n_pairs=1000)   # the data-sized settings filled in

Dataclasses with a comment per field; a run writes them as JSON next to its outputs. This
module needs no torch: ``projhead --help`` and ``projhead info`` start without loading it.
``heads.py``, ``train.py``, ``losses.py`` and ``mine.py`` use these names and raise these errors.
"""
from __future__ import annotations

import fractions
import math
import numbers
import os
from dataclasses import dataclass, field, fields, replace

LOSS_NAMES = ("clip", "samtone", "siglip", "distill", "byol")  # the keys of losses.LOSSES, in its order
MINE_METHODS = ("semantic", "bm25", "hybrid")  # how projhead mine finds candidates


class LossError(ValueError):
    """Unknown loss name or bad loss settings."""


class MineError(ValueError):
    """Mining cannot run with these settings; the message says why."""


class EncoderError(ValueError):
    """Unknown or unusable encoder name, or vectors that cannot be used; the message says why."""


HEAD_KINDS = ("linear", "mlp", "residual", "dialog")
TOWERS = ("separate", "shared", "query")
ACTIVATIONS = ("gelu", "relu", "silu", "tanh")


def finite_real(v) -> float | None:
    """``v`` as a float when it is a finite number: an int, a float or numpy's (not a bool, not a
    Fraction), else None."""
    if isinstance(v, (bool, fractions.Fraction)) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        return None
    return float(v)


def real_in(v, top: float) -> float | None:
    """``finite_real(v)`` when it is in [0, ``top``], else None. The one rule for a fusion weight
    and BM25's k1 and b, wherever they are given (training settings, a saved fusion, search and
    ``fuse``)."""
    v = finite_real(v)
    return v if v is not None and 0 <= v <= top else None


class HeadError(ValueError):
    """A head that cannot be built, loaded or applied; the message says why."""


@dataclass
class HeadConfig:
    kind: str = "residual"  # linear | mlp | residual (x + MLP(x), last layer zero-initialised) | dialog (turns.py)
    in_dim: int = 384  # dimension of the frozen encoder's vectors
    out_dim: int | None = None  # output dimension; None keeps in_dim (residual needs in_dim)
    hidden: int = 1024  # hidden width of mlp / residual
    layers: int = 2  # linear layers in mlp / residual (>= 1 for mlp, >= 2 for residual)
    activation: str = "gelu"  # gelu | relu | silu | tanh
    dropout: float = 0.0  # dropout after each hidden activation (training only)
    towers: str = "separate"  # separate query/context heads | shared | query (contexts stay frozen)
    init: str = "identity"  # identity: step 0 equals the frozen encoder (linear, residual) | random
    normalize: bool = True  # L2-normalise outputs (cosine similarity downstream)
    passthrough: bool = False  # identity head: training kept the frozen encoder (no epoch beat it)
    gate: bool = False  # query-side heads: a per-query gate fades the head to the frozen encoder off its field (gate.py)
    encoder: str = ""  # encoder the input vectors must come from ("" = unchecked)
    encoder_weights_sha256: str = ""  # hash of that encoder's weights ("" = unchecked)
    slots: int = 0  # dialog: turn vectors per query (current question first); 0: as the cache's turns section has
    sentence_slots: int = 2  # dialog: blocks beside a context sentence: 2 (previous, next sentence) or 3 (+ its section)

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise HeadError(f"unknown head kind {self.kind!r}; choose from {', '.join(HEAD_KINDS)}")
        if self.towers not in TOWERS:
            raise HeadError(f"unknown towers {self.towers!r}; choose from {', '.join(TOWERS)}")
        if self.activation not in ACTIVATIONS:
            raise HeadError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.init not in ("identity", "random"):
            raise HeadError(f"init must be 'identity' or 'random', not {self.init!r}")
        for name in ("in_dim", "output_dim", "hidden", "layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HeadError(f"head setting {name} must be a positive integer, not {v!r}")
        if self.kind == "residual" and self.output_dim != self.in_dim:
            raise HeadError(f"a residual head keeps the dimension: out_dim {self.out_dim} != in_dim {self.in_dim}")
        if self.kind == "residual" and self.layers < 2:
            raise HeadError("a residual head needs layers >= 2")
        if self.towers == "query" and self.output_dim != self.in_dim:
            raise HeadError("towers='query' keeps contexts frozen, so out_dim must equal in_dim")
        if self.gate and self.towers != "query":
            raise HeadError("a per-query gate needs towers='query': a gated query could not be compared with "
                            "contexts the head changed")
        for name in ("normalize", "passthrough", "gate"):  # a string "false" would read as true
            if not isinstance(getattr(self, name), bool):
                raise HeadError(f"head setting {name} must be true or false, not {getattr(self, name)!r}")
        for name in ("encoder", "encoder_weights_sha256"):
            if not isinstance(getattr(self, name), str):
                raise HeadError(f"head setting {name} must be a string, not {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise HeadError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if self.slots and self.kind != "dialog" or not isinstance(self.slots, int) or self.slots < 0:
            raise HeadError(f"slots are the turn vectors of a dialog head (0: taken from the cache), not {self.slots!r} "
                            f"for kind {self.kind!r}")
        if self.sentence_slots not in (2, 3):
            raise HeadError(f"sentence_slots are the blocks beside a dialog head's sentence: 2 (previous and next "
                            f"sentence) or 3 (and its section), not {self.sentence_slots!r}")
        if self.kind == "dialog" and (self.towers == "shared" or self.output_dim != self.in_dim):
            raise HeadError("a dialog head keeps the dimension and has its own context tower (towers 'separate': "
                            "contexts see their neighbour sentences) or none ('query')")

    @property
    def output_dim(self) -> int:
        return self.out_dim or self.in_dim

    @property
    def input_dim(self) -> int:
        """Width of the rows the towers take: in_dim, or for a dialog head the turn slots and the
        sentence's blocks side by side (``turns.dialog_view``)."""
        return self.in_dim * (self.slots + self.sentence_slots) if self.kind == "dialog" else self.in_dim

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise HeadError(f"unknown head settings {sorted(unknown)}")
        return cls(**d)


class TrainError(ValueError):
    """Training cannot start or resume; the message says why."""


SELECT_METRICS = ("top1", "top5", "top10", "mrr10", "ndcg10")
# The default interpolation toward the frozen encoder (bench_ood.py, SQuAD train heads, seeds
# 0-2): at 0.9 in-domain nDCG@10 is unchanged (+2.3), top-1 +3.4 instead of +3.5, and SQuAD
# paragraphs lose 0.2 nDCG@10 instead of 0.6; Quora -0.1 at both.
ALPHA = 0.9
DECISIONS = ("bootstrap", "better")
AFTER_FOLDS = ("refit", "average")


@dataclass
class TrainConfig:
    loss: str = "clip"  # objective, a name in projhead.losses.LOSSES
    epochs: int | None = None  # None: sized to the data, at least 8 and enough for min_steps steps (at most 200)
    min_steps: int = 300  # with epochs=None: the fewest optimizer steps a run is given (small data: more epochs)
    stop_epoch: int | None = None  # end the run after this epoch; the learning-rate schedule still spans all epochs
    batch_size: int | None = None  # pairs per step; None: a sixteenth of the training pairs, within [32, 2048]
    batching: str = "group"  # group: batches of whole shuffled groups (same-document negatives) | random
    lr: float = 5e-4  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (weight matrices only: never scalars, biases, norms)
    warmup: float = 0.05  # fraction of all steps spent warming the learning rate up from 0
    init_temperature: float | None = None  # softmax temperature at step 0; None: 0.05 (losses without one refuse a value)
    learn_temperature: bool = True  # learn the temperature (clamped at 1/100 as open_clip)
    anchor_weight: float = 0.0  # weight of mean ||head(x) - x||^2: pulls outputs toward the frozen vectors
    dev_fraction: float | None = None  # share of groups held out for selection; None: 5%, or 20% under 5,000 queries
    select_metric: str = "mrr10"  # metric of the dev queries ranked against every context of the cache
    decision: str = "bootstrap"  # bootstrap: keep a head only if the 95% interval of its dev gain is above 0 | better
    patience: int | None = None  # epochs that cannot be kept (train.within_noise) before stopping; None: a quarter of the epochs, >= 2
    seed: int = 0  # seeds the split, initialisation and batch order
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "cpu"  # cpu is plenty; cuda works for large caches
    loss_settings: dict = field(default_factory=dict)  # extra settings for the loss (e.g. same_tower_weight)
    mined: str = ""  # name of a mined set in the cache (projhead mine): hard negatives, teacher scores, silver pairs
    hard_negatives: int = 0  # mined negatives per pair in each batch (drawn afresh each step from the set's k)
    silver: bool = False  # also train on the mined set's silver pairs
    stream: bool = False  # read the cache in chunks instead of whole: bounded memory for caches larger than RAM
    stream_chunk: int = 16384  # stream: query rows read at a time
    stream_buffer: int = 8  # stream: chunks shuffled together (rows mix within this many chunks)
    canaries: list = field(default_factory=list)  # caches of other domains scored every epoch beside the frozen encoder
    gate: bool = True  # model selection: a per-query gate for a kept query-side head (gate.py), calibrated on the canaries if any
    canary_tolerance: float = 0.005  # most nDCG@10 a canary may lose; the head is shrunk toward the frozen encoder until none does
    corpus_sample: int | None = None  # corpus rows held-out queries are ranked against beside the contexts: a seeded sample of this many; None: all, at most corpus.DEFAULT_SAMPLE; 0: none
    bm25_aware: bool = False  # each in-batch pair's BM25 score enters its logit with a learned weight (lexical.py): the head learns what BM25 misses
    hybrid: bool = False  # model selection on the fused metric: held-out queries ranked by dense + BM25, BM25-aware candidates beside the plain ones
    dense_only: bool = False  # served by dense search alone: a head kept on its own is not also judged fused with BM25
    fusion_weight: float | None = None  # hybrid: the dense share of held-out rankings and of the saved fusion; None: chosen (hybrid.best_weight)
    bm25_k1: float | None = None  # BM25 of BM25-aware training, hybrid rankings and the saved fusion; None: chosen (fusion.BM25_GRID; before training with hybrid), or bm25s's 1.5 for a BM25-aware run without selection
    bm25_b: float | None = None  # as bm25_k1, for b (bm25s's 0.75)
    after_folds: str = "refit"  # k-fold selection saves: refit (the winner trained on every pair) | average (the fold heads' weights averaged, soup.py)
    recipe: bool = True  # k-fold selection also judges the fixed adapter recipe on every held-out query's margin, in place of the identity or beside a kept candidate (recipe.py)
    alpha: float | str | None = None  # saved head = frozen + alpha * (trained - frozen), in weight space (WiSE-FT); None: ALPHA where the head allows it (in 5-fold selection chosen as "auto": alpha.chooses_alpha); "auto": chosen by model selection on its choosing queries (alpha.AUTO_ALPHAS)

    def __post_init__(self):
        def bad(name, what):
            raise TrainError(f"training setting {name} must be {what}, not {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "patience", "stop_epoch"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "a positive integer (or None: sized to the data)")
        for name in ("min_steps", "stream_chunk", "stream_buffer"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "a positive integer")
        for name in ("seed", "threads"):  # numpy's seeds and torch's threads are integers >= 0
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                bad(name, "an integer >= 0" + (" (0: torch's default)" if name == "threads" else ""))
            setattr(self, name, int(v))
        for name in ("lr", "weight_decay", "warmup", "init_temperature", "anchor_weight", "dev_fraction",
                     "canary_tolerance"):  # numbers, not strings compared with numbers
            if getattr(self, name) is not None:
                v = finite_real(getattr(self, name))
                if v is None:
                    bad(name, "a finite number")
                setattr(self, name, v)  # a plain float, numpy's too: config.json stores it
        if not self.lr > 0:
            bad("lr", "> 0")
        if not self.weight_decay >= 0:
            bad("weight_decay", ">= 0")
        if not 0 <= self.warmup < 1:
            bad("warmup", "in [0, 1)")
        if self.init_temperature is not None and not self.init_temperature > 0:
            bad("init_temperature", "> 0")
        if not self.anchor_weight >= 0:
            bad("anchor_weight", ">= 0")
        if self.dev_fraction is not None and not 0 <= self.dev_fraction < 1:
            bad("dev_fraction", "in [0, 1)")
        if self.select_metric not in SELECT_METRICS:
            bad("select_metric", f"one of {', '.join(SELECT_METRICS)}")
        if self.decision not in DECISIONS:
            bad("decision", f"one of {', '.join(DECISIONS)}")
        if self.batching not in ("group", "random"):
            bad("batching", "'group' or 'random'")
        if not isinstance(self.hard_negatives, int) or self.hard_negatives < 0:
            bad("hard_negatives", "an integer >= 0")
        if not 0 <= self.canary_tolerance < 1:
            bad("canary_tolerance", "in [0, 1)")
        if self.corpus_sample is not None and (not isinstance(self.corpus_sample, int) or self.corpus_sample < 0):
            bad("corpus_sample", "an integer >= 0 (or None: all, at most 100,000)")
        if isinstance(self.alpha, numbers.Real) and not isinstance(self.alpha, bool) and 0 <= self.alpha <= 1:
            self.alpha = float(self.alpha)  # a plain float: numpy's too, as the log and the model card store it
        elif self.alpha not in (None, "auto"):
            bad("alpha", "a number in [0, 1], or 'auto' (model selection chooses it)")
        if self.after_folds not in AFTER_FOLDS:
            bad("after_folds", f"one of {', '.join(AFTER_FOLDS)}")
        for name, top in (("fusion_weight", 1.0), ("bm25_k1", math.inf), ("bm25_b", 1.0)):  # the saved fusion's rule
            v = None if getattr(self, name) is None else real_in(getattr(self, name), top)
            if v is None and getattr(self, name) is not None:
                bad(name, "a finite number >= 0" if top == math.inf else "a number in [0, 1]")
            setattr(self, name, v)  # a plain float, numpy's too: config.json stores it
        if self.dense_only and self.hybrid:
            raise TrainError("hybrid selection judges heads fused with BM25: drop --dense-only or --hybrid")
        if (self.bm25_aware or self.hybrid) and self.stream:
            raise TrainError("BM25-aware training and hybrid selection read the whole cache: drop --stream")
        if self.corpus_sample and self.stream:
            raise TrainError(f"a corpus sample ({self.corpus_sample}) with streamed training: its dev split is ranked "
                             "against its own contexts")
        if self.canaries is None:
            self.canaries = []
        if isinstance(self.canaries, (str, os.PathLike)):
            self.canaries = [self.canaries]  # one cache file, not the characters of its path
        try:
            self.canaries = list(self.canaries)  # a generator too, read once
        except TypeError:
            bad("canaries", "a list of paths of cache files")
        for c in self.canaries:
            if not isinstance(c, (str, os.PathLike)):
                bad("canaries", "paths of cache files (an opened cache's contents may not be its file's)")
        self.canaries = [str(c) for c in self.canaries]  # paths, as written into config.json
        if str(self.device) != "cpu":  # checked here, not as a traceback from the first tensor moved there
            import torch

            try:
                kind = torch.device(self.device).type
            except (RuntimeError, TypeError):
                bad("device", "a torch device: cpu, cuda, cuda:N, mps")
            if kind == "cuda" and not torch.cuda.is_available():
                raise TrainError(f"device {self.device!r}: torch finds no CUDA GPU here (train on cpu)")

    def sized(self, n_pairs: int) -> "TrainConfig":
        """The settings left to the data (None), fixed for ``n_pairs`` training pairs: the
        batch is a sixteenth of the pairs within [32, 2048] (small data gets steps, not one
        batch per epoch), epochs give at least ``min_steps`` optimizer steps (at least 8,
        at most 200), patience a quarter of the epochs."""
        bs = self.batch_size or int(min(2048, max(32, n_pairs // 16)))
        steps = max(1, n_pairs // min(bs, max(n_pairs, 1)))
        epochs = self.epochs or int(min(200, max(8, math.ceil(self.min_steps / steps))))
        return replace(self, batch_size=bs, epochs=epochs, patience=self.patience or max(2, epochs // 4))


SMALL = 5000  # queries: under this, held-out shares grow (here) and selection uses folds (select.py)


def with_fixed(cfg: TrainConfig, fixed: dict | None, head_keys) -> TrainConfig:
    """``cfg`` with the training settings of model selection's ``fixed`` (the others must be
    ``head_keys``: a key that is neither is refused)."""
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(fixed or {}) - set(head_keys) - train_keys)
    if unknown:
        raise TrainError(f"fixed settings {', '.join(unknown)}: neither head nor training settings")
    return replace(cfg, **{k: v for k, v in (fixed or {}).items() if k in train_keys})
