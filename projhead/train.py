"""Train a head on a cache: the encoder never runs, so this takes seconds to minutes on a CPU.

Usage::

    from projhead.train import TrainConfig, train_head
    from projhead.heads import HeadConfig
    head, log = train_head("cache/squad-v1.1-train-sentence-all-MiniLM-L6-v2.h5",
                           HeadConfig(kind="residual"), TrainConfig(epochs=5), out="heads/minilm")

The loop, nanoGPT-style: hold out a dev split (whole groups, i.e. articles, so dev contexts
are unseen), score the frozen vectors on it, then per epoch: shuffle, step over batches of
(query, gold context) pairs with AdamW and warm-up + cosine decay, clamp the temperature,
rank the dev queries against every context of the cache. The epoch kept is the latest whose
``select_metric`` is within noise of the best epoch's and clearly above the frozen vectors'
(``within_noise``: paired bootstraps over the dev queries), else the best: the schedule runs
on while the metric only wobbles, and stops after ``patience`` epochs that cannot be kept.
If no epoch beats the frozen vectors, or the gain is within noise (``decision``), the saved
head is the identity (passthrough), so a head never ships worse than the encoder it sits
on, as measured on the dev split.

Heads should stay close to the frozen encoder unless the data says otherwise: identity
initialisation, early stopping (``patience``), interpolation toward the frozen encoder
(``alpha``) and ``anchor_weight`` (a penalty on the mean squared distance between head
output and frozen vector) all pull that way.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .cache_reader import Cache, open_cache
from .corpus import corpus_for_training
from .metrics import PER_QUERY, not_above_zero, paired_bootstrap, rank_metrics, self_matches
from .config import ALPHA, DECISIONS, SELECT_METRICS, SMALL, TrainConfig, TrainError  # noqa: F401 (re-exported)
from .batches import (MIN_GROUPS, DevSet, MemorySource, dev_fraction, epoch_order,  # noqa: F401
                      held_out, joined_by_gold, make_batch, split_by_group, split_groups, spread,
                      within_documents)
from .stream import StreamSource
from .checkpoint import (CHECKPOINT_NAME, check_out, load_checkpoint, optimizer_tensors, restore_optimizer, rng_state,
                         save_checkpoint, set_rng_state)
from .heads import Head, HeadConfig
from .turns import dialog_view
from .loss_config import has_temperature, loss_settings, make_loss  # noqa: F401 (re-exported)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(modules, weight_decay: float) -> list[dict]:
    """AdamW groups as open_clip makes them: weight matrices decay; scalars (the
    temperature, SigLIP's bias), biases and norm weights (fewer than 2 dimensions) do not,
    since decay would pull the temperature toward exp(0) = 1 and biases toward 0."""
    decay, keep = [], []
    seen = set()
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if p.ndim >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def setup(hcfg: HeadConfig, cfg: TrainConfig, device: str | torch.device | None = None):
    """Head, objective and optimiser on ``device``. The objective attaches to the head
    first (BYOL builds its target network and predictor there), then everything moves, so
    no part is left behind on the CPU."""
    head = Head(hcfg)
    loss_fn = make_loss(cfg, hcfg)
    if hasattr(loss_fn, "attach"):
        loss_fn.attach(head)  # BYOL: target network and predictor
    device = device or cfg.device
    head.to(device)
    loss_fn.to(device)
    opt = torch.optim.AdamW(param_groups([head, loss_fn], cfg.weight_decay), lr=cfg.lr)
    return head, loss_fn, opt


class Canary:
    """A cache of another domain, scored with every head beside the frozen encoder: every
    query against every context, nDCG@10 (each query's own text left out)."""

    def __init__(self, cache: Cache | str | os.PathLike):
        if not isinstance(cache, Cache):
            cache = open_cache(cache)
        self.cache = cache
        self.name = Path(cache.path).name
        self.dev = DevSet(cache.queries, cache.contexts, cache.q2c,
                          self_matches(cache.query_texts, cache.context_texts))
        self.frozen = float(PER_QUERY["ndcg10"](self.dev.ranks(None)).mean())

    def score(self, head: Head) -> float:
        return float(PER_QUERY["ndcg10"](self.dev.ranks(head)).mean())


def _check_dialog(cfg: TrainConfig, hcfg: HeadConfig) -> None:
    if hcfg.kind == "dialog" and (cfg.anchor_weight or cfg.canaries or cfg.stream):
        raise TrainError("a dialog head trains in memory on its cache's turns, without anchor_weight (its rows are the "
                         "turns side by side) or canaries (caches without turns)")


def _check(cfg: TrainConfig, hcfg: HeadConfig, cache) -> None:
    _check_dialog(cfg, hcfg)
    if cfg.anchor_weight and hcfg.output_dim != hcfg.in_dim:
        raise TrainError(f"anchor_weight pulls head outputs toward the frozen vectors, so out_dim "
                         f"({hcfg.output_dim}) must equal the encoder's dimension ({hcfg.in_dim})")
    if (cfg.hard_negatives or cfg.silver or cfg.loss == "distill") and not cfg.mined:
        raise TrainError("hard negatives, silver pairs and the distill loss need a mined set: "
                         f"run `projhead mine {cache.path}`, then pass --mined NAME")
    if cfg.mined and not (cfg.hard_negatives or cfg.silver):
        raise TrainError(f"--mined {cfg.mined}: the set is used through --hard-negatives N (with --loss distill, its "
                         "teacher scores too) or --silver; alone it would change nothing")
    if cfg.loss == "byol" and cfg.hard_negatives:
        raise TrainError("the byol loss uses no negatives: drop --hard-negatives (or use a contrastive loss)")


def checked_canaries(cfg: TrainConfig, hcfg: HeadConfig) -> list:
    """The ``Canary`` of each of ``cfg.canaries``, each cache checked against a head of ``hcfg``
    (a dialog head takes none: that reason, before any canary is judged by its layout)."""
    _check_dialog(cfg, hcfg)
    canaries = [Canary(c) for c in cfg.canaries]
    for c in canaries:
        Head(hcfg).check_cache(c.cache)
    return canaries


def fit(cache: Cache, hcfg: HeadConfig, cfg: TrainConfig, rows=None, ckpt: Path | None = None,
        job: dict | None = None, progress: bool = True, canaries=(), keep_later: bool = True,
        keep_last: bool = False) -> dict:
    """One training run: epochs over the training pairs, each scored on the dev queries.
    Returns the head with its kept epoch's weights (``within_noise``; step-0 weights when
    no epoch beat the frozen encoder), the log, and every epoch's per-query dev ranks
    (``epoch_ranks``, epoch 0 = frozen). Without dev queries the last epoch is kept.
    ``keep_later=False``: the best epoch, no within-noise checks (for callers that choose the
    epoch from ``epoch_ranks`` themselves, as model selection's folds do); ``keep_last``: the last
    epoch run, dev queries or not (a fold run again to a chosen epoch). A non-finite loss ends
    the run at the last good epoch, said in the log (``stopped``)."""
    _check(cfg, hcfg, cache)
    t_start = time.perf_counter()
    source = StreamSource(cache, cfg) if cfg.stream else MemorySource(cache, cfg, rows)
    cfg = source.cfg  # sized to the data
    threads = torch.get_num_threads()
    # small batches are tiny matrix products: one thread is as fast, and far faster when
    # other processes share the cores (threads then wait on each other at every op)
    torch.set_num_threads(cfg.threads or (1 if cfg.batch_size <= 512 else threads))
    try:
        return _fit(source, cfg, hcfg, ckpt, job, progress, canaries, t_start, keep_later, keep_last)
    finally:
        torch.set_num_threads(threads)
        if isinstance(source, StreamSource):
            source.close()  # the streamed file, however the run ended


def _fit(source, cfg: TrainConfig, hcfg: HeadConfig, ckpt, job, progress, canaries, t_start, keep_later,
         keep_last) -> dict:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = source.dev
    head, loss_fn, opt = setup(hcfg, cfg)
    init_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}

    total_steps = source.steps_per_epoch * cfg.epochs
    has_dev = len(dev) > 0
    frozen_ranks = dev.ranks(None) if has_dev else np.zeros(0, np.int64)
    frozen = rank_metrics(frozen_ranks) if has_dev else {}
    log = {"epochs": [], "frozen_dev": frozen, "n_train": source.n_train, "n_dev": int(len(dev)),
           "n_silver": source.n_silver, "frozen_spread": spread(source.spread_sample),
           "settings": {"batch_size": cfg.batch_size, "epochs": cfg.epochs, "patience": cfg.patience,
                        "steps_per_epoch": source.steps_per_epoch},
           "canaries_frozen": {c.name: c.frozen for c in canaries}}
    epoch_ranks = {0: frozen_ranks}
    # best: the highest dev metric so far; kept: the one returned, the latest epoch within
    # noise of the best and clearly above the frozen vectors (the best itself if none is)
    best = {"score": frozen.get(cfg.select_metric, -math.inf), "epoch": 0, "state": None, "metrics": frozen}
    kept = best
    step, bad_epochs, first_epoch = 0, 0, 1
    resumed = load_checkpoint(ckpt, job) if ckpt is not None else None
    if resumed is not None:
        state, tensors = resumed
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        loss_fn.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
        restore_optimizer(opt, state["param_groups"], tensors)
        set_rng_state(tensors, cfg.device)
        rng.bit_generator.state = state["numpy_rng"]
        step, bad_epochs, first_epoch, log = state["step"], state["bad_epochs"], state["epoch"] + 1, state["log"]
        best = dict(state["best"], state={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None)
        kept = (dict(state["kept"], state={k[5:]: v for k, v in tensors.items() if k.startswith("kept.")} or None)
                if "kept" in state else best)  # a checkpoint written before epochs were kept within noise
        epoch_ranks.update({int(k[6:]): v.numpy() for k, v in tensors.items() if k.startswith("ranks.")})
        if progress:
            print(f"resuming from {ckpt} after epoch {state['epoch']}", flush=True)
    last_epoch = min(cfg.epochs, cfg.stop_epoch or cfg.epochs)
    bar = tqdm(total=source.steps_per_epoch * last_epoch, initial=step, desc="training", unit="step",
               disable=not progress)
    for epoch in range(first_epoch, last_epoch + 1):
        if bad_epochs >= cfg.patience or log.get("stopped"):
            break  # a resumed run that had already stopped
        t0 = time.perf_counter()
        head.train()
        losses = []
        for batch in source.epoch(rng):
            loss, q, c = loss_fn.batch_loss(head, batch)
            if cfg.anchor_weight:
                # pull outputs toward the frozen vectors: stay close unless the data says otherwise
                loss = loss + cfg.anchor_weight * ((q - batch.q).pow(2).sum(1).mean()
                                                   + (c - batch.c).pow(2).sum(1).mean()) / 2
            if not torch.isfinite(loss.detach()):
                log["stopped"] = (f"non-finite training loss at epoch {epoch}, step {step + 1} (lr {cfg.lr} may be "
                                  f"too high); kept epoch {kept['epoch']}, the one kept before it")
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total_steps, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_fn.after_step(step / total_steps)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", T=f"{loss_fn.temperature:.4f}")
        if log.get("stopped"):
            bar.write(f"stopped: {log['stopped']}") if progress else None
            break
        head.eval()
        cpu_head = head.cpu()
        r = dev.ranks(cpu_head) if has_dev else np.zeros(0, np.int64)
        metrics = rank_metrics(r) if has_dev else {}
        if has_dev and not all(math.isfinite(v) for v in metrics.values()):
            log["stopped"] = f"non-finite dev metric at epoch {epoch}; kept epoch {kept['epoch']}"
            break
        epoch_ranks[epoch] = r
        out_spread = spread(cpu_head.encode_queries(source.spread_sample))
        canary_scores = {c.name: c.score(cpu_head) for c in canaries}
        head.to(cfg.device)
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)),  # no temperature (byol's NaN): JSON null
                 "temperature": t if math.isfinite(t := loss_fn.temperature) else None,
                 "lr": _lr_at(step - 1, total_steps, cfg), "dev": metrics, "spread": out_spread,
                 "canaries": canary_scores, "seconds": time.perf_counter() - t0}
        log["epochs"].append(entry)
        score = metrics[cfg.select_metric] if has_dev and not keep_last else None  # None: the last epoch is kept
        if progress:
            bar.write(f"epoch {epoch}: loss {entry['train_loss']:.4f}  T {entry['temperature']:.4f}  "
                      + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"  spread {out_spread:.3f}"
                      + "".join(f"  canary {k} nDCG@10 {v:.4f} (frozen {log['canaries_frozen'][k]:.4f})"
                                for k, v in canary_scores.items())
                      + f"  (frozen {cfg.select_metric} {frozen.get(cfg.select_metric, float('nan')):.4f})")
        if score is None or score > best["score"]:
            best = kept = {"score": score, "epoch": epoch, "metrics": metrics,
                           "state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}
            bad_epochs = 0
        elif (keep_later and has_dev and best["epoch"] > 0
              and within_noise(r, epoch_ranks[best["epoch"]], r0=frozen_ranks, cfg=cfg)):
            kept = {"score": score, "epoch": epoch, "metrics": metrics,
                    "state": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}
        else:
            bad_epochs += 1
        if ckpt is not None:
            opt_tensors, opt_json = optimizer_tensors(opt)
            tensors = {**{f"head.{k}": v for k, v in head.state_dict().items()},
                       **{f"loss.{k}": v for k, v in loss_fn.state_dict().items()},
                       **{f"best.{k}": v for k, v in (best["state"] or {}).items()},
                       **{f"kept.{k}": v for k, v in (kept["state"] or {}).items()},
                       **{f"ranks.{e}": torch.from_numpy(np.asarray(v, np.int64)) for e, v in epoch_ranks.items()},
                       **opt_tensors, **rng_state(cfg.device)}
            save_checkpoint(ckpt, job, {"epoch": epoch, "step": step, "bad_epochs": bad_epochs, "log": log,
                                         "numpy_rng": rng.bit_generator.state, **opt_json,
                                         "best": {k: v for k, v in best.items() if k != "state"},
                                         "kept": {k: v for k, v in kept.items() if k != "state"}}, tensors)
        if bad_epochs >= cfg.patience:
            break
    bar.close()
    head = head.cpu()
    # no epoch beat the frozen vectors: the step-0 weights (identity for identity-initialised heads)
    head.load_state_dict(kept["state"] if kept["state"] is not None else init_state)
    head.eval()
    log.update(best_epoch=kept["epoch"], peak_epoch=best["epoch"], seconds=time.perf_counter() - t_start)
    return {"head": head, "log": log, "best": kept, "epoch_ranks": epoch_ranks, "frozen": frozen, "cfg": cfg,
            "dev": dev}


def within_noise(ranks: np.ndarray, best_ranks: np.ndarray, r0: np.ndarray, cfg: TrainConfig) -> bool:
    """May a later epoch be kept over the best one? Only if its dev metric is below the best's
    by no more than noise (the 95% paired-bootstrap interval of the difference reaches 0) and
    still clearly above the frozen encoder's (``r0``; that interval above 0): the run has
    trained longer, the held-out queries cannot tell it from the best, and they say it helps.
    On a few hundred queries most epochs are within noise of each other, but not clearly
    better than the frozen encoder, so a small run keeps its best epoch, the least drift."""
    f = PER_QUERY[cfg.select_metric]
    now = f(ranks)
    return (paired_bootstrap(now, f(best_ranks), seed=cfg.seed)["high"] >= 0
            and paired_bootstrap(now, f(r0), seed=cfg.seed)["low"] > 0)


def finish(head: Head, cfg: TrainConfig, dev: DevSet | None, frozen_ranks: np.ndarray | None, canaries=(),
           log: dict | None = None, ranks_now: np.ndarray | None = None, narrow: str | None = None) -> dict:
    """After selection: interpolate toward the frozen encoder (``cfg.alpha``, default
    ``ALPHA`` for heads that start at the frozen encoder), shrink
    further while a canary loses more than ``canary_tolerance``, then decide on the dev
    queries whether the head replaces the identity (``cfg.decision``). Returns what was
    decided; the head is changed in place (``passthrough`` when the identity is kept).
    ``narrow``: why the held-out queries cannot speak for other documents (``within_documents``);
    the bootstrap decision then keeps the identity."""
    log = log if log is not None else {}
    trained = {k: v.clone() for k, v in head.state_dict().items()}
    alpha = cfg.alpha if cfg.alpha is not None else (ALPHA if head.can_interpolate() else 1.0)
    alphas = [alpha] + [a for a in (0.75, 0.5, 0.25) if a < alpha]  # shrunk further only for canaries
    chosen, canary_now = None, {}
    for a in alphas:
        head.load_state_dict(trained)
        if a < 1.0:
            if not head.can_interpolate():
                break  # a randomly initialised head has no frozen end to move toward
            head.interpolate(a)
        canary_now = {c.name: c.score(head) for c in canaries}
        if all(c.frozen - canary_now[c.name] <= cfg.canary_tolerance for c in canaries):
            chosen = a
            break
    decision = {"alpha": chosen, "canaries": {c.name: {"frozen": c.frozen, "head": canary_now.get(c.name)}
                                              for c in canaries}}
    if chosen is not None and chosen != alpha:
        decision["shrunk"] = (f"alpha {alpha:g} shrunk to {chosen:g}: above it a canary lost more than "
                              f"{cfg.canary_tolerance} nDCG@10")
    if chosen is None:
        decision["kept"] = "identity"
        decision["why"] = (f"every interpolation toward the frozen encoder lost more than {cfg.canary_tolerance} "
                           "nDCG@10 on a canary" if canaries else "the head cannot be interpolated")
    elif dev is not None and len(dev):
        r = dev.ranks(head) if (chosen != 1.0 or ranks_now is None) else ranks_now
        f = PER_QUERY[cfg.select_metric]
        boot = paired_bootstrap(f(r), f(frozen_ranks), seed=cfg.seed)
        decision.update(dev_gain=boot, dev_head=rank_metrics(r), measured=f"the dev split, alpha {chosen:g}")
        keep = boot["low"] > 0 if cfg.decision == "bootstrap" else boot["gain"] > 0
        decision["kept"] = "head" if keep and not (cfg.decision == "bootstrap" and narrow) else "identity"
        if not keep:
            decision["why"] = not_above_zero(cfg.select_metric, boot)
        elif decision["kept"] == "identity":
            decision["why"] = narrow
    elif dev is None or cfg.dev_fraction == 0:
        decision["kept"] = "head"  # the caller decided (model selection with folds), or the user: --dev-fraction 0
        if dev is not None:
            decision["why"] = "dev_fraction 0 (--dev-fraction 0) holds out no queries"
    else:
        decision["kept"] = "identity"
        decision["why"] = ("the dev split holds no queries (too few groups, or none drawn for it), so nothing "
                           "shows the head helps on data it was not trained on")
    if decision["kept"] == "identity":
        head.reset_to_identity()
    log["decision"] = decision
    return decision


def train_head(cache: Cache | str | os.PathLike, head_config: HeadConfig | None = None,
               config: TrainConfig | None = None, out: str | os.PathLike | None = None,
               progress: bool = True, restart: bool = False) -> tuple[Head, dict]:
    """Train, select and (if ``out``) save a head; returns it and the training log.

    Settings left as None are sized to the data (``TrainConfig.sized``). The dev queries
    are ranked against every context of the cache; the kept epoch (the latest within noise
    of the best) replaces the identity only if its gain over the frozen encoder is more than
    noise (``decision``), else the head is the identity.

    With ``out``, a checkpoint is written after every epoch to ``out/checkpoint.safetensors``;
    a run stopped in any way resumes from it when called again with the same settings and
    ends with the same head as an uninterrupted run (same seed). ``restart`` discards it."""
    cfg = config or TrainConfig()
    check_out(out)
    if not isinstance(cache, Cache):
        cache = open_cache(cache, load=not cfg.stream)
    hcfg = head_config or HeadConfig()
    if hcfg.kind == "dialog":  # the turn vectors side by side; the cache says how many
        cache = dialog_view(cache)
        hcfg = replace(hcfg, slots=cache.attrs["turn_slots"], sentence_slots=cache.attrs["sentence_slots"])
    elif not cfg.stream:  # dev queries also ranked against the corpus rows (a sample of no corpus refused)
        corpus_for_training(cache, cfg.corpus_sample, cfg.seed)
    # the cache decides the input dimension and the encoder the head will accept
    hcfg = replace(hcfg, in_dim=cache.dim, encoder=cache.encoder,
                   encoder_weights_sha256=cache.encoder_info.get("weights_sha256", ""))
    if cfg.alpha == "auto":
        raise TrainError("alpha 'auto' is chosen by model selection on its choosing queries: give a number to train "
                         "one configuration (--no-auto), or drop --no-auto")
    if cfg.alpha is not None and cfg.alpha < 1 and not Head(hcfg).can_interpolate():
        raise TrainError(f"alpha {cfg.alpha} interpolates toward the frozen encoder, which only identity-initialised "
                         "linear and residual heads of the encoder's dimension contain")
    canaries = checked_canaries(cfg, hcfg)
    ckpt = Path(out) / CHECKPOINT_NAME if out is not None else None
    job = {"train": {**asdict(cfg), "loss_settings": loss_settings(cfg, hcfg)}, "head": asdict(hcfg),
           "cache_fingerprint": cache.attrs["fingerprint"]}
    if ckpt is not None and restart and ckpt.exists():
        ckpt.unlink()
    run = fit(cache, hcfg, cfg, ckpt=ckpt, job=job, progress=progress, canaries=canaries)
    head, log = run["head"], run["log"]
    best = run["best"]
    if best["state"] is None:
        head.reset_to_identity()
        log["decision"] = {"kept": "identity", "why": "no epoch beat the frozen encoder on the dev queries"}
    else:
        finish(head, cfg, run["dev"], run["epoch_ranks"][0], canaries, log, run["epoch_ranks"][best["epoch"]],
               narrow=within_documents(cache) if not cfg.stream else None)
    return save_trained(head, log, cache, run["cfg"], run["frozen"], out, ckpt, extra=_set_bm25(cfg))


def _set_bm25(cfg: TrainConfig) -> dict:
    """A run without selection chooses no fusion; a head trained beside BM25, or given k1 or b,
    is saved with that BM25 (at the dense share it trained for, else the default weight)."""
    if not (cfg.bm25_aware or cfg.bm25_k1 is not None or cfg.bm25_b is not None):
        return {}
    from .fusion import DEFAULT_WEIGHT, FusionSpec
    from .lexical import settings_of

    how = "the BM25 the head was trained beside" if cfg.bm25_aware else "as set"
    return {"fusion": FusionSpec(weight=DEFAULT_WEIGHT if cfg.fusion_weight is None else cfg.fusion_weight,
                                 bm25=settings_of(cfg), chosen={"bm25": how, "weight": "not chosen: "
                                                                 "no model selection"}).to_dict()}


def save_trained(head: Head, log: dict, cache: Cache, cfg: TrainConfig, frozen: dict, out, ckpt=None,
          extra: dict | None = None) -> tuple[Head, dict]:
    """Record what was trained and decided in the head, and write the folder."""
    decision = log.get("decision", {})
    log.update(passthrough=head.config.passthrough)
    head_metrics = decision.get("dev_head") or (log["epochs"][log["best_epoch"] - 1]["dev"]
                                                 if log.get("best_epoch") else frozen)
    training = asdict(cfg)
    trained = getattr(head, "rejected", None)  # a head rebuilt as the identity: the settings it was trained with
    if decision.get("kept") == "head" and decision.get("alpha") is not None:  # as saved: canaries may have shrunk it
        training["alpha"] = decision["alpha"]
    head.info = {
        "training": {**training, "loss_settings": loss_settings(cfg, trained or head.config)},
        **({"rejected_head": asdict(trained)} if trained else {}),
        "encoder_build": cache.encoder_info.get("build", {}),
        "cache": {"path": str(cache.path), "fingerprint": cache.attrs["fingerprint"],
                  "dataset": cache.attrs["dataset"], "split": cache.attrs["split"],
                  "granularity": cache.attrs["granularity"], "n_queries": int(cache.attrs["n_queries"]),
                  "distractors": cache.n_distractors},
        "metrics": {"frozen": frozen, "head": frozen if head.config.passthrough else head_metrics},
        "best_epoch": 0 if head.config.passthrough else log.get("best_epoch", 0),
        "decision": _jsonable(decision), **(extra or {}),
    }
    if out is not None:
        out = Path(out)
        head.save(out)
        (out / "train_log.json").write_text(json.dumps(_jsonable(log), indent=1))
        from .report import plot_log

        plot_log(log, out / "training_curve.png", cfg.select_metric)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()  # the finished head replaces it
    return head, log


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def summary_line(out, head, log: dict, metric: str) -> str:
    """``projhead train``'s last line: what was kept and its held-out score. A kept head's score
    follows the frozen one; the identity's line gives the frozen score alone, and the gain of
    the head it rejected unless the reason already says it."""
    d, m = log.get("decision", {}), head.info["metrics"]
    peak = log.get("peak_epoch", log["best_epoch"])
    later = f" (highest dev metric at epoch {peak}; later ones within noise of it)" if peak != log["best_epoch"] else ""
    verdict = ("kept the frozen encoder (identity head): " + d.get("why", "") if head.config.passthrough
               else d.get("what") or f"kept epoch {log['best_epoch']}{later}")
    gain = d.get("dev_gain")
    said = "" if not gain or d.get("why") == not_above_zero(metric, gain) else (  # a gain said once
        f", {('the rejected head alone: ' if d.get('fused_gain') else 'the rejected head: ') if head.config.passthrough else ''}"
        f"{'held-out ' + gain['of'] + ' ' if gain.get('of') else ''}gain {gain['gain']:+.4f} (95% interval "
        f"{gain['low']:+.4f} to {gain['high']:+.4f})")
    after = "" if head.config.passthrough else (f" -> head {m['head'].get(metric, float('nan')):.4f}"
                                                + (f" ({d['shrunk']})" if d.get("shrunk") else ""))
    fused = " + BM25" if "hybrid" in (log.get("selection") or {}) else ""  # --hybrid: its held-out scores are fused
    scores = f"; dev {metric} frozen{fused} {m['frozen'].get(metric, float('nan')):.4f}{after}{said}"
    if not np.isfinite(m["frozen"].get(metric, float("nan"))):  # no held-out query: no score to give (the
        scores = "" if head.config.passthrough else (  # identity's reason says so already)
            "; not judged by held-out queries: " + (d.get("why") or "there are none"))
    return (f"{out}: {verdict}{scores} "
            f"({log['seconds']:.1f}s); " + ("context vectors change: re-encode the index with the head"
                                            if head.changes_contexts() else
                                            "contexts unchanged: the existing index stays as it is")
            + ("; per-query gate on" if head.gate is not None else ""))
