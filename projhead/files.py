"""Writing a file so that readers find the old file or the whole new one, never half of one.

Usage::

    from projhead.files import atomic_path, write_atomic
    write_atomic("cache/x.json", b"...")             # bytes or text
    with atomic_path("heads/h/model.safetensors") as tmp:
        save_file(tensors, str(tmp))                 # any writer that takes a path

The work goes to a temporary name beside the target (same folder, so the rename cannot
cross file systems); when it succeeds the file is synced to disk and renamed over the target
in one step. When anything fails, or the process is interrupted, the temporary file is
removed and the target is untouched. Every file projhead writes goes through here: cache
shards and files, mined sets, heads, checkpoints, downloads.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


TMP_NAME = re.compile(r".+\.tmp\d+")  # the temporary names below: NAME.tmpPID
DESKTOP_FILES = {".ds_store", ".localized", "thumbs.db", "desktop.ini"}  # macOS Finder, Windows Explorer (lower case)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; renamed to ``path`` when the block ends without error."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """``atomic_path`` for files that belong together (a head's weights, config and card): all
    are written to temporary names first, and only when every one is written are they renamed
    over their targets, so a failure (a full disk) leaves the old files all as they were."""
    paths = [Path(p) for p in paths]
    tmps = [p.with_name(f"{p.name}.tmp{os.getpid()}") for p in paths]  # TMP_NAME
    try:
        yield tmps
        for t in tmps:
            fsync_file(t)
        for t, p in zip(tmps, paths):
            os.replace(t, p)
    except BaseException:
        for t in tmps:
            with contextlib.suppress(OSError):
                t.unlink()
        raise


def write_file(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` as it is (a temporary path of ``atomic_paths``)."""
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically. Plain file I/O: a full disk fails
    with a clean OSError naming the file."""
    with atomic_path(path) as tmp:
        write_file(tmp, data)


def foreign_files(out: str | os.PathLike, ours) -> list[str]:
    """The names in folder ``out`` that a writer must not replace: none when ``out`` is new,
    empty, or ``ours(out)`` (a folder the same writer made before, whose files it replaces);
    else every name there. A file at ``out`` is itself foreign."""
    out = Path(out)
    if not out.exists():
        return []
    if not out.is_dir():
        return [out.name]
    # leftovers of a write that was killed (``atomic_path``'s temporary names) and the files a
    # desktop leaves in any folder it shows are nobody's work
    names = sorted(p.name for p in out.iterdir() if not TMP_NAME.fullmatch(p.name) and not _desktop(p.name))
    return [] if not names or ours(out) else names


def _desktop(name: str) -> bool:
    """A file a desktop leaves in folders it shows (and macOS's ``._NAME`` copies of their metadata)."""
    return name.lower() in DESKTOP_FILES or name.startswith("._")


def remove_path(p: Path) -> None:
    """Remove a file, a link (not what it points at) or a folder with what it holds; nothing if absent."""
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def plain_name(name: str) -> bool:
    """Whether ``name`` names one entry inside a folder or group: not empty, no '/', not '.' or '..'."""
    return bool(name) and "/" not in name and name not in (".", "..")


def listed(names: list[str], most: int = 5) -> str:
    """``names`` for a message: the first ``most``, and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
