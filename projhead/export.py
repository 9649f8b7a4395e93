"""Take a trained head where users already are: sentence-transformers and ONNX.

Usage::

    from projhead.export import export_sentence_transformers, export_onnx
    export_sentence_transformers("heads/minilm-squad", "export/minilm-squad-st")
    # then, anywhere with sentence-transformers (no projhead needed, no trust_remote_code):
    #   model = SentenceTransformer("export/minilm-squad-st")
    #   model.encode_query(["who wrote hamlet?"]); model.encode_document(["Hamlet is ..."])
    export_onnx("heads/minilm-squad", "export/minilm-squad-onnx")   # query.onnx, context.onnx

sentence-transformers: the folder is the frozen encoder's own modules (Transformer, Pooling,
Normalize) followed by a ``Router`` with a ``query`` route (the query tower) and a
``document`` route (the context tower), so ``encode_query`` and ``encode_document`` give the
head's vectors and plain ``encode`` gives the context side. The towers are written with
sentence-transformers' own ``Dense`` and ``Normalize`` modules, so loading needs neither
projhead nor ``trust_remote_code``; the one exception is a query tower with a per-query gate
(``gate.py``), written as ``st_module.HeadModule`` (the head's own folder), which needs projhead
installed and ``SentenceTransformer(folder, trust_remote_code=True)`` (sentence-transformers asks
it for any module class of another package; the code run is the installed projhead, none is
read from the folder). A residual head's skip connection spans two layers, which
``Dense`` cannot express directly; it is carried through the hidden layer as two extra
blocks ``act(x)`` and ``act(-x)``, whose difference is exactly ``x`` for GELU, ReLU and SiLU
(each is ``x * g(x)`` with ``g(x) + g(-x) = 1``). The export is checked against projhead on
vectors before it is written.

ONNX: each tower alone, vectors in (N, D), vectors out (N, D'), checked with onnxruntime
against torch; ``quantize=True`` adds int8 (dynamic quantisation) copies and reports their
cosine to the float32 output.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import foreign_files, listed, plain_name, remove_path, write_atomic
from .fusion import FUSION_NAME
from .heads import ACTIVATION_MODULES, Head, HeadError, load_head

_CARRIES_IDENTITY = (nn.GELU, nn.ReLU, nn.SiLU)  # act(x) - act(-x) == x
EXPORT_RECORD = "projhead_export.json"  # in every export (sentence-transformers, ONNX): what was exported, and how


def _as_head(head) -> Head:
    head = head if isinstance(head, Head) else load_head(head)
    if head.config.kind == "dialog" and head.config.passthrough:
        raise HeadError("this dialog head is the identity (selection kept the frozen encoder): there is nothing to "
                        "export, use the encoder as it is")
    if head.config.kind == "dialog":
        raise HeadError("a dialog head reads the turn vectors of a cache's turns section, which neither export "
                        "carries: apply it in Python (load_head, turns.dialog_view)")
    return head


def _linears(tower: nn.Module) -> list[nn.Linear]:
    return [m for m in tower.modules() if isinstance(m, nn.Linear)]


def tower_modules(head: Head, role: str) -> list:
    """sentence-transformers modules computing ``head``'s ``role`` tower ("query" or "context")
    on ``features["sentence_embedding"]``."""
    from sentence_transformers.base.modules import Dense, Normalize

    cfg = head.config
    if role == "query" and head.gate is not None and not cfg.passthrough:
        from .st_module import HeadModule

        return [HeadModule(head)]  # the gate multiplies by a function of the input: no Dense stack computes it
    tower = head.query if role == "query" else head.context
    if head.keeps_frozen(tower):
        return []  # the encoder's vector as it is, not normalised again
    mods: list = []
    layers = _linears(tower)
    act_cls = ACTIVATION_MODULES[cfg.activation]
    if cfg.kind != "residual" or not layers:
        for i, lin in enumerate(layers):
            act = None if i == len(layers) - 1 else act_cls()
            mods.append(Dense(lin.in_features, lin.out_features, activation_function=act,
                              init_weight=lin.weight.detach().clone(), init_bias=lin.bias.detach().clone()))
    else:
        if not issubclass(act_cls, _CARRIES_IDENTITY):
            raise HeadError(f"cannot export a residual head with activation {cfg.activation!r} to "
                            "sentence-transformers modules (the skip connection needs gelu, relu or silu); "
                            "export ONNX instead")
        d = cfg.in_dim
        eye = torch.eye(d)
        for i, lin in enumerate(layers):
            w, b = lin.weight.detach(), lin.bias.detach()
            h_in, h_out = lin.in_features, lin.out_features
            first, last = i == 0, i == len(layers) - 1
            if first:  # x -> [W1 x + b1; x; -x], activation -> [h; act(x); act(-x)]
                weight = torch.cat([w, eye, -eye])
                bias = torch.cat([b, torch.zeros(2 * d)])
            else:  # [h; act(x); act(-x)]: the last two blocks give x back by subtraction
                carry = torch.cat([torch.zeros(d, h_in), eye, -eye], dim=1)  # (d, h_in + 2d) -> x
                lin_part = torch.cat([w, torch.zeros(h_out, 2 * d)], dim=1)
                if last:  # W_L h + b_L + x
                    weight, bias = lin_part + carry, b
                else:
                    weight = torch.cat([lin_part, carry, -carry])
                    bias = torch.cat([b, torch.zeros(2 * d)])
            mods.append(Dense(weight.shape[1], weight.shape[0], activation_function=None if last else act_cls(),
                              init_weight=weight.clone(), init_bias=bias.clone()))
    if cfg.normalize:
        mods.append(Normalize())
    return mods


def _run_modules(mods: list, x: torch.Tensor) -> torch.Tensor:
    features = {"sentence_embedding": x}
    for m in mods:
        features = m(features)
    return features["sentence_embedding"]


# The saved folder against projhead on texts: the encoder runs twice, in other batches (other
# padding), so its own float differences (up to about 1e-5) come on top of the modules' (``atol``).
TEXTS_ATOL = 1e-4


def export_sentence_transformers(head, out: str | os.PathLike, encoder=None, check_texts: list[str] | None = None,
                                 atol: float = 1e-5) -> dict:
    """Write a sentence-transformers folder: the head's encoder followed by its towers (see
    module doc). ``encoder``: an ``st:`` encoder adapter (default: rebuilt from what the head
    records). Returns a report with the largest difference to projhead on ``check_texts``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Router

    from .wrap import EncodedHead

    _check_out(head, out, "a sentence-transformers")
    head = _as_head(head)
    if encoder is None and not head.config.encoder.startswith("st:"):  # before building it: vectors have no encoder
        raise HeadError(f"sentence-transformers export needs an st: encoder, this head was trained on "
                        f"{head.config.encoder!r}; export ONNX (the head alone) instead")
    # fp32: the exported folder runs in fp32 unless its user asks otherwise, and the check compares like with like
    wrapped = EncodedHead(head, encoder=encoder, device="cpu", precision="fp32")
    enc = wrapped.encoder
    if not hasattr(enc, "model") or not enc.name.startswith("st:"):
        raise HeadError(f"sentence-transformers export needs an st: encoder, this head was trained on "
                        f"{head.config.encoder!r}; export ONNX (the head alone) instead")
    base = list(enc.model.children())
    if enc.normalize and not isinstance(base[-1], Normalize):
        base.append(Normalize())
    x = check_vectors(head, 64, torch.Generator().manual_seed(0))
    routes = {}
    for role in ("query", "context"):
        mods = tower_modules(head, role)
        with torch.no_grad():
            got = _run_modules(mods, x.clone()) if mods else x
            want = head.encode_queries(x) if role == "query" else head.encode_contexts(x)
        err = float((got - want).abs().max())
        if err > atol:
            raise HeadError(f"export check failed: the {role} modules differ from the head by {err:.2e}")
        routes[role] = mods
    checked_open = gate_open(head, x)
    router = Router.for_query_document(query_modules=routes["query"], document_modules=routes["context"])
    model = SentenceTransformer(modules=[*base, router], device="cpu")
    model.max_seq_length = enc.model.max_seq_length
    model.prompts = {"query": enc.prefixes["query"], "document": enc.prefixes["context"]}
    # plain encode() is the context side: with the context's prefix, as encode_document() has it
    model.default_prompt_name = "document" if enc.prefixes["context"] else None
    # projhead ranks by the dot product: cosine says the same only where every route gives unit vectors
    unit = [enc.normalize if head.keeps_frozen(t) else head.config.normalize for t in (head.query, head.context)]
    model.similarity_fn_name = "cosine" if all(unit) else "dot"
    out = Path(out)
    report = {"format": "sentence-transformers", "path": str(out), "encoder": enc.name, "head": head.config.kind,
              "training_precision": head.info.get("encoder_build", {}).get("precision", "fp32"),
              **({"checked_with_gate_open": checked_open} if checked_open is not None else {})}
    texts = check_texts or ["who wrote hamlet?", "Hamlet is a tragedy written by William Shakespeare."]
    with _written_into(out) as work:
        model.save(str(work))
        # a gated query route is projhead's own module (st_module.HeadModule): installed code, not the folder's
        loaded = SentenceTransformer(str(work), device="cpu", local_files_only=True,
                                     trust_remote_code=head.gate is not None)
        want_c = wrapped.encode_contexts(texts)
        report["max_abs_diff_query"] = float(np.abs(loaded.encode_query(texts) - wrapped.encode_queries(texts)).max())
        report["max_abs_diff_context"] = float(np.abs(loaded.encode_document(texts) - want_c).max())
        report["max_abs_diff_plain_encode"] = float(np.abs(loaded.encode(texts) - want_c).max())
        worst = max(("query", "context", "plain_encode"), key=lambda k: report[f"max_abs_diff_{k}"])
        if not report[f"max_abs_diff_{worst}"] <= max(atol, TEXTS_ATOL):  # the folder as loaded: an earlier export stays
            raise HeadError(f"export check failed: the saved folder's {worst.replace('_', ' ')} vectors differ from "
                            f"projhead's by {report[f'max_abs_diff_{worst}']:.2e} on {len(texts)} texts; nothing written")
        _side_files(work, report, head)
    return report


