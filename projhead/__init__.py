"""projhead: train tiny projection heads on cached vectors of a frozen text encoder.

The data flow, one module a step::

    data.py      texts: question -> context pairs (SQuAD, QuAC, JSONL)
    encoders.py  frozen encoder adapters (st:..., openclip:...)
    cache.py     vectors -> HDF5, once, resumable
    heads.py     projection heads, saved as config.json + model.safetensors
    losses.py    training objectives on embeddings, one registry
    train.py     the training loop over cached vectors
    evaluate.py  out-of-500 and full-corpus retrieval, BM25 baseline
    cli.py       `projhead ...`, arguments only

Loading a head and applying it needs only torch, numpy, safetensors and h5py.
"""
__version__ = "0.1.0"
