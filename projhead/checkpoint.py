"""Checkpoints of a training run: one safetensors file, replaced atomically, no pickle.

Usage::

    from projhead.checkpoint import load_checkpoint, save_checkpoint
    save_checkpoint(path, job, state, tensors)   # tensors: head, loss, optimiser, RNG
    state, tensors = load_checkpoint(path, job)  # None when absent; refused for another job

``job`` is what must match for a run to resume (the settings and the cache); ``state`` is
JSON (epoch, best score, log).
"""
from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import torch

from .config import HeadConfig, TrainConfig, TrainError
from .files import atomic_path, foreign_files, listed


CHECKPOINT_NAME = "checkpoint.safetensors"


def save_checkpoint(path: Path, job: dict, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """One file, replaced atomically: tensors (head, loss, optimiser, best epoch, torch RNG)
    in safetensors, everything else as JSON in its metadata. No pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp),
                      metadata={"job": json.dumps(job, default=str), "state": json.dumps(state, default=str)})
    except (OSError, SafetensorError) as e:  # safetensors' own error for a full disk
        raise TrainError(f"{path}: cannot write the checkpoint ({getattr(e, 'strerror', None) or e}); "
                         "the previous checkpoint, if any, is kept") from e


def load_checkpoint(path: Path, job: dict) -> tuple[dict, dict] | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        old_job, state = json.loads(meta["job"]), json.loads(meta["state"])
    except Exception as e:  # a damaged checkpoint: say so, do not guess
        raise TrainError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from None
    for part, settings in (("train", TrainConfig), ("head", HeadConfig)):  # settings added since: at their defaults
        if isinstance(old_job.get(part), dict):
            for f in fields(settings):
                if f.name not in old_job[part] and (f.default is not MISSING or f.default_factory is not MISSING):
                    default = f.default if f.default is not MISSING else f.default_factory()
                    old_job[part][f.name] = json.loads(json.dumps(default, default=str))
    if old_job != json.loads(json.dumps(job, default=str)):
        diff = [k for k in job if old_job.get(k) != json.loads(json.dumps(job[k], default=str))]
        raise TrainError(f"{path}: checkpoint of a run with other settings ({', '.join(diff)}); "
                         "delete it or pass restart=True (--restart) to start over")
    return state, tensors


def optimizer_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt, groups: list, tensors: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})




def rng_state(device) -> dict:
    out = {"rng.torch": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        out["rng.cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return out


def set_rng_state(tensors: dict, device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(tensors["rng.cuda"], torch.device(device))


def head_folder(out) -> bool:
    """Whether folder ``out`` holds what training writes (a head's config.json, or the
    checkpoint of a run not finished yet): training may replace it."""
    out = Path(out)
    if (out / CHECKPOINT_NAME).is_file():
        return True
    try:
        return "head" in json.loads((out / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_out(out) -> None:
    """Refuse, before anything is trained, an ``out`` that holds files other than a head's."""
    if out is not None and (names := foreign_files(out, head_folder)):
        raise TrainError(f"{out}: holds files that are not a projhead head ({listed(names)}), which saving a head there "
                         "would replace: give --out a new or empty folder")
