"""Whether a head or run a bench saved earlier may stand in for training it again.

A bench that keeps its heads (``--work``, ``--heads-dir``) reuses one only when the projhead
package that trained it is the package running now: each saved head or run carries the git tree
id of ``projhead/`` it was trained with (``stamp``), and ``current`` compares it with the
checkout's. A head from other code is trained again (and overwritten), so a bench command run
twice after a change to the library never mixes the two versions' figures. Outside a git
checkout, or with uncommitted changes under ``projhead/``, nothing is reused.
"""
from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from pathlib import Path

STAMP = "bench_code.json"  # in a head folder, beside config.json
ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def code_key() -> str | None:
    """The git tree id of ``projhead/`` at HEAD, or None when it does not name the code running
    (no git, not a checkout, or uncommitted changes under ``projhead/``)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        if git("status", "--porcelain", "--", "projhead"):
            return None
        return git("rev-parse", "HEAD:projhead") or None
    except (OSError, subprocess.CalledProcessError):
        return None


def current(key: str | None, what: Path) -> bool:
    """Whether ``key`` (a saved head's or run's stamp) names the code running now; says which
    way it went for ``what``."""
    now = code_key()
    if now is not None and key == now:
        print(f"reusing {what} (trained by this version of projhead)", flush=True)
        return True
    why = ("uncommitted changes under projhead/ or no git checkout" if now is None
           else "no stamp" if key is None else "trained by another version of projhead")
    print(f"training {what} again ({why})", flush=True)
    return False


def head_reusable(folder: Path, **settings) -> bool:
    """A whole saved head in ``folder`` (config.json and train_log.json) trained by this code,
    with the bench settings given (as ``stamp`` recorded them; none given: the stamp's must be
    none either)."""
    folder = Path(folder)
    if not ((folder / "config.json").is_file() and (folder / "train_log.json").is_file()):
        return False
    try:
        saved = json.loads((folder / STAMP).read_text())
        key, was = saved.get("projhead_tree"), saved.get("settings", {})
    except (OSError, ValueError, AttributeError):
        key, was = None, {}
    if was != settings:
        print(f"training {folder} again (saved with {was}, asked for {settings})", flush=True)
        return False
    return current(key, folder)


def stamp(folder: Path, **settings) -> None:
    """Record in ``folder`` (a head just saved there) the code that trained it, and the bench
    settings that differ from ``projhead train``'s defaults."""
    (Path(folder) / STAMP).write_text(json.dumps({"projhead_tree": code_key(), "settings": settings}) + "\n")


code_key()  # now, as the bench starts: a commit made while it trains must not name what trained it
