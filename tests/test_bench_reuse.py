"""The benches reuse a saved head only when the projhead code that trained it is the code running."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("bench_reuse", Path(__file__).parent.parent / "bench" / "reuse.py")
reuse = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(reuse)


def git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "projhead").mkdir(parents=True)
    (root / "projhead" / "heads.py").write_text("A = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "one")
    monkeypatch.setattr(reuse, "ROOT", root)
    reuse.code_key.cache_clear()
    yield root
    reuse.code_key.cache_clear()


def saved_head(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "train_log.json").write_text("{}")
    return folder


def test_reused_only_by_the_code_that_trained_it(checkout, tmp_path):
    head = saved_head(tmp_path / "head")
    assert not reuse.head_reusable(head)  # no stamp: trained by an unknown version
    reuse.stamp(head)
    assert reuse.head_reusable(head)

    (checkout / "projhead" / "heads.py").write_text("A = 2\n")  # uncommitted change: nothing is reused
    reuse.code_key.cache_clear()
    assert reuse.code_key() is None and not reuse.head_reusable(head)

    git(checkout, "commit", "-qam", "two")  # committed: another version, the head is trained again
    reuse.code_key.cache_clear()
    assert reuse.code_key() is not None and not reuse.head_reusable(head)
    reuse.stamp(head)
    assert reuse.head_reusable(head)

    (checkout / "README.md").write_text("changes outside the package do not count\n")
    reuse.code_key.cache_clear()
    assert reuse.head_reusable(head)


def test_settings_must_match(checkout, tmp_path):
    head = saved_head(tmp_path / "head")
    reuse.stamp(head, alpha=1.0)
    assert reuse.head_reusable(head, alpha=1.0)
    assert not reuse.head_reusable(head)  # a default head asked for, an alpha-1 head saved
    assert not reuse.head_reusable(head, alpha=0.9)
    assert json.loads((head / reuse.STAMP).read_text())["settings"] == {"alpha": 1.0}


def test_half_saved_or_outside_git(tmp_path, monkeypatch):
    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text("{}")  # no train log: not a whole head
    assert not reuse.head_reusable(head)
    monkeypatch.setattr(reuse, "ROOT", tmp_path)  # not a checkout
    reuse.code_key.cache_clear()
    try:
        (head / "train_log.json").write_text("{}")
        reuse.stamp(head)
        assert not reuse.head_reusable(head)
    finally:
        reuse.code_key.cache_clear()
