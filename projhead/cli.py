"""The ``projhead`` command: argument parsing only; all work is in the library.

Usage::

    projhead cache --dataset squad-v1.1 --split dev --granularity sentence
    projhead info cache/squad-v1.1-dev-sentence-all-MiniLM-L6-v2.h5
    projhead mine TRAIN.h5 --method semantic --teacher hybrid
    projhead train TRAIN.h5 --out heads/minilm-squad [--mined semantic --hard-negatives 1]
    projhead eval DEV.h5 --head heads/minilm-squad [--report reports/minilm-squad]
    projhead export heads/minilm-squad --format sentence-transformers --out export/minilm-squad

``main(argv)`` runs the CLI in-process (tests use it). Expected errors (bad input, refused
overwrites) print one line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cache import CacheError
from .cli_cache import cache, info, upgrade
from .config import HEAD_KINDS, LOSS_NAMES, MINE_METHODS, TOWERS, HeadError, LossError, MineError, TrainError
from .config import HeadConfig as _H, TrainConfig as _T  # option defaults come from the dataclasses
from .data import DataError
from .encoders import EncoderError
from .fusion import DEFAULT_WEIGHT, NORMALISATIONS, FusionError, eval_fusion
from .search import SearchError

USER_ERRORS = (CacheError, DataError, EncoderError, FusionError, HeadError, LossError, MineError, SearchError,
               TrainError, OSError)  # OSError: a full disk or a folder not writable, with the path it names


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="projhead")
def cli():
    """Train tiny projection heads on cached vectors of a frozen text encoder."""


cli.add_command(cache)
cli.add_command(info)
cli.add_command(upgrade)


POS_INT = click.IntRange(min=1)
# model selection's learning rates (select.CANDIDATES; select imports torch, so they are repeated here and a test
# holds the two equal)
_LINEAR_LR, _OTHER_LR = 1e-3, 5e-4
POS_FLOAT = click.FloatRange(min=0, min_open=True)
FRACTION = click.FloatRange(0, 1, max_open=True)


@cli.command()
@click.argument("cache_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="folder to save the head in")
@click.option("--auto/--no-auto", default=True, show_default=True,
              help="choose the head (kind, towers, lr, epochs) on held-out queries; settings given below are kept "
                   "fixed. --no-auto trains exactly one configuration")
@click.option("--kind", type=click.Choice(HEAD_KINDS), default=None, help=f"head kind [--no-auto: {_H.kind}]")
@click.option("--towers", type=click.Choice(TOWERS), default=None,
              help=f"separate query/context heads, one shared head, or query only (contexts stay frozen) "
                   f"[--no-auto: {_H.towers}]")
@click.option("--out-dim", type=POS_INT, default=None, help="output dimension (default: the encoder's)")
@click.option("--hidden", type=POS_INT, default=None, help=f"hidden width of mlp/residual [{_H.hidden}]")
@click.option("--layers", type=POS_INT, default=None, help=f"linear layers of mlp/residual [{_H.layers}]")
@click.option("--activation", type=click.Choice(["gelu", "relu", "silu", "tanh"]), default=None,
              help=f"[{_H.activation}]")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help=f"[{_H.dropout}]")
@click.option("--init", type=click.Choice(["identity", "random"]), default=None, help=f"[{_H.init}]")
@click.option("--loss", type=click.Choice(LOSS_NAMES), default=_T.loss, show_default=True)
@click.option("--chunk-size", type=POS_INT, default=None,
              help="clip loss: compute batches larger than this in row blocks (exact gradients, less memory)")
@click.option("--loss-setting", "loss_setting", multiple=True, metavar="KEY=VALUE",
              help="a setting of the loss, e.g. views=pair (byol), mode=margin_mse (distill); repeatable")
@click.option("--mined", default=_T.mined, help="name of a mined set in the cache (projhead mine)")
@click.option("--hard-negatives", type=click.IntRange(min=0), default=_T.hard_negatives, show_default=True,
              help="mined negatives added to each pair of a batch")
@click.option("--silver", is_flag=True, help="also train on the mined set's silver pairs")
@click.option("--stream", is_flag=True,
              help="read the cache in chunks, for caches larger than memory (plain pairs only; needs --no-auto)")
@click.option("--stream-chunk", type=POS_INT, default=_T.stream_chunk, show_default=True, help="--stream: rows per read")
@click.option("--stream-buffer", type=POS_INT, default=_T.stream_buffer, show_default=True,
              help="--stream: chunks shuffled together")
@click.option("--epochs", type=POS_INT, default=None,
              help="epochs [sized to the data: at least 8, and at least --min-steps optimizer steps]")
@click.option("--min-steps", type=POS_INT, default=_T.min_steps, show_default=True,
              help="when --epochs is not given: the fewest optimizer steps")
@click.option("--batch-size", type=POS_INT, default=None,
              help="pairs per step [a sixteenth of the pairs, within 32..2048]")
@click.option("--batching", type=click.Choice(["group", "random"]), default=None,
              help=f"group: each batch holds whole documents, so negatives come from the same document "
                   f"[{_T.batching}; model selection's dialog candidates: random]")
@click.option("--lr", type=POS_FLOAT, default=None,
              help=f"peak learning rate [model selection: {_LINEAR_LR:g} for linear heads, {_OTHER_LR:g} for others; "
                   f"--no-auto: {_T.lr:g}]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_T.weight_decay, show_default=True)
@click.option("--temperature", type=POS_FLOAT, default=None, help="initial softmax temperature [0.05; dialog candidates 0.1]")
@click.option("--fixed-temperature", is_flag=True, help="do not learn the temperature")
@click.option("--anchor-weight", type=click.FloatRange(min=0), default=_T.anchor_weight, show_default=True,
              help="penalty on the distance between head output and frozen vector")
@click.option("--alpha", metavar="A|auto", callback=lambda c, p, v: _alpha(v), help="save frozen + alpha x (trained - frozen), in weight space: 1 keeps the trained head; "
              "auto: selection picks 0.9, 0.75 or 0.5 on its choosing queries [auto for linear and residual heads in 5-fold selection, else 0.9]")
@click.option("--canary", "canaries", multiple=True, type=click.Path(dir_okay=False),
              help="a cache of another domain (same encoder), scored every epoch beside the frozen encoder; the head "
                   "is shrunk toward the frozen encoder until no canary loses more than --canary-tolerance; repeatable")
@click.option("--gate/--no-gate", default=_T.gate, show_default=True,
              help="model selection: give a kept query-side head a per-query gate that fades it to the frozen "
                   "encoder for queries unlike its training queries (calibrated against the --canary caches, if any)")
@click.option("--hybrid", is_flag=True, help="for use fused with BM25: candidates also trained beside BM25, all chosen and decided by held-out queries ranked dense + BM25 (needs context texts)")
@click.option("--dense-only", is_flag=True, help="you search with dense vectors alone, never fused with BM25: a head kept on its own is not also judged fused with BM25 (against frozen + BM25)")
@click.option("--recipe/--no-recipe", default=_T.recipe, show_default=True, help="k-fold selection (under 5,000 queries) "
              "also judges LlamaIndex's adapter recipe, fixed in advance, on every held-out query's margin: kept when no "
              "candidate is and its own check passes, or in place of a kept candidate it beats on the deciding queries' "
              "margin and --select-metric")
@click.option("--bm25", "bm25_kb", type=click.Tuple([click.FloatRange(min=0), click.FloatRange(0, 1)]), metavar="K1 B", help="BM25's "
              "k1, b for the fusion saved with the head and --hybrid, as your engine's (Elasticsearch: 1.2 0.75) [chosen on held-out queries]")
@click.option("--canary-tolerance", type=click.FloatRange(0, 1, max_open=True), default=_T.canary_tolerance,
              show_default=True, help="most nDCG@10 a canary may lose (0.005 = half a point)")
@click.option("--dev-fraction", type=FRACTION, default=None,
              help="share of groups held out for a dev split [5%, or 20% under 5,000 queries, where model "
                   "selection holds out 5 folds instead and uses it only with fewer than 5 groups]")
@click.option("--select-metric", type=click.Choice(["top1", "top5", "top10", "mrr10", "ndcg10"]),
              default=_T.select_metric, show_default=True,
              help="metric of the held-out queries ranked against every context of the cache")
@click.option("--corpus-sample", type=click.IntRange(min=0), default=None,
              help="held-out queries rank against the contexts and N corpus rows (seeded sample); 0: none [all, <= 100,000]")
@click.option("--after-folds", type=click.Choice(["refit", "average"]), default=_T.after_folds, show_default=True,
              help="k-fold selection (under 5,000 queries) saves the winner trained again on every pair (refit) "
                   "or the mean of its fold heads' weights (average)")
@click.option("--decision", type=click.Choice(["bootstrap", "better"]), default=_T.decision, show_default=True,
              help="bootstrap: replace the frozen encoder only if the 95% interval of the dev gain is above 0")
@click.option("--patience", type=POS_INT, default=None, help="epochs that cannot be kept (neither the best dev metric "
              "nor within noise of it and clearly above the frozen encoder) before stopping [a quarter of the epochs]")
@click.option("--stop-epoch", type=POS_INT, default=None, help="end the run after this epoch; the learning-rate "
              "schedule still spans --epochs (how model selection trains its winner on all pairs)")
@click.option("--seed", type=int, default=_T.seed, show_default=True)
@click.option("--device", default=_T.device, show_default=True)
@click.option("--restart", is_flag=True, help="--no-auto: discard a checkpoint left in --out by an interrupted run")
@click.option("--quiet", is_flag=True)
def train(cache_file, out, auto, kind, towers, out_dim, hidden, layers, activation, dropout, init, loss, chunk_size,
          loss_setting, mined, hard_negatives, silver, stream, stream_chunk, stream_buffer, epochs, min_steps,
          batch_size, batching, lr, weight_decay, temperature, fixed_temperature, anchor_weight, alpha, canaries,
          gate, hybrid, dense_only, recipe, bm25_kb, canary_tolerance, dev_fraction, select_metric, corpus_sample, after_folds, decision, patience,
          stop_epoch, seed, device, restart, quiet):
    """Train a projection head on a cache (CLIP-style symmetric InfoNCE by default).

    By default a few candidate heads are compared on held-out queries (k-fold on small
    data) and the best is kept only if its gain over the frozen encoder is more than noise;
    else, on small data, a fixed adapter recipe judged on every held-out query's margin (which
    also replaces a kept candidate it beats); otherwise the saved head is the identity. --no-auto trains one configuration, with
    checkpoints every epoch: an interrupted run resumes when the same command is run again."""
    head_given = {k: v for k, v in (("kind", kind), ("towers", towers), ("out_dim", out_dim), ("hidden", hidden),
                                    ("layers", layers), ("activation", activation), ("dropout", dropout),
                                    ("init", init)) if v is not None}
    if corpus_sample and stream:
        raise click.UsageError("--corpus-sample: --stream ranks its dev split against the contexts it streams, "
                               "without the corpus section")
    tcfg = _T(loss=loss, epochs=epochs, min_steps=min_steps, batch_size=batch_size, batching=batching or _T.batching,
              lr=lr or _T.lr, weight_decay=weight_decay, init_temperature=temperature,
              learn_temperature=not fixed_temperature, anchor_weight=anchor_weight, alpha=alpha,
              canaries=list(canaries), gate=gate, canary_tolerance=canary_tolerance, dev_fraction=dev_fraction,
              select_metric=select_metric, corpus_sample=corpus_sample, after_folds=after_folds, decision=decision, patience=patience,
              stop_epoch=stop_epoch, seed=seed, device=device, hybrid=hybrid, dense_only=dense_only, recipe=recipe,
              **dict(zip(("bm25_k1", "bm25_b"), bm25_kb or ())),
              loss_settings={**_settings(loss_setting), **({"chunk_size": chunk_size} if chunk_size else {})},
              mined=mined, hard_negatives=hard_negatives, silver=silver, stream=stream, stream_chunk=stream_chunk,
              stream_buffer=stream_buffer)
    if auto and stream:
        raise click.UsageError("--stream trains one configuration: add --no-auto")
    if (hybrid or dense_only) and not auto:
        raise click.UsageError(f"{'--hybrid is model selection on the fused metric' if hybrid else '--dense-only is a setting of model selection (--no-auto decides on dense search anyway)'}: drop --no-auto")
    if auto and restart:
        raise click.UsageError("--restart discards the checkpoint of an interrupted --no-auto run; model selection writes none")
    selection_only = [o for o, asked in (("--after-folds average", after_folds != _T.after_folds),
                                         ("--no-recipe", not recipe), ("--no-gate", not gate)) if asked]
    if not auto and selection_only:
        raise click.UsageError(f"{', '.join(selection_only)}: settings of model selection; --no-auto trains one "
                               "head, without fold heads, recipe or gate")
    from .cache import open_cache

    # the cache's sections, where an option depends on them (read once, from its attributes)
    sections = open_cache(cache_file, load=False).sections if corpus_sample or (auto and batching) else {}
    if corpus_sample and "corpus" not in sections:
        raise click.UsageError(f"--corpus-sample {corpus_sample}: {cache_file} has no corpus section to sample "
                               "(projhead cache --corpus FILE adds one)")
    if auto:
        from .select import auto_train

        # a batching given wins over the dialog candidates' own (random), as --lr and --batch-size do;
        # elsewhere it is the run's setting, as before (the other candidates have none of their own)
        dialog = batching and "turns" in sections
        head, log = auto_train(cache_file, tcfg, fixed={**head_given, **({"lr": lr} if lr else {}),
                                                         **({"batching": batching} if dialog else {})}, out=out,
                               progress=not quiet)
        for note in log["selection"]["not_used"] if quiet else ():  # without --quiet the progress said them
            click.echo(f"not used: {note}", err=True)
    else:
        from .train import train_head

        head, log = train_head(cache_file, _H(**head_given, in_dim=open_cache(cache_file, load=False).dim), tcfg,
                               out=out, progress=not quiet, restart=restart)  # the settings checked at the cache's dim
    from .train import summary_line

    click.echo(summary_line(out, head, log, select_metric))


def _alpha(value: str | None) -> float | str | None:
    """--alpha: a number in [0, 1], or auto (model selection chooses it)."""
    if value in (None, "auto"):
        return value
    try:
        if 0 <= float(value) <= 1:
            return float(value)
    except ValueError:
        pass  # not a number: said below
    raise click.BadParameter(f"{value!r}: a number in [0, 1], or auto")


def _settings(items: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; values read as JSON where they parse (numbers, true/false), else text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--loss-setting")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@cli.command()
@click.argument("cache_file", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(MINE_METHODS), default="semantic", show_default=True,
              help="where candidates come from: the frozen vectors, BM25, or both")
@click.option("--k", type=click.IntRange(min=1), default=8, show_default=True, help="negatives kept per query")
@click.option("--margin", type=float, default=0.05, show_default=True,
              help="drop candidates whose frozen cosine is above the gold's minus this (near-copies, "
                   "unlabelled positives)")
@click.option("--no-margin", is_flag=True, help="keep every candidate")
@click.option("--teacher", default=None,
              help="score gold + candidates with: semantic, bm25, hybrid, cache:PATH (another encoder's cache "
                   "of the same texts) or cross-encoder:NAME")
@click.option("--silver", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="keep candidates with at least this teacher probability as silver pairs")
@click.option("--bm25-weight", type=click.FloatRange(min=0), default=0.3, show_default=True, help="BM25's weight in hybrid scores")
@click.option("--name", default=None, help="name of the mined set (default: the method)")
@click.option("--overwrite", is_flag=True, help="replace a set of that name mined with other settings")
@click.option("--quiet", is_flag=True)
def mine(cache_file, method, k, margin, no_margin, teacher, silver, bm25_weight, name, overwrite, quiet):
    """Mine hard negatives (and teacher scores, silver pairs) and store them in the cache.

    Train on them with: projhead train CACHE --mined NAME --hard-negatives 1 [--silver]
    [--loss distill]."""
    from .mine import mine as run

    if quiet and teacher and teacher.startswith("cross-encoder:"):  # the model loader's bars too
        from .encoders import loader_bars

        click.get_current_context().with_resource(loader_bars(shown=False))
    r = run(cache_file, method=method, k=k, margin=None if no_margin else margin, teacher=teacher, silver=silver,
            name=name, bm25_weight=bm25_weight, progress=not quiet, overwrite=overwrite)
    click.echo(f"{cache_file}: mined set {r['name']!r}: {r['negatives_per_query']:.2f} negatives per query "
               f"({r['queries_without_negatives']} queries without), {r['filtered_by_margin']} candidates "
               f"dropped by the margin, {r['silver_pairs']} silver pairs ({r['seconds']:.1f}s)")


@cli.command("eval")
@click.argument("cache_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--head", "head_path", type=click.Path(), default=None, help="head folder (omit: frozen only)")
@click.option("--bm25", is_flag=True, help="add BM25 on the same candidates, and its fusion with the dense systems "
              "(frozen + BM25, head + BM25, reciprocal rank fusion)")
@click.option("--fusion-weight", type=click.FloatRange(0, 1), default=None,
              help="dense share of the fused scores (default: the head's, chosen by projhead train on held-out "
                   f"queries; without one {DEFAULT_WEIGHT})")
@click.option("--fusion-normalisation", type=click.Choice(NORMALISATIONS), default=None,
              help="per-query score normalisation before fusing (default: the head's, else zscore)")
@click.option("--block", type=click.IntRange(min=1), default=500, show_default=True,
              help="queries per block, out-of-N protocol")
@click.option("--corpus-sample", type=click.IntRange(min=0), default=None,
              help="full corpus: rank against the contexts and N corpus rows (seeded sample); 0: contexts alone [all]")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="write the results as JSON")
@click.option("--index", default=None,
              help="full corpus through a FAISS index: a factory string, e.g. Flat (exact), HNSW32, 'IVF1024,Flat'")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF indexes: inverted lists searched per query")
@click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW indexes: search depth")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="write a Markdown report with plots and examples into this folder (needs --head, one cache)")
def evaluate(cache_files, head_path, bm25, fusion_weight, fusion_normalisation, block, corpus_sample, json_out, index,
             nprobe, ef_search, report_dir):
    """Top-k retrieval (out-of-500 blocks and full corpus), frozen encoder beside the head.

    Several caches (the training domain and others) give one table each, then the head's
    change against the frozen encoder on every cache side by side."""
    from .cache import open_cache
    from .corpus import with_corpus
    from .evaluate import bm25_ranks, evaluate_cache, evaluate_streamed, format_changes, format_table, protocols
    from .heads import load_head
    from .turns import dialog_view

    if report_dir and not head_path:
        raise click.UsageError("--report compares a head with its frozen encoder: pass --head")
    if report_dir and len(cache_files) > 1:
        raise click.UsageError("--report describes one cache: pass one CACHE_FILE")
    if not index and (nprobe is not None or ef_search is not None):
        raise click.UsageError("--nprobe and --ef-search set a FAISS index's search: pass --index")
    if not bm25 and (fusion_weight is not None or fusion_normalisation is not None):
        raise click.UsageError("--fusion-weight and --fusion-normalisation set the fusion with BM25: pass --bm25")
    head = load_head(head_path) if head_path else None
    if index and head is not None and head.config.kind == "dialog":
        raise click.UsageError("--index streams the cache's vectors; a dialog head reads its turns section, in "
                               "memory: evaluate it without --index")
    if corpus_sample and not any("corpus" in open_cache(f, load=False).sections for f in cache_files):
        raise click.UsageError(f"--corpus-sample {corpus_sample}: " + (f"{cache_files[0]} has no" if len(cache_files) == 1
                               else "none of the caches has a") + " corpus section (projhead cache --corpus FILE "
                               "adds one)")  # as projhead train: a sample of nothing is refused, not ignored
    spec = eval_fusion(head, fusion_weight, fusion_normalisation, click.echo if bm25 and not index else None)
    search_kw = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}
    if index and not search_kw and ("IVF" in index or "HNSW" in index):  # FAISS's own defaults: few lists, a short list
        click.echo(f"index {index}: FAISS's default search, " + ("1 inverted list a query (--nprobe N searches more)"
                   if "IVF" in index else "efSearch 16 (--ef-search N searches further)")
                   + ": recall is below an exact search's; the Flat index is exact")
    every, distractors = {}, {}
    for cache_file in cache_files:
        if index:  # streamed from the file: memory is the index and one chunk
            results, ranks = evaluate_streamed(cache_file, head=head, index=index, block=block, corpus=corpus_sample,
                                               **search_kw), None
            c = open_cache(cache_file, load=bm25 or bool(report_dir))  # BM25 and the report need the texts
            c = with_corpus(c, corpus_sample) if bm25 or report_dir else c
            c.attrs["n_distractors"] = results.pop("distractors")
            if bm25:
                ranks = {"bm25": bm25_ranks(c, block, settings=spec.bm25)}  # the report's BM25 curve too
                results["bm25"] = protocols(ranks["bm25"], block)
                click.echo("fused rows need every context's scores: evaluate without --index to see them")
        else:
            if head is not None and head.config.kind == "dialog":  # turns side by side; no corpus rows
                c = dialog_view(open_cache(cache_file))
            else:
                c = with_corpus(open_cache(cache_file), corpus_sample)
            results, ranks = evaluate_cache(c, head=head, bm25=bm25, block=block, return_ranks=True, fusion=spec)
        every[cache_file], distractors[cache_file] = results, int(c.attrs.get("n_distractors", 0))
        click.echo(f"{cache_file}: {c.attrs['n_queries']} queries, {c.attrs['n_contexts']} contexts + "
                   f"{distractors[cache_file]} corpus texts (distractors, full corpus only), "
                   f"encoder {c.encoder}" + (f", head {head_path}" if head_path else ""))
        click.echo(format_table(results))
    if head is not None and len(cache_files) > 1:
        click.echo("head - frozen, points:")
        click.echo(format_changes(every))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        payload = ({"cache": cache_files[0], "head": head_path, "distractors": distractors[cache_files[0]],
                    "results": every[cache_files[0]]} if len(cache_files) == 1
                   else {"head": head_path, "caches": every, "distractors": distractors})
        Path(json_out).write_text(json.dumps(payload, indent=1))
    if report_dir:
        from .report import write_report

        click.echo(f"report: {write_report(c, head, report_dir, results, head_path=head_path, ranks=ranks, fusion=spec, index=index)}")


@cli.command()
@click.argument("head_path", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["sentence-transformers", "onnx"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="folder to write")
@click.option("--quantize", is_flag=True, help="onnx: also write int8 copies and report their cosine to float32")
def export(head_path, fmt, out, quantize):
    """Export a head: a sentence-transformers folder (encoder + head, encode_query /
    encode_document) or ONNX files of the head alone (vectors in, vectors out)."""
    from .export import export_onnx, export_sentence_transformers
    from .heads import load_head

    if fmt == "onnx":
        r = export_onnx(head_path, out, quantize=quantize)
        for role, t in r["towers"].items():
            q = t.get("int8")
            click.echo(f"{out}/{t['file']}: max |onnxruntime - torch| {t['max_abs_diff_vs_torch']:.1e}"
                       + (f"; {q['file']}: mean cosine to float32 {q['cosine_to_float32_mean']:.5f}" if q else ""))
    else:
        r = export_sentence_transformers(head_path, out)
        how = f"SentenceTransformer({out!r}" + (", trust_remote_code=True) loads it (projhead installed: its gate)"
                                                if load_head(head_path).gate is not None else ") loads it")
        click.echo(f"{out}: {how}; max |difference to projhead| query "
                   f"{r['max_abs_diff_query']:.1e}, context {r['max_abs_diff_context']:.1e}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting."""
    try:
        cli.main(args=argv, prog_name="projhead", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except USER_ERRORS as e:
        click.echo(f"error: {e}", err=True)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