def check_vectors(head: Head, n: int, generator: torch.Generator) -> torch.Tensor:
    """What an export is checked on: ``n`` random unit vectors and, for a gated head (whose gate
    is closed on almost all of those), ``n`` more around its training queries' mean at
    distances from 0 to 1.5 x the gate's upper bound, so the open, ramping and closed gate are
    all compared."""
    x = torch.randn(n, head.config.in_dim, generator=generator)
    x = x / x.norm(dim=1, keepdim=True)
    if head.gate is None:
        return x
    g = head.gate
    with torch.no_grad():
        z = torch.randn(n, head.config.in_dim, generator=generator)
        z = z / z.pow(2).mean(dim=1, keepdim=True).sqrt()  # whitened, RMS distance 1
        at = torch.linspace(0.0, 1.5 * float(g.bounds[1]), n)[:, None]
        near = g.mean + (at * z) @ torch.linalg.pinv(g.whiten)
    return torch.cat([x, near])


def gate_open(head: Head, x: torch.Tensor) -> int | None:
    """How many of the check vectors ``x`` had the head's gate open (above one half); None
    without a gate."""
    return int((head.gate_values(x.numpy()) > 0.5).sum()) if head.gate is not None else None


@contextlib.contextmanager
def _written_into(out: Path):
    """A fresh folder inside ``out`` to export into (a temporary name ``files.foreign_files``
    passes over); when the export is whole and checked, the earlier export's files (those its
    record lists; every visible one for a record that lists none) give way to it. So no file of
    an earlier export stays, a failed export leaves the earlier one as it was, the folder itself
    (a mount point, its owner and mode, files of the user's) stays, and only ``out`` is written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".export.tmp*"):  # a killed run's
        shutil.rmtree(old, ignore_errors=True)
    work = out / f".export.tmp{os.getpid()}"
    work.mkdir()
    try:
        yield work
        for name in _exported(out):
            remove_path(out / name)
        for p in work.iterdir():
            p.rename(out / p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _exported(out: Path) -> list[str]:
    """The names an earlier export wrote in ``out`` (none without one)."""
    try:
        record = json.loads((out / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return []
    names = record.get("files") if isinstance(record, dict) else None
    if isinstance(names, list):
        return [n for n in names if isinstance(n, str) and plain_name(n)]
    return [p.name for p in out.iterdir() if not p.name.startswith(".")]  # an export of before the list


def _check_out(head, out, kind: str) -> None:
    """Refuse an ``out`` holding files other than a previous export's (its ``EXPORT_RECORD``),
    before anything is written: the head's own folder, or a folder of the user's."""
    foreign = foreign_files(out, lambda o: (o / EXPORT_RECORD).is_file())  # a previous export may be replaced
    if foreign:
        own = not isinstance(head, Head) and Path(out).resolve() == Path(head).resolve()
        raise HeadError(f"{out}: " + ("the head's own folder" if own else f"holds files that are not "
                                      f"{kind} export ({listed(foreign)})")
                        + ", which the export would replace: give --out a new or empty folder")


def _side_files(out: Path, report: dict, head: Head) -> None:
    """projhead_export.json (the report and head settings) and, for a head with a saved
    fusion, fusion.json (``fusion.read_fusion`` reads it back). The record lists the files of
    the export, which a later export into the same folder replaces."""
    if head.fusion is not None:
        write_atomic(out / FUSION_NAME, json.dumps(head.fusion.to_dict(), indent=1))
    files = sorted({p.name for p in out.iterdir()} | {EXPORT_RECORD})  # what a later export replaces
    write_atomic(out / EXPORT_RECORD, json.dumps({**report, "head_config": head.config.__dict__,
                                                  "fusion": head.info.get("fusion"), "files": files}, indent=1))


class _TowerModule(nn.Module):
    def __init__(self, head: Head, role: str):
        super().__init__()
        self.head, self.role = head, role

    def forward(self, x):
        return self.head.encode_queries(x) if self.role == "query" else self.head.encode_contexts(x)


def export_onnx(head, out: str | os.PathLike, quantize: bool = False, opset: int = 18, n_check: int = 1000,
                atol: float = 1e-5) -> dict:
    """Write ``query.onnx`` and ``context.onnx`` (vectors in, vectors out) into ``out``,
    checked with onnxruntime against torch on ``n_check`` random unit vectors."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise HeadError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'projhead[export]'") from e
    _check_out(head, out, "an ONNX")
    head = _as_head(head).eval()
    out = Path(out)
    x = check_vectors(head, n_check, torch.Generator().manual_seed(0))
    report = {"format": "onnx", "path": str(out), "opset": opset, "towers": {}}
    with _written_into(out) as work:
        _onnx_towers(head, work, x, report, quantize, opset, atol, ort)
        _side_files(work, report, head)
    return report


