"""The cache: encode once, store in HDF5, read by every later step. One import for users.

Usage::

    from projhead.cache import build_cache, open_cache
    build_cache(pairs, encoder, "cache/squad-dev.h5")   # resumable, idempotent
    c = open_cache("cache/squad-dev.h5")
    c.queries, c.contexts, c.q2c, c.attrs["encoder"]

The work is done in one module a job, each importing only those below it:

    cachefile.py     the file format: the header and the registry of named sections
    cache_reader.py  open_cache, Cache: reading and checking a finished cache
    cache_writer.py  CacheWriter (the one writer), add_section, extend_cache
    cache_build.py   build_cache: the resumable encode job
    cache_import.py  cache_jsonl_vectors: the user's own vectors of a JSONL of pairs
    cache_naming.py  cache_name, cache_dataset
    corpus.py        CorpusFile: a corpus of texts without queries (build_cache(..., corpus=))

Modules of the package import from those, not from this one (the CLI and the package root excepted).
"""
from .cache_build import CacheResult, ShardedVectors, build_cache, start_job, write_texts  # noqa: F401
from .cache_import import cache_jsonl_vectors  # noqa: F401
from .cache_naming import cache_dataset, cache_name  # noqa: F401
from .corpus import CorpusFile, attach_corpus, with_corpus  # noqa: F401
from .cache_reader import Cache, open_cache, read_identity  # noqa: F401
from .cache_writer import CacheWriter, add_section, extend_cache, lock_output, upgrade_cache  # noqa: F401
from .cachefile import (FORMAT, FORMAT_VERSION, SECTIONS, CacheError, Column, Section, TextColumn,  # noqa: F401
                        cache_attrs, job_identity, read_rows, register_section)
