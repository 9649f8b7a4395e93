"""projhead cache against plain encoding, same texts, one run.

    PROJHEAD_DATA=../shared/data python bench/bench_cache.py [--n 2000] [--clip-n 400]

For sentence-transformers (the default MiniLM) and an open_clip text tower (ViT-B-32, random
weights: no CLIP weights are reachable here; speed does not depend on the weight values),
encodes the same SQuAD dev texts with the plain library call and with ``build_cache``
(which also deduplicates, shards to disk and writes the HDF5 file), and prints texts/s,
the ratio, and the largest cosine difference between the two sets of vectors.
Writes bench/results/cache.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from projhead.cache import build_cache, open_cache
from projhead.data import Pairs, load_pairs
from projhead.encoders import get_encoder


def texts_sample(n: int) -> Pairs:
    """The first n dev questions and their gold sentences, as pairs."""
    full = load_pairs("squad-v1.1", "dev", "sentence", data=os.environ.get("PROJHEAD_DATA"))
    ctx, local = np.unique(full.q2c[:n], return_inverse=True)
    return Pairs(full.queries[:n], full.query_ids[:n], full.groups[:n], [full.contexts[i] for i in ctx], local,
                 dict(full.meta, split=f"dev[:{n}]"))


def max_cos_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.max(1 - (a * b).sum(1)))


def run(name: str, pairs: Pairs, enc, plain_fn, tmp: Path) -> dict:
    texts = pairs.queries + pairs.contexts
    t0 = time.perf_counter()
    plain = plain_fn(texts)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_cache(pairs, enc, tmp / f"{name}.h5", progress=False)
    t_cache = time.perf_counter() - t0
    c = open_cache(tmp / f"{name}.h5")
    ours = np.concatenate([c.queries, c.contexts])
    row = {"encoder": enc.name, "texts": len(texts), "plain_s": t_plain, "projhead_s": t_cache,
           "plain_texts_per_s": len(texts) / t_plain, "projhead_texts_per_s": len(texts) / t_cache,
           "speedup": t_plain / t_cache, "max_cosine_difference": max_cos_diff(plain, ours)}
    print(f"{name:10s} {len(texts):6d} texts  plain {row['plain_texts_per_s']:7.1f}/s  projhead "
          f"{row['projhead_texts_per_s']:7.1f}/s  ratio {row['speedup']:.2f}x  max cos diff {row['max_cosine_difference']:.2e}",
          flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="dev questions for MiniLM")
    ap.add_argument("--clip-n", type=int, default=400, help="dev questions for open_clip")
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--out", default="bench/results/cache.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        st = get_encoder("st:all-MiniLM-L6-v2", device="cpu")
        rows.append(run("minilm", texts_sample(args.n), st,
                        lambda t: st.model.encode(t, batch_size=64, normalize_embeddings=True), tmp))

        clip = get_encoder(f"openclip:{args.clip_arch}", device="cpu")

        def plain_clip(texts):  # open_clip as its README shows: tokenize (77 tokens), encode_text
            out = []
            with torch.no_grad():
                for i in range(0, len(texts), 64):
                    out.append(clip.model.encode_text(clip.tokenizer(texts[i:i + 64]), normalize=True).numpy())
            return np.concatenate(out)

        rows.append(run("openclip", texts_sample(args.clip_n), clip, plain_clip, tmp))
    result = {"bench": "cache", "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                            "torch_threads": torch.get_num_threads()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