def _onnx_towers(head: Head, out: Path, x: torch.Tensor, report: dict, quantize: bool, opset: int, atol: float,
                 ort) -> None:
    """Each tower as ONNX in ``out``, checked with onnxruntime on ``x``; entries of ``report["towers"]``."""
    for role in ("query", "context"):
        path = out / f"{role}.onnx"
        module = _TowerModule(head, role).eval()
        batch = torch.export.Dim("batch")
        torch.onnx.export(module, (x[:2],), str(path), input_names=["vectors"], output_names=["projected"],
                          dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True, verbose=False)
        with torch.no_grad():
            want = module(x).numpy()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"vectors": x.numpy()})[0]
        err = float(np.abs(got - want).max())
        if err > atol:
            raise HeadError(f"{report['path']}: the {role} tower run by onnxruntime differs from torch by {err:.2e}; "
                            "nothing was written")
        entry = {"file": path.name, "max_abs_diff_vs_torch": err, "bytes": path.stat().st_size}
        if role == "query" and head.gate is not None:
            entry["checked_with_gate_open"] = gate_open(head, x)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            qpath = out / f"{role}.int8.onnx"
            quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
            qgot = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(
                None, {"vectors": x.numpy()})[0]
            cos = (qgot * want).sum(1) / (np.linalg.norm(qgot, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
            entry["int8"] = {"file": qpath.name, "bytes": qpath.stat().st_size,
                             "cosine_to_float32_mean": float(cos.mean()), "cosine_to_float32_min": float(cos.min())}
        report["towers"][role] = entry
