"""Projection heads: small modules applied to frozen vectors, saved as a folder.

Usage::

    from projhead.heads import HeadConfig, Head, load_head
    head = Head(HeadConfig(kind="residual", in_dim=384))
    q = head.encode_queries(query_vectors)      # numpy in, numpy out (or torch in, torch out)
    c = head.encode_contexts(context_vectors)
    head.save("heads/my-head")                  # config.json + model.safetensors + README.md
    head = load_head("heads/my-head")           # no pickle, ever

A saved head is a folder that describes itself: ``config.json`` holds the head settings,
the encoder (name and weights hash) and cache it was trained on, the training settings,
the dev metrics and library versions; ``model.safetensors`` holds the weights. Loading
rebuilds the module from the config alone and refuses weights whose names or shapes do not
match it, and any folder holding pickle-format files.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .files import atomic_paths, write_file
from .config import ACTIVATIONS, HEAD_KINDS, TOWERS, HeadConfig, HeadError  # noqa: F401 (re-exported)
from .fusion import FusionError, FusionSpec, fuse
from .gate import QueryGate
from .card import model_card

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")
ACTIVATION_MODULES = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
assert tuple(ACTIVATION_MODULES) == ACTIVATIONS, "config.ACTIVATIONS names every activation module"


def _mlp(cfg: HeadConfig, out_dim: int) -> nn.Sequential:
    dims = [cfg.in_dim] + [cfg.hidden] * (cfg.layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            mods += [ACTIVATION_MODULES[cfg.activation](), nn.Dropout(cfg.dropout)]
    return nn.Sequential(*mods)


class Residual(nn.Module):
    """x + MLP(x); the last layer starts at zero, so the head starts as the identity."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.mlp = _mlp(cfg, cfg.in_dim)
        if cfg.init == "identity":
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):  # (B, D) -> (B, D)
        return x + self.mlp(x)


class DialogQuery(nn.Module):
    """A query from its turn vectors seen apart: q = x_0 + sum_s W_s x_s + b over the slots
    (x_0 the current question, then earlier questions and answers; padding is zeros). W and b
    start at zero: step 0 is the question alone, the frozen encoder."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.slots, self.dim = cfg.slots, cfg.in_dim
        self.weight = nn.Parameter(torch.zeros(cfg.slots, cfg.in_dim, cfg.in_dim))  # (S, D, D)
        self.bias = nn.Parameter(torch.zeros(cfg.in_dim))
        if cfg.init == "random":
            nn.init.normal_(self.weight, std=cfg.in_dim ** -0.5 / cfg.slots)

    def forward(self, x):  # (B, (S + 2) D) -> (B, D)
        turns = x[:, :self.slots * self.dim].reshape(len(x), self.slots, self.dim)  # (B, S, D)
        return turns[:, 0] + torch.einsum("sed,bsd->be", self.weight, turns) + self.bias


class DialogContext(nn.Module):
    """A sentence beside its neighbours (and its section): c' = c + W_0 c + W_p prev + W_n next
    [+ W_s section] + b (zeros where the section has no neighbour); W and b start at zero, so
    step 0 is the frozen sentence."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.slots, self.near, self.dim = cfg.slots, cfg.sentence_slots, cfg.in_dim
        k = 1 + cfg.sentence_slots  # self, previous, next[, section]
        self.weight = nn.Parameter(torch.zeros(k, cfg.in_dim, cfg.in_dim))  # (K, D, D)
        self.bias = nn.Parameter(torch.zeros(cfg.in_dim))
        if cfg.init == "random":
            nn.init.normal_(self.weight, std=cfg.in_dim ** -0.5 / k)

    def forward(self, x):  # (B, (S + N) D) -> (B, D)
        c = x[:, :self.dim]
        near = x[:, self.slots * self.dim:].reshape(len(x), self.near, self.dim)  # (B, N, D)
        parts = torch.cat([c[:, None], near], 1)  # (B, 1 + N, D)
        return c + torch.einsum("ked,bkd->be", self.weight, parts) + self.bias


