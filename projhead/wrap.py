"""A head behind its encoder: texts in, projected vectors out.

Usage::

    import projhead
    model = projhead.EncodedHead("heads/minilm-squad")       # builds the recorded encoder
    q = model.encode_queries(["who wrote hamlet?"])          # (1, D') numpy
    c = model.encode_contexts(["Hamlet is a tragedy by Shakespeare."])

The encoder is rebuilt from the name and settings recorded when the head's training cache
was made, and its weights hash must match the one the head was trained on; a head is never
silently applied to vectors of another model.
"""
from __future__ import annotations

import os

import numpy as np

from .encoders import get_encoder
from .heads import Head, load_head


class EncodedHead:
    """``precision``: the encoder's arithmetic (see ``encoders.resolve_precision``). ``auto``
    picks what this machine runs fastest, whatever the training cache used: bf16 and fp32
    vectors of the same encoder agree to a cosine of 0.9999 or better, and a head accepts both."""

    def __init__(self, head: Head | str | os.PathLike, encoder=None, device: str | None = None,
                 precision: str = "auto"):
        self.head = head if isinstance(head, Head) else load_head(head)
        if encoder is None:
            name = self.head.config.encoder
            if not name:
                raise ValueError("the head records no encoder: pass encoder=")
            settings = dict(self.head.info.get("encoder_build", {}))
            if name.split(":")[0] in ("st", "openclip"):
                settings["precision"] = precision
            encoder = get_encoder(name, device=device, **settings)
        info = encoder.describe()
        self.head.check_encoder(info["name"], info.get("weights_sha256"), where="the vectors of this encoder")
        self.encoder = encoder

    def encode_queries(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """(N, D') vectors of ``texts``; one text (a str) gives one (D',) vector, as
        sentence-transformers' ``encode`` does."""
        return self._encode(self.head.encode_queries, texts, batch_size, "query")

    def encode_contexts(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """As ``encode_queries``, through the head's context side."""
        return self._encode(self.head.encode_contexts, texts, batch_size, "context")

    def _encode(self, side, texts, batch_size: int, role: str) -> np.ndarray:
        if isinstance(texts, bytes):
            raise TypeError("texts are str, not bytes: decode them first")
        one = isinstance(texts, str)  # list("abc") would encode each character
        out = side(self.encoder.encode([texts] if one else list(texts), batch_size=batch_size, role=role))
        return out[0] if one else out
