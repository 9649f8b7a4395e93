"""Shared fixtures: tiny files, a synthetic encoder with a known answer, the real MiniLM."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir() -> Path:
    """The real SQuAD files ($PROJHEAD_DATA, set by .ci/run to ../shared/data)."""
    d = os.environ.get("PROJHEAD_DATA")
    if not d or not Path(d).is_dir():
        pytest.skip("PROJHEAD_DATA is not set to the shared SQuAD folder")
    return Path(d)


class PlantedEncoder:
    """A stand-in encoder with a planted answer, for fast tests of training and caching.

    Each context gets a random unit vector; its questions get ``rotate(context) + noise``,
    so the frozen vectors retrieve badly and a linear head can learn to undo the rotation.
    Unknown texts get a vector seeded by their sha256, so the encoder is deterministic."""

    def __init__(self, pairs, dim: int = 16, noise: float = 0.3, seed: int = 0, rotate: float = 1.0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.name = "test:planted"
        a = rng.normal(size=(dim, dim))
        rot, _ = np.linalg.qr(a)
        # interpolate between identity and a random rotation: rotate=0 keeps queries aligned
        m = (1 - rotate) * np.eye(dim) + rotate * rot
        self.table = {}
        c = rng.normal(size=(len(pairs.contexts), dim))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        for t, v in zip(pairs.contexts, c):
            self.table[("context", t)] = v
        for qtext, ci in zip(pairs.queries, pairs.q2c):
            v = m @ c[ci] + noise * rng.normal(size=dim) / np.sqrt(dim)
            self.table.setdefault(("query", qtext), v / np.linalg.norm(v))
        self.calls = 0

    def encode(self, texts, batch_size=64, role="query"):
        self.calls += 1
        out = []
        for t in texts:
            v = self.table.get((role, t))
            if v is None:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                v = np.random.default_rng(seed).normal(size=self.dim)
                v /= np.linalg.norm(v)
            out.append(v)
        return np.asarray(out, dtype=np.float32)

    def describe(self):
        return {"name": self.name, "resolved": "planted", "settings": {"dim": self.dim},
                "weights_sha256": "0" * 64, "versions": {}}


def planted_pairs(n_groups: int = 40, contexts_per_group: int = 5, queries_per_context: int = 2):
    from projhead.data import Pairs

    queries, ids, groups, contexts, q2c = [], [], [], [], []
    for g in range(n_groups):
        for k in range(contexts_per_group):
            contexts.append(f"context {g}-{k}")
            for j in range(queries_per_context):
                queries.append(f"question {j} about {g}-{k}")
                ids.append(f"q{g}-{k}-{j}")
                groups.append(f"article {g}")
                q2c.append(len(contexts) - 1)
    return Pairs(queries, ids, groups, contexts, np.array(q2c),
                 {"dataset": "planted", "split": "train", "granularity": "sentence"})


def change_text(parent, key: str, row: int, text: str) -> None:
    """Set row ``row`` of the text column ``key`` (under an open h5py file or group) to
    ``text`` as a writer would, checksums and all: a change only the fingerprint can see."""
    from projhead.h5strings import column, create_text

    texts = list(column(parent, key)[()])
    texts[row] = text.encode("utf-8")
    del parent[key]
    create_text(parent, key, len(texts))[:] = texts


def as_format_2(path) -> None:
    """Rewrite the cache at ``path`` as format 2 stored it: texts and string attributes as
    HDF5 variable-length strings (in the global heap); a new file, so no old bytes remain."""
    import h5py

    from projhead.h5strings import PackedText

    def copy(src, dst):
        for k, v in src.attrs.items():
            if k != "strings_sha256":  # format 3's
                dst.attrs[k] = v.decode("utf-8") if isinstance(v, bytes) else v
        for name, obj in src.items():
            if isinstance(obj, h5py.Group) and "ends" in obj:
                dst.create_dataset(name, data=[t.decode("utf-8") for t in PackedText(obj)[()]],
                                   dtype=h5py.string_dtype("utf-8"))
            elif isinstance(obj, h5py.Group):
                copy(obj, dst.create_group(name))
            else:  # as written: chunks and checksums
                dst.create_dataset(name, data=obj[()], chunks=obj.chunks, fletcher32=obj.fletcher32)

    tmp = str(path) + ".v2"
    with h5py.File(path, "r") as f, h5py.File(tmp, "w", libver="latest") as g:
        copy(f, g)
        g.attrs["format_version"] = 2
    os.replace(tmp, path)


def linked_cache(path, n_groups: int, links, contexts_per_group: int = 4) -> Path:
    """A planted cache of ``n_groups`` articles (two questions per context) plus, for each
    (article, context row) in ``links``, a question filed under that article whose gold context
    is that row: one answer text under two documents, as duplicate-question data has."""
    from projhead.cache import build_cache
    from projhead.data import Pairs

    pairs = planted_pairs(n_groups=n_groups, contexts_per_group=contexts_per_group)
    queries, groups = pairs.queries + [f"shared {g} {c}" for g, c in links], pairs.groups + [f"article {g}" for g, _ in links]
    q2c = np.concatenate([pairs.q2c, [c for _, c in links]]).astype(np.int64)
    pairs = Pairs(queries, [f"id{i}" for i in range(len(queries))], groups, pairs.contexts, q2c, pairs.meta)
    build_cache(pairs, PlantedEncoder(pairs), path, progress=False)
    return path


@pytest.fixture
def planted_cache(tmp_path):
    """Factory: a real cache file of planted vectors."""
    from projhead.cache import build_cache

    def make(name="planted.h5", dim=16, rotate=1.0, noise=0.3, encoder_seed=0, **pair_kw):
        pairs = planted_pairs(**pair_kw)
        enc = PlantedEncoder(pairs, dim=dim, rotate=rotate, noise=noise, seed=encoder_seed)
        path = tmp_path / name
        build_cache(pairs, enc, path, progress=False)
        return path

    return make


@pytest.fixture(scope="session")
def minilm():
    from projhead.encoders import get_encoder

    return get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="fp32")  # the reference arithmetic