class FirstBlock(nn.Module):
    """The frozen vector of a dialog row (its first block): contexts of a query-only dialog head."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x[:, :self.dim]


def build_tower(cfg: HeadConfig) -> nn.Module:
    if cfg.kind == "dialog":
        if cfg.slots < 1:
            raise HeadError("a dialog head needs its number of turn slots (slots >= 1): train it on a cache with a "
                            "turns section (projhead cache --turns K)")
        return DialogQuery(cfg)
    if cfg.kind == "residual":
        return Residual(cfg)
    if cfg.kind == "mlp":
        return _mlp(cfg, cfg.output_dim)
    lin = nn.Linear(cfg.in_dim, cfg.output_dim)
    if cfg.init == "identity":
        with torch.no_grad():  # identity on the shared dimensions
            lin.weight.copy_(torch.eye(cfg.output_dim, cfg.in_dim))
            lin.bias.zero_()
    return lin


class Head(nn.Module):
    """Query and context towers over frozen vectors (see module doc)."""

    def __init__(self, config: HeadConfig, info: dict | None = None):
        super().__init__()
        self.config = replace(config)  # a copy: passthrough is set per head
        self.info = info or {}  # training settings, cache, metrics: written to config.json
        self.query = build_tower(config)
        if config.kind == "dialog":
            self.context = DialogContext(config) if config.towers == "separate" else FirstBlock(config.in_dim)
        elif config.towers == "separate":
            self.context = build_tower(config)
        elif config.towers == "shared":
            self.context = self.query
        else:
            self.context = nn.Identity()
        self.gate = QueryGate(config.in_dim) if config.gate else None

    # -- applying --------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise HeadError(f"head expects vectors of shape (N, {self.config.input_dim}) from encoder "
                            f"{self.config.encoder or '(unrecorded)'}, got {tuple(x.shape)}"
                            + ("; a dialog head reads a cache's turns section (turns.dialog_view)"
                               if self.config.kind == "dialog" else ""))

    def keeps_frozen(self, tower: nn.Module) -> bool:
        """Whether ``tower`` gives the frozen vector as it is: the identity's towers, the context
        side of a query-side head. Its output is not normalised either, so it equals the frozen
        encoder's on any cache, one of vectors left unnormalised included."""
        return self.config.passthrough or isinstance(tower, (nn.Identity, FirstBlock))

    def _project(self, tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.keeps_frozen(tower):  # the frozen vector (a dialog row's first block: the question, or the sentence)
            return x[:, :self.config.in_dim]
        y = tower(x)  # (N, D_out)
        if self.gate is not None and tower is self.query:
            y = x + self.gate(x).unsqueeze(1) * (y - x)  # (N, D): the head in full at 1, frozen at 0
        return nn.functional.normalize(y, dim=-1) if self.config.normalize else y

    def forward(self, q: torch.Tensor, c: torch.Tensor):  # (B, D), (B, D) -> (B, D'), (B, D')
        return self._project(self.query, q), self._project(self.context, c)

    def _apply_any(self, tower: nn.Module, x, batch_size: int = 65536):
        """numpy in -> numpy out, torch in -> torch out (no grad for numpy)."""
        if isinstance(x, torch.Tensor):
            return self._project(tower, x.to(next(self.parameters()).dtype))
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise HeadError(f"head expects a 2-D array of vectors, got shape {x.shape}")
        was_training = self.training
        self.eval()
        out = []
        with torch.no_grad():
            for i in range(0, max(len(x), 1), batch_size):
                out.append(self._project(tower, torch.from_numpy(x[i:i + batch_size])).numpy())
        self.train(was_training)
        return np.concatenate(out)

    def encode_queries(self, x):
        return self._apply_any(self.query, x)

    def encode_contexts(self, x):
        return self._apply_any(self.context, x)

    def changes_contexts(self) -> bool:
        """Whether context vectors differ from the frozen encoder's, so an existing index must
        be re-encoded with ``encode_contexts`` (False for query-side and identity heads)."""
        return not self.config.passthrough and self.config.towers != "query"

    # -- the per-query gate -------------------------------------------------------------
    def set_gate(self, gate: QueryGate | None) -> "Head":
        """Attach a fitted ``gate.QueryGate`` (query-side heads only), or remove it with None."""
        if gate is not None and self.config.towers != "query":
            raise HeadError(f"a per-query gate needs a query-side head (towers='query'), not towers="
                            f"{self.config.towers!r}")
        if gate is not None and tuple(gate.mean.shape) != (self.config.in_dim,):
            raise HeadError(f"a gate fitted on vectors of dimension {gate.mean.shape[0]} cannot sit in front of a head "
                            f"of input dimension {self.config.in_dim}")
        self.gate = gate
        self.config.gate = gate is not None
        return self

    def gate_values(self, x) -> np.ndarray:
        """The gate of each query vector, (N,) in [0, 1] (all 1 without a gate)."""
        x = np.asarray(x, dtype=np.float32)
        if self.gate is None:
            return np.ones(len(x), np.float32)
        with torch.no_grad():
            return self.gate(torch.from_numpy(x)).numpy()

    # -- fusion with BM25 ---------------------------------------------------------------
    @property
    def fusion(self) -> FusionSpec | None:
        """The fusion with BM25 saved with the head (weight chosen on held-out queries by model
        selection, normalisation, BM25; ``--no-auto``: a BM25 given or trained beside), or None."""
        d = self.info.get("fusion")
        return None if d is None else FusionSpec.from_dict(d)

    def fuse(self, dense, bm25, weight: float | None = None) -> np.ndarray:
        """Fused scores of this head's dense scores and BM25 scores of the same (Nq, Nc)
        pairs, with the saved fusion (defaults if none; ``weight`` overrides its weight)."""
        return fuse(dense, bm25, self.fusion or FusionSpec(), weight)

    def check_encoder(self, name: str, weights_sha256: str | None = None, where: str = "these vectors") -> None:
        """Refuse vectors from another encoder than the one the head was trained on."""
        cfg = self.config
        if cfg.encoder and name != cfg.encoder:
            raise HeadError(f"{where} come from encoder {name!r}, but the head was trained on {cfg.encoder!r}")
        if cfg.encoder_weights_sha256 and weights_sha256 and weights_sha256 != cfg.encoder_weights_sha256:
            raise HeadError(f"{where} come from encoder {name!r} with other weights (sha256 "
                            f"{weights_sha256[:12]}...) than the head was trained on "
                            f"({cfg.encoder_weights_sha256[:12]}...)")

    def check_cache(self, cache) -> None:
        self.check_encoder(cache.encoder, cache.encoder_info.get("weights_sha256"), where=str(cache.path))
        if cache.dim != self.config.in_dim:
            raise HeadError(f"{cache.path}: vectors have dim {cache.dim}, the head expects {self.config.in_dim}")
        c = self.config
        if c.kind == "dialog" and "turn_slots" not in cache.attrs:
            raise HeadError(f"{cache.path}: a dialog head reads the cache through its turns section: "
                            "turns.dialog_view(open_cache(path)) (projhead eval does it, without --index)")
        if c.kind == "dialog":  # a dialog view: rows of equal width can differ in layout
            have = (int(cache.attrs["turn_slots"]), int(cache.attrs["sentence_slots"]))
            if have != (c.slots, c.sentence_slots):
                raise HeadError(f"{cache.path}: its turns section gives {have[0]} turn slots and {have[1]} blocks beside "
                                f"each sentence; the dialog head reads {c.slots} and {c.sentence_slots} (a cache made "
                                "with the same --turns and layout as its training cache)")

    # -- moving toward the frozen encoder ---------------------------------------------
    def can_interpolate(self) -> bool:
        """Whether the frozen encoder is a point in this head's weight space: identity-
        initialised linear and residual heads (the residual branch at zero, the matrix at I)."""
        c = self.config
        return c.init == "identity" and c.kind in ("linear", "residual", "dialog") and c.output_dim == c.in_dim

    def interpolate(self, alpha: float) -> "Head":
        """Move the weights to frozen + alpha * (weights - frozen), in place (WiSE-FT's
        weight-space ensembling with the frozen encoder): alpha 1 keeps the head, 0 is the
        identity. For these heads it equals x + alpha * (tower(x) - x) before normalising,
        so saving, loading and export need nothing new."""
        if not self.can_interpolate():
            raise HeadError(f"a {self.config.kind} head with init={self.config.init!r} has no frozen-encoder "
                            "weights to interpolate toward")
        if not 0 <= alpha <= 1:
            raise HeadError(f"alpha must be in [0, 1], not {alpha}")
        towers = [self.query] + ([self.context] if self.config.towers == "separate" else [])
        with torch.no_grad():
            for t in towers:
                if self.config.kind == "dialog":  # zero weights are the frozen encoder
                    for p in t.parameters():
                        p.mul_(alpha)
                elif self.config.kind == "residual":
                    t.mlp[-1].weight.mul_(alpha)  # the branch's last layer: output scales by alpha
                    t.mlp[-1].bias.mul_(alpha)
                else:
                    eye = torch.eye(t.weight.shape[0], t.weight.shape[1], dtype=t.weight.dtype)
                    t.weight.copy_(eye + alpha * (t.weight - eye))
                    t.bias.mul_(alpha)
        return self

    def reset_to_identity(self) -> "Head":
        """Keep the frozen encoder: ``passthrough``, as a query-side linear head at the identity
        (its config, weights and output dimension the frozen encoder's, not a rejected head's:
        no trained weights of another shape or tower are saved with it); the rejected head's
        settings are kept in ``rejected`` where they differ (``save_trained`` records them). A
        dialog head keeps its layout (its rows are the turns side by side), at the identity."""
        if self.config.kind == "dialog":
            if self.can_interpolate():
                self.interpolate(0.0)
        else:
            plain = replace(self.config, kind="linear", towers="query", out_dim=None, init="identity", gate=False)
            if plain != self.config:
                self.rejected = self.config  # the settings it was trained with
            self.config = plain
            self.query, self.context, self.gate = build_tower(self.config), nn.Identity(), None
        self.config.passthrough = True
        return self

    # -- saving ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Weights to save; a shared context tower is saved once (as the query tower)."""
        sd = self.state_dict()
        if self.config.towers == "shared":
            sd = {k: v for k, v in sd.items() if k.startswith("query.")}
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = Path(path)
        config = {"projhead_version": __version__, "torch_version": torch.__version__,
                  "head": asdict(self.config), **self.info}
        try:  # all three files or none: a failure leaves a head already there whole
            path.mkdir(parents=True, exist_ok=True)
            with atomic_paths([path / WEIGHTS_NAME, path / CONFIG_NAME, path / "README.md"]) as (weights, cfg, card):
                save_file(self.tensors(), str(weights), metadata={"format": "pt", "projhead": __version__})
                write_file(cfg, json.dumps(config, indent=2, default=_json_default))
                write_file(card, model_card(config))
        except (OSError, SafetensorError) as e:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise HeadError(f"{path}: cannot save the head ({getattr(e, 'strerror', None) or e}{where}); "
                            "the files there before are as they were") from e
        return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_head(path: str | os.PathLike) -> Head:
    """Rebuild a head from its folder (config.json + model.safetensors); see module doc."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise HeadError(f"{path}: not a head folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    risky = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if risky:
        raise HeadError(f"{path}: refusing a head folder that holds pickle-format files {risky}; "
                        f"projhead heads are {CONFIG_NAME} + {WEIGHTS_NAME} only")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"{path}: no {CONFIG_NAME}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HeadError(f"{path / CONFIG_NAME}: malformed JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("head"), dict):
        raise HeadError(f"{path / CONFIG_NAME}: no 'head' settings object")
    try:
        cfg = HeadConfig.from_dict(config["head"])
    except TypeError as e:
        raise HeadError(f"{path / CONFIG_NAME}: bad head settings ({e})") from None
    except HeadError as e:
        raise HeadError(f"{path / CONFIG_NAME}: {e}") from None
    info = {k: v for k, v in config.items() if k not in ("head", "projhead_version", "torch_version")}
    if not isinstance(info.get("encoder_build", {}), dict):  # the encoder's settings, read back by EncodedHead
        raise HeadError(f"{path / CONFIG_NAME}: encoder_build must be an object, not {info['encoder_build']!r}")
    head = Head(cfg, info)
    try:
        head.fusion
    except (FusionError, TypeError) as e:
        raise HeadError(f"{path / CONFIG_NAME}: bad fusion settings ({e})") from None
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except FileNotFoundError:
        raise HeadError(f"{path}: no {WEIGHTS_NAME}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise HeadError(f"{path / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
    want = {k: tuple(v.shape) for k, v in head.tensors().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if have != want:
        extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        shapes = sorted(k for k in set(have) & set(want) if have[k] != want[k])
        raise HeadError(f"{path / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} "
                        f"(unexpected {extra}, missing {missing}, wrong shape {shapes})")
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise HeadError(f"{path / WEIGHTS_NAME}: tensor {k} holds NaN or Inf")
    head.load_state_dict(tensors, strict=head.config.towers != "shared")
    head.eval()
    return head
