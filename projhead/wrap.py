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

    def encode_queries(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.head.encode_queries(self.encoder.encode(list(texts), batch_size=batch_size, role="query"))

    def encode_contexts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.head.encode_contexts(self.encoder.encode(list(texts), batch_size=batch_size, role="context"))
