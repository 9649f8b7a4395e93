"""Where a bench's results go: ``OUT.json`` (its figures and the machine that measured them) and
``OUT.md`` (its table, also printed)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    return {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform()}


def write_results(out, result: dict, md: str) -> None:
    """``result`` with ``machine()`` as ``OUT.json``, ``md`` as ``OUT.md`` and on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**result, "machine": machine()}, indent=1, default=str))
    out.with_suffix(".md").write_text(md)
    print(md)
