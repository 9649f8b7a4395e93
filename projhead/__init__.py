"""projhead: train tiny projection heads on cached vectors of a frozen text encoder.

The data flow, one module a step::

    data.py      texts: question -> context pairs (SQuAD, QuAC, Quora, JSONL)
    encoders.py  frozen encoder adapters (st:..., openclip:...)
    cache.py     vectors -> HDF5, once, resumable
    heads.py     projection heads, saved as config.json + model.safetensors
    losses.py    training objectives on embeddings, one registry
    train.py     the training loop over cached vectors: one configuration, the keep-or-identity decision
    select.py    model selection: candidate heads on held-out queries (`projhead train`'s default)
    evaluate.py  out-of-500 and full-corpus retrieval, BM25 baseline
    cli.py       `projhead ...`, arguments only

Loading a head and applying it needs only torch, numpy, safetensors and h5py.
"""
__version__ = "0.1.0"

from .heads import Head, HeadConfig, HeadError, load_head  # noqa: E402
from .losses import LOSSES, get_loss  # noqa: E402


def __getattr__(name):
    # Heavier pieces load on first use, so `import projhead` stays light for applying heads.
    if name in ("TrainConfig", "train_head"):
        from . import train

        return getattr(train, name)
    if name == "auto_train":
        from .select import auto_train

        return auto_train
    if name in ("open_cache", "build_cache"):
        from . import cache

        return getattr(cache, name)
    if name == "evaluate_cache":
        from .evaluate import evaluate_cache

        return evaluate_cache
    if name == "EncodedHead":
        from .wrap import EncodedHead

        return EncodedHead
    raise AttributeError(f"module 'projhead' has no attribute {name!r}")


__all__ = ["Head", "HeadConfig", "HeadError", "load_head", "LOSSES", "get_loss", "TrainConfig", "train_head", "auto_train",
           "open_cache", "build_cache", "evaluate_cache", "EncodedHead"]
