"""Which objective a training run builds, and with which settings.

Usage::

    from projhead.loss_config import loss_settings, make_loss
    loss_fn = make_loss(cfg, head_config)      # what the trainer builds (losses.LOSSES)
    loss_settings(cfg, head_config)            # the settings config.json records

The trainer's temperature goes only to losses that have one; settings a loss does not take,
and a temperature for a loss without one, are refused, not ignored.
"""
from __future__ import annotations

import inspect

from .config import HeadConfig, TrainConfig, TrainError
from .losses import LOSSES, get_loss


def has_temperature(loss: str) -> bool:
    """Whether the loss registered as ``loss`` takes a softmax temperature (an unknown name: no)."""
    return loss in LOSSES and "init_temperature" in inspect.signature(LOSSES[loss].__init__).parameters


def loss_settings(cfg: TrainConfig, hcfg: HeadConfig | None) -> dict:
    """``cfg.loss_settings`` with the direction of a loss that has one (``symmetric``): unless set,
    a query-side head (not a dialog head) trains the query->context half of the clip loss alone:
    its contexts cannot move, and that half is the ranking it serves. What config.json records."""
    takes = cfg.loss in LOSSES and "symmetric" in inspect.signature(LOSSES[cfg.loss].__init__).parameters
    if not takes or hcfg is None or "symmetric" in cfg.loss_settings:
        return dict(cfg.loss_settings)
    return {**cfg.loss_settings, "symmetric": hcfg.towers != "query" or hcfg.kind == "dialog"}


def make_loss(cfg: TrainConfig, hcfg: HeadConfig | None = None):
    """The objective of ``cfg`` for the head ``hcfg`` (``loss_settings``); the temperature goes
    only to losses that have one (else refused)."""
    try:
        cls = LOSSES[cfg.loss]
    except KeyError:
        raise TrainError(f"unknown loss {cfg.loss!r}; choose from {', '.join(LOSSES)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    kw = loss_settings(cfg, hcfg)
    for key, flag, given in (("init_temperature", "--temperature", cfg.init_temperature is not None),
                             ("learn_temperature", "--fixed-temperature", not cfg.learn_temperature)):
        if given and key in cfg.loss_settings:  # two settings of one thing: the record would contradict itself
            raise TrainError(f"{flag} and --loss-setting {key}: one or the other")
    if has_temperature(cfg.loss):
        kw.setdefault("init_temperature", cfg.init_temperature if cfg.init_temperature is not None else 0.05)
    elif cfg.init_temperature is not None:
        raise TrainError(f"the {cfg.loss} loss has no softmax temperature: drop --temperature "
                         "(siglip: --loss-setting init_scale=...)")
    if cfg.bm25_aware and "bm25_weight" not in accepted:
        raise TrainError(f"BM25-aware training adds BM25 to the logits of the clip loss, not of {cfg.loss}")
    if cfg.bm25_aware and "bm25_weight" not in kw:
        raise TrainError("BM25-aware training needs its BM25 share (lexical.bm25_share; the training sources set it)")
    if "learn_temperature" in accepted:
        kw.setdefault("learn_temperature", cfg.learn_temperature)
    elif not cfg.learn_temperature:
        raise TrainError(f"the {cfg.loss} loss has no temperature to fix: drop --fixed-temperature")
    return get_loss(cfg.loss, **kw)
