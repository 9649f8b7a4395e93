"""Where ``projhead cache`` puts a cache: its file name, and a dataset cached in one call.

Usage::

    from projhead.cache_naming import cache_dataset, cache_name
    cache_name("squad-v1.1", "dev", "sentence", "st:all-MiniLM-L6-v2")
    # 'squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5'
    c = cache_dataset("squad-v1.1", "dev", "sentence", encoder, folder="cache")
"""
from __future__ import annotations

import os
from pathlib import Path

from .cache_build import build_cache
from .cache_reader import Cache, open_cache


def cache_name(dataset: str, split: str, granularity: str, encoder: str, data: str | os.PathLike | None = None) -> str:
    """The file name ``projhead cache`` gives a cache: DATASET-SPLIT-GRANULARITY-ENCODER.h5
    (a JSONL file's own name instead of dataset, split and granularity)."""
    import re

    enc = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder.split(":", 1)[-1]).strip("-")
    name = Path(data).stem.split(".")[0] if dataset == "jsonl" and data else f"{dataset}-{split}-{granularity}"
    return f"{name}-{enc}.h5"


def cache_dataset(dataset: str, split: str, granularity: str, encoder, folder: str | os.PathLike = "cache",
                  data: str | os.PathLike | None = None, **build_kw) -> Cache:
    """Load a dataset by name, cache it with ``encoder`` under its usual name in ``folder``
    (nothing to do when it is already there) and open it: ``projhead cache`` in one call."""
    from .data import load_pairs

    pairs = load_pairs(dataset, split, granularity, data=data)
    path = Path(folder) / cache_name(dataset, split, pairs.meta.get("granularity", granularity), encoder.name, data)
    build_cache(pairs, encoder, path, **{"progress": False, **build_kw})
    return open_cache(path)
