"""projhead cache against plain encoding, same texts, one run; and the encoder's precision.

    PROJHEAD_DATA=../shared/data python bench/bench_cache.py [--n 2000] [--clip-n 400]
    PROJHEAD_DATA=../shared/data python bench/bench_cache.py --precision [--precision-n 1000]

Default: for sentence-transformers (the default MiniLM) and an open_clip text tower (ViT-B-32,
random weights: no CLIP weights are reachable here; speed does not depend on the weight values),
encodes the same SQuAD dev texts with the plain library call and with ``build_cache``
(which also deduplicates, shards to disk and writes the HDF5 file), and prints texts/s,
the ratio, and the largest cosine difference between the two sets of vectors.
Writes bench/results/cache.json.

``--precision``: on the first N SQuAD v1.1 train questions and their sentences, plain
sentence-transformers fp32 against ``build_cache`` in fp32, bf16 and what ``auto`` picks on this
machine (runs interleaved, best of two), with the cosine of each text's vector to its fp32
vector. Then fidelity where it counts: SQuAD v1.1 dev cached in fp32 and in bf16, scored
frozen and with the default head (``projhead train`` on the fp32 train cache), both protocols.
Writes bench/results/precision.json and .md.
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
from projhead.encoders import cpu_flags, get_encoder
from reuse import head_reusable, stamp


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


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def train_sample(n: int) -> Pairs:
    full = load_pairs("squad-v1.1", "train", "sentence", data=os.environ.get("PROJHEAD_DATA"))
    ctx, local = np.unique(full.q2c[:n], return_inverse=True)
    return Pairs(full.queries[:n], full.query_ids[:n], full.groups[:n], [full.contexts[i] for i in ctx], local,
                 dict(full.meta, split=f"train[:{n}]"))


def precision_speed(n: int, tmp: Path) -> tuple[list[dict], str]:
    """texts/s of plain sentence-transformers fp32 and of build_cache in each precision."""
    from projhead.encoders import resolve_precision

    pairs = train_sample(n)
    texts = pairs.queries + pairs.contexts
    auto = resolve_precision("auto", "cpu")
    encs = {p: get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision=p) for p in ("fp32", "bf16")}
    plain_model = encs["fp32"].model
    best: dict[str, float] = {}
    vecs: dict[str, np.ndarray] = {}
    for rep in range(2):  # interleaved, best of two: both see the same machine state
        t0 = time.perf_counter()
        vecs["plain fp32"] = plain_model.encode(texts, batch_size=64, normalize_embeddings=True)
        best["plain fp32"] = min(best.get("plain fp32", 1e9), time.perf_counter() - t0)
        for p, enc in encs.items():
            out = tmp / f"p-{p}-{rep}.h5"
            t0 = time.perf_counter()
            build_cache(pairs, enc, out, progress=False)
            best[f"projhead {p}"] = min(best.get(f"projhead {p}", 1e9), time.perf_counter() - t0)
            c = open_cache(out)
            vecs[f"projhead {p}"] = np.concatenate([c.queries, c.contexts])
    ref = vecs["projhead fp32"]
    rows = []
    for name, sec in best.items():
        row = {"system": name, "texts": len(texts), "seconds": sec, "texts_per_s": len(texts) / sec,
               "speedup_vs_plain_fp32": best["plain fp32"] / sec, "cosine_to_fp32": cosines(vecs[name], ref),
               "auto": name == f"projhead {auto}"}
        rows.append(row)
        print(f"{name:15s} {len(texts):6d} texts  {row['texts_per_s']:7.1f}/s  x{row['speedup_vs_plain_fp32']:.2f} "
              f"vs plain fp32  cosine to fp32 min {row['cosine_to_fp32']['min']:.5f} mean "
              f"{row['cosine_to_fp32']['mean']:.6f}" + ("  <- auto" if row["auto"] else ""), flush=True)
    return rows, auto


def machine_gap(n: int) -> dict:
    """Where the rest of the encoding time goes on this machine (the same train texts):
    tokenisation alone, batch size, torch threads, and ONNX Runtime as a back end (the model
    exported with torch.onnx, mean pooling and normalisation as sentence-transformers does)."""
    pairs = train_sample(n)
    texts = sorted(pairs.queries + pairs.contexts, key=len, reverse=True)
    enc = get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="fp32")
    model, tok = enc.model, enc.model.tokenizer
    ref = model.encode(texts, batch_size=64, normalize_embeddings=True)

    def timed(fn):
        best = 1e9
        for _ in range(2):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    rows = {}
    t_tok, _ = timed(lambda: [tok(texts[i:i + 64], padding=True, truncation=True, max_length=model.max_seq_length)
                              for i in range(0, len(texts), 64)])
    t_ref, _ = timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True))
    rows["torch fp32, batch 64, %d threads" % torch.get_num_threads()] = t_ref
    rows["tokenisation alone (share of the above)"] = t_tok
    for bs in (16, 256):
        rows[f"torch fp32, batch {bs}"] = timed(lambda: model.encode(texts, batch_size=bs, normalize_embeddings=True))[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows["torch fp32, 1 thread"] = timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True))[0]
    torch.set_num_threads(threads)
    out = {"texts": len(texts), "seconds": rows}
    try:
        import onnxruntime as ort

        bert = model[0].auto_model

        class Body(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, mask):
                return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

        with tempfile.TemporaryDirectory() as d:
            onnx_path = str(Path(d) / "minilm.onnx")
            b = tok(texts[:4], padding=True, return_tensors="pt")
            torch.onnx.export(Body(bert).eval(), (b["input_ids"], b["attention_mask"]), onnx_path,
                              input_names=["ids", "mask"], output_names=["h"], opset_version=17, dynamo=False,
                              dynamic_axes={"ids": {0: "b", 1: "l"}, "mask": {0: "b", 1: "l"}, "h": {0: "b", 1: "l"}})
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

            def run_ort():
                vecs = []
                for i in range(0, len(texts), 64):
                    t = tok(texts[i:i + 64], padding=True, truncation=True, max_length=model.max_seq_length,
                            return_tensors="np")
                    h = sess.run(None, {"ids": t["input_ids"].astype(np.int64), "mask": t["attention_mask"].astype(np.int64)})[0]
                    m = t["attention_mask"][..., None]
                    v = (h * m).sum(1) / m.sum(1)
                    vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
                return np.concatenate(vecs)

            t_ort, vecs = timed(run_ort)
        rows["onnxruntime fp32, batch 64"] = t_ort
        out["onnxruntime_cosine_to_torch"] = cosines(vecs, ref)
    except Exception as e:  # an optional back end: say why it is missing
        out["onnxruntime_error"] = f"{type(e).__name__}: {e}"
    for name, sec in rows.items():
        print(f"{name:45s} {sec:6.2f}s  ({len(texts) / sec:6.1f} texts/s)", flush=True)
    return out


def precision_fidelity(work: Path, head_dir: Path) -> dict:
    """SQuAD v1.1 dev from an fp32 and a bf16 cache: frozen and default-head figures."""
    import projhead
    from projhead.cache import cache_dataset

    data = os.environ.get("PROJHEAD_DATA")
    fp32 = get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="fp32")
    train = cache_dataset("squad-v1.1", "train", "sentence", fp32, work, data)
    if not head_reusable(head_dir):
        t0 = time.perf_counter()
        projhead.auto_train(train, out=head_dir, progress=False)
        stamp(head_dir)
        print(f"default head trained on {train.path} in {time.perf_counter() - t0:.0f}s", flush=True)
    head = projhead.load_head(head_dir)
    dev = {"fp32": cache_dataset("squad-v1.1", "dev", "sentence", fp32, work, data).path}
    bf16_path = work / dev["fp32"].name.replace(".h5", "-bf16.h5")
    build_cache(load_pairs("squad-v1.1", "dev", "sentence", data=data),
                get_encoder("st:all-MiniLM-L6-v2", device="cpu", precision="bf16"), bf16_path, progress=False)
    dev["bf16"] = bf16_path
    out = {"head": str(head_dir), "head_passthrough": head.config.passthrough, "caches": {}}
    for p, path in dev.items():
        c = open_cache(path)
        res = projhead.evaluate_cache(c, head=head)
        out["caches"][p] = {"path": str(path), "results": res}
        for system in ("frozen", "head"):
            r = res[system]
            print(f"dev {p:5s} {system:6s} out-of-500 top1 {r['out_of_500']['top1']:.4f} top10 "
                  f"{r['out_of_500']['top10']:.4f}  full-corpus R@1 {r['full_corpus']['R@1']:.4f} "
                  f"nDCG@10 {r['full_corpus']['nDCG@10']:.4f}", flush=True)
    a, b = open_cache(dev["fp32"]), open_cache(dev["bf16"])
    out["cosine_bf16_to_fp32"] = cosines(np.concatenate([a.queries, a.contexts]), np.concatenate([b.queries, b.contexts]))
    print(f"dev vectors bf16 vs fp32 cosine min {out['cosine_bf16_to_fp32']['min']:.5f} mean "
          f"{out['cosine_bf16_to_fp32']['mean']:.6f}", flush=True)
    return out


def precision_table(r: dict) -> str:
    lines = [f"Machine: {r['machine']['cpu_count']} cores, native bf16: "
             f"{', '.join(r['machine']['cpu_bf16_flags']) or 'no'}; auto picks {r['auto']}.", "",
             "| system | texts/s | vs plain fp32 | cosine to fp32 (min / mean) |", "|---|---|---|---|"]
    for row in r["speed"]:
        lines.append(f"| {row['system']}{' (auto)' if row['auto'] else ''} | {row['texts_per_s']:.1f} | "
                     f"{row['speedup_vs_plain_fp32']:.2f}x | {row['cosine_to_fp32']['min']:.5f} / "
                     f"{row['cosine_to_fp32']['mean']:.6f} |")
    g = r.get("machine_gap", {})
    if g:
        base = next(iter(g["seconds"].values()))
        lines += ["", f"Where the time goes ({g['texts']} texts, fp32):", "", "| setting | seconds | vs batch 64 |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v:.2f} | " + (f"{100 * v / base:.1f}% of it |" if k.startswith("tokenisation")
                                             else f"{base / v:.2f}x |") for k, v in g["seconds"].items()]
        if "onnxruntime_cosine_to_torch" in g:
            lines.append(f"\nONNX Runtime vectors vs torch: cosine min {g['onnxruntime_cosine_to_torch']['min']:.6f}.")
    f = r["fidelity"]
    lines += ["", "| SQuAD v1.1 dev cache | system | out-of-500 top-1 | top-10 | full-corpus R@1 | nDCG@10 |",
              "|---|---|---|---|---|---|"]
    for p, c in f["caches"].items():
        for system in ("frozen", "head"):
            x = c["results"][system]
            lines.append(f"| {p} | {system} | {100 * x['out_of_500']['top1']:.2f} | {100 * x['out_of_500']['top10']:.2f} | "
                         f"{100 * x['full_corpus']['R@1']:.2f} | {100 * x['full_corpus']['nDCG@10']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="dev questions for MiniLM")
    ap.add_argument("--clip-n", type=int, default=400, help="dev questions for open_clip")
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--out", default="bench/results/cache.json")
    ap.add_argument("--precision", action="store_true", help="the precision rows and fidelity instead")
    ap.add_argument("--table-only", action="store_true", help="redraw bench/results/precision.md from its JSON")
    ap.add_argument("--precision-n", type=int, default=1000, help="train questions for the speed rows")
    ap.add_argument("--work", default="bench/work", help="where the SQuAD caches and the default head live")
    args = ap.parse_args()
    torch.manual_seed(0)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
               "cpu_bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})}
    if args.precision:
        with tempfile.TemporaryDirectory() as d:
            rows, auto = precision_speed(args.precision_n, Path(d))
        gap = machine_gap(args.precision_n)
        work = Path(args.work)
        fidelity = precision_fidelity(work, work / "heads" / "default")
        result = {"bench": "cache-precision", "machine": machine, "auto": auto, "speed": rows, "machine_gap": gap,
                  "fidelity": fidelity}
        out = Path("bench/results/precision.json")
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(precision_table(result))
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return
    if args.table_only:  # redraw precision.md from precision.json
        out = Path("bench/results/precision.json")
        out.with_suffix(".md").write_text(precision_table(json.loads(out.read_text())))
        return
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
    result = {"bench": "cache", "machine": machine, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
