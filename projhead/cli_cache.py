"""``projhead cache`` and ``projhead info``: the arguments of encoding a dataset into a cache
and of describing one; the work is in ``cache_build``, ``cache_import``, ``turns`` and
``distributed``. Registered on the ``projhead`` group by ``cli``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .cache import cache_name
from .data import DATASETS, SPLITS, DataError
from .encoders import DEFAULT_ENCODER, PRECISIONS


@click.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="squad-v1.1", show_default=True)
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True,
              help="QuAC also val-train / val-test: its validation dialogs split by dialog (every 5th to val-test)")
@click.option("--granularity", type=click.Choice(["sentence", "paragraph"]), default="sentence", show_default=True,
              help="context unit: the sentence holding the answer, or the whole paragraph")
@click.option("--data", type=click.Path(), default=None,
              help="data file or folder (default: $PROJHEAD_DATA, else the official download)")
@click.option("--quac-history", default="0", show_default=True,
              help="QuAC: earlier dialogue turns (question + answer) prepended to each question: 0, 1, 2, ... or all")
@click.option("--turns", type=click.IntRange(min=0), default=None,
              help="QuAC: also store each question's K earlier turns (1 did best on QuAC) and the dialog so far (and each sentence's "
                   "neighbours and section) as vectors of their own, the turns section a dialog head reads")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True,
              help="st:NAME_OR_PATH, openclip:ARCH[/PRETRAINED_TAG_OR_FILE], or vectors:NAME for vectors you "
                   "already have (with --vectors)")
@click.option("--vectors", "vector_files", multiple=True, type=click.Path(dir_okay=False),
              help="vectors:NAME: file(s) of existing vectors keyed by text or query id (.parquet, .npy + .jsonl, "
                   ".h5); repeatable")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="output HDF5 file (default: cache/DATASET-SPLIT-GRANULARITY-ENCODER.h5)")
@click.option("--corpus", "corpus_file", type=click.Path(dir_okay=False), default=None,
              help="texts without queries, the rest of your index (.jsonl 'text', .txt, .parquet 'text'; vectors:NAME: "
                   "vectors keyed by text): ranked beside the contexts in selection and eval; added to a finished cache")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="how the vectors are stored")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="the encoder's arithmetic: auto is bf16 on CPUs with native bf16 (AVX-512 BF16, AMX) and on GPUs "
                   "that have it, fp16 on other GPUs, fp32 elsewhere; vectors are returned in float32 either way")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="texts per resumable shard: the most work an interruption can lose")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)")
@click.option("--no-normalize", is_flag=True, help="store raw vectors instead of L2-normalised ones")
@click.option("--query-prefix", default="", help="text put before every query (e.g. 'query: ' for E5)")
@click.option("--context-prefix", default="", help="text put before every context (e.g. 'passage: ')")
@click.option("--ray", "ray_address", default=None,
              help="encode on Ray: 'local' (a cluster on this machine) or a cluster address; shards become HDF5 "
                   "files joined by virtual datasets")
@click.option("--ray-actors", type=click.IntRange(min=1), default=2, show_default=True, help="--ray: encoder actors (one model each)")
@click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0), default=0, show_default=True, help="--ray: GPUs per actor")
@click.option("--overwrite", is_flag=True, help="replace an existing cache or partial run made with other settings")
@click.option("--quiet", is_flag=True, help="no progress bars (the model loader's too)")
def cache(dataset, split, granularity, data, quac_history, turns, encoder, vector_files, out, corpus_file, dtype,
          precision, batch_size, shard_size, device, no_normalize, query_prefix, context_prefix, ray_address, ray_actors,
          ray_gpus_per_actor, overwrite, quiet):
    """Encode questions and contexts once with a frozen encoder into an HDF5 cache.

    Resumable: an interrupted run continues where it stopped. A finished cache with the same
    settings is left alone; one made with other settings is never overwritten silently."""
    from .cache import FORMAT_VERSION, build_cache, cache_jsonl_vectors, open_cache
    from .corpus import CorpusFile
    from .data import JSONL_META, iter_jsonl, load_pairs
    from .encoders import get_encoder, loader_bars

    if quiet and not encoder.startswith("vectors:"):  # the model loader's bars too, for this command only
        click.get_current_context().with_resource(loader_bars(shown=False))

    if dataset != "quac" and (quac_history != "0" or turns is not None):
        raise click.UsageError("--quac-history and --turns are QuAC's dialog turns: they go with --dataset quac")
    if quac_history != "0" and turns is not None:  # a dialog head's first slot is the question alone
        raise click.UsageError("--quac-history and --turns: one or the other (--turns keeps the question alone as "
                               "the query and its earlier turns beside it, for a dialog head)")
    corpus = CorpusFile(corpus_file, vectors=encoder.startswith("vectors:")) if corpus_file else None
    vector_files = (*vector_files, corpus_file) if corpus and corpus.vectors else vector_files  # looked up too

    # your own vectors for a JSONL of pairs: streamed from the files, the texts are never all in memory
    streamed = dataset == "jsonl" and encoder.startswith("vectors:") and not ray_address
    if streamed:
        if data is None:
            raise DataError("dataset 'jsonl' needs a file: pass --data FILE.jsonl")
        pairs, unit = None, JSONL_META["granularity"]
    else:
        pairs = load_pairs(dataset, split, granularity, data=data, quac_history=quac_history)
        unit = pairs.meta.get("granularity", granularity)
        click.echo(f"{pairs.meta.get('source')}: {len(pairs)} queries, {len(pairs.contexts)} distinct contexts "
                   f"({unit})", err=True)
    # history changes every query text: its caches get their own names
    label = f"{dataset}-history{quac_history}" if dataset == "quac" and quac_history != "0" else dataset
    label += f"-turns{turns}" if turns is not None else ""
    out = Path(out) if out else Path("cache") / cache_name(label, split, unit, encoder, data)
    settings = {"normalize": not no_normalize, "device": device, "precision": precision}
    if encoder.startswith("st:"):
        settings.update(query_prefix=query_prefix, context_prefix=context_prefix)
    if encoder.startswith("vectors:"):
        if precision not in ("auto", "fp32"):
            raise click.UsageError("--precision sets the encoder's arithmetic; imported vectors are not encoded")
        settings = {"normalize": not no_normalize, "files": vector_files,
                    "ids": (lambda: {qid: q for q, _, qid, _ in iter_jsonl(Path(data))}) if streamed
                    else (lambda: dict(zip(pairs.query_ids, pairs.queries)))}
    elif vector_files:
        raise click.UsageError("--vectors goes with --encoder vectors:NAME")
    if ray_address:
        from .distributed import build_cache_ray

        if encoder.startswith("vectors:") or corpus:
            raise click.UsageError("--ray encodes pairs: not with imported vectors (no encoding) or --corpus")
        res = build_cache_ray(pairs, encoder, out, settings=settings, address=ray_address, actors=ray_actors,
                              gpus_per_actor=ray_gpus_per_actor, dtype=dtype, batch_size=batch_size,
                              shard_size=shard_size, overwrite=overwrite, progress=not quiet)
        dim = open_cache(out, load=False).dim
    else:
        enc = get_encoder(encoder, **settings)
        try:
            if streamed:
                res = cache_jsonl_vectors(data, enc, out, dtype=dtype, overwrite=overwrite, corpus=corpus)
            elif turns is not None:
                from .turns import build_with_turns

                if corpus is not None:
                    raise click.UsageError("--turns and --corpus: not together (a dialog head ranks sentences only)")
                res = build_with_turns(pairs, enc, out, turns, dtype=dtype, batch_size=batch_size,
                                       shard_size=shard_size, overwrite=overwrite, progress=not quiet)
            else:
                res = build_cache(pairs, enc, out, dtype=dtype, batch_size=batch_size, shard_size=shard_size,
                                  overwrite=overwrite, progress=not quiet, corpus=corpus)
        finally:
            if hasattr(enc, "close"):
                enc.close()  # vector files opened by vectors:NAME
        dim = enc.dim
    if res.status == "already complete":
        version = int(open_cache(out, load=False).attrs["format_version"])
        older = (f" (cache format {version}, whose texts and attributes HDF5 cannot checksum: `projhead upgrade "
                 f"{out}` rewrites it in format {FORMAT_VERSION} without encoding anything)") if version == 2 else ""
        click.echo(f"{out}: already complete with these settings; nothing to do{older}")
    else:
        done = open_cache(out, load=False)
        ran = done.encoder_info["settings"].get("precision")
        said = f", corpus {done.section_attrs('corpus', 'corpus')['stats_json']}" if "corpus" in done.sections else ""
        turns = f"turns section ({res.turns['texts']} turn texts in {res.turns['slots']} slots)" if res.turns else ""
        said += f", and its {turns}" if turns and res.status == "written" else ""
        did = {"written": "wrote", "turns added": f"added the {turns} to its"}.get(res.status, "added the corpus, now")
        click.echo(f"{out}: {did} {done.attrs['n_queries']} query and {done.attrs['n_contexts']} context vectors"
                   f"{said} (dim {dim}, {dtype}" + (f", encoded in {ran}" if ran else "") + f") in {res.seconds:.1f}s")


@click.command()
@click.argument("cache_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def info(cache_file, as_json):
    """Print what is in a cache: encoder, settings, sizes, fingerprint, versions, sections."""
    from .cache import open_cache
    from .cache_reader import info_lines

    c = open_cache(cache_file, load=False)
    d = c.describe()
    if as_json:
        click.echo(json.dumps(d, indent=1, default=str))
        return
    click.echo("\n".join(info_lines(cache_file, d)))


@click.command()
@click.argument("cache_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def upgrade(cache_files):
    """Rewrite caches of an older format in today's (texts and attributes checksummed), without
    encoding anything; a cache of today's format is left as it is."""
    from .cache import FORMAT_VERSION, upgrade_cache

    for path in cache_files:
        was = upgrade_cache(path)
        click.echo(f"{path}: " + (f"format {was} rewritten in format {FORMAT_VERSION}" if was < FORMAT_VERSION
                                  else f"already format {FORMAT_VERSION}; nothing to do"))
