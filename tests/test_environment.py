"""The git revision a run records is that of the code its process loaded, not of the checkout at the
time the run starts (a sweep worker keeps running the code it imported while the checkout moves on)."""

import subprocess
from pathlib import Path

from moe_lab.artifacts.environment import CodeRevision


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "model.py").write_text("WIDTH = 256\n")
    git(repo, "add", "model.py")
    git(repo, "commit", "-qm", "first")
    return repo


def test_an_unchanged_checkout_records_its_commit_clean(tmp_path):
    repo = make_repo(tmp_path)
    record = CodeRevision(repo).record()
    assert record == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False, "changed_since_start": False}


def test_a_commit_made_while_the_process_runs_is_not_recorded_as_its_code(tmp_path):
    repo = make_repo(tmp_path)
    loaded = git(repo, "rev-parse", "HEAD")
    revision = CodeRevision(repo)  # the process imports its code here
    (repo / "model.py").write_text("WIDTH = 512\n")
    git(repo, "commit", "-qam", "second")  # ... and the checkout moves on before a run starts
    record = revision.record()
    assert record["commit"] == loaded != git(repo, "rev-parse", "HEAD")
    assert record["dirty"] is True and record["changed_since_start"] is True


def test_an_edit_of_an_already_dirty_checkout_is_seen(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "model.py").write_text("WIDTH = 384\n")
    revision = CodeRevision(repo)
    assert revision.record()["changed_since_start"] is False and revision.record()["dirty"] is True
    (repo / "model.py").write_text("WIDTH = 512\n")  # still dirty, but other code than was loaded
    assert revision.record()["changed_since_start"] is True


def test_outside_a_checkout_the_revision_is_unknown(tmp_path):
    assert CodeRevision(tmp_path).record() == {"commit": None, "dirty": None, "changed_since_start": False}
