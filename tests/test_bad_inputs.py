"""Mistaken inputs through the real command lines: each must end in exactly one `error:` line on
stderr, exit code 2, no traceback, and leave every file it could touch (the case folder with its
output and run directories, the data cache) byte for byte as it was.

A case is one line of CASES: an id, the module run with `python -m`, its arguments, and a setup that
plants the mistake. Arguments are formatted with {exp} (a tiny experiment YAML), {runs} (an output
dir holding one trained run, copied per case), {run} (that run's directory), {cache} and {tmp}.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parent.parent


class Case(NamedTuple):
    id: str
    module: str
    args: str
    setup: Callable[[Path, Path], None] = lambda tmp, run: None  # (case folder, trained run dir)
    names: str = ""  # what the error line must name (the key, file or offset at fault); same placeholders


# ----------------------------------------------------------------------------------- case setups


def write(rel: str, content: str | bytes) -> Callable[[Path, Path], None]:
    """A file in the case folder; "{tmp}" in text content becomes the case folder's path."""

    def setup(tmp: Path, run: Path) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.replace("{tmp}", str(tmp)).encode())

    return setup


def unwritable(rel: str) -> Callable[[Path, Path], None]:
    """A folder this process cannot create anything in: read-only permissions, or a link to /sys
    (read-only even for root, whom permissions do not stop)."""

    def setup(tmp: Path, run: Path) -> None:
        if os.geteuid() == 0:
            (tmp / rel).symlink_to("/sys")
        else:
            (tmp / rel).mkdir()
            (tmp / rel).chmod(0o500)

    return setup


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path, Path], None]:
    """Cut a file of the trained run to a fraction of its size, as a crash mid-write would."""

    def setup(tmp: Path, run: Path) -> None:
        path = run / rel
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    return setup


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(tmp: Path, run: Path) -> None:
        for s in setups:
            s(tmp, run)

    return setup


TRAIN = "moe_lab.train"
CASES = [
    Case(
        "output_dir is a file",
        TRAIN,
        "{exp} output_dir={tmp}/afile",
        write("afile", "x"),
        "output_dir: {tmp}/afile is a file",
    ),
    Case(
        "output_dir under a file",
        TRAIN,
        "{exp} output_dir={tmp}/afile/runs",
        write("afile", "x"),
        "output_dir: {tmp}/afile/runs would be under {tmp}/afile",
    ),
    Case(
        "output_dir not writable",
        TRAIN,
        "{exp} output_dir={tmp}/ro/runs",
        unwritable("ro"),
        "output_dir: cannot write in {tmp}/ro",
    ),
    Case(
        "model_init yaml malformed",
        TRAIN,
        "{exp} output_dir={runs} model_init={tmp}/pre",
        write("pre/moe_lab_model.yaml", "d_model: [32\n"),
        "model_init: cannot parse {tmp}/pre/moe_lab_model.yaml",
    ),
    Case(
        "model_init folder missing",
        TRAIN,
        "{exp} output_dir={runs} model_init={tmp}/nowhere",
        names="model_init: no such file or directory: {tmp}/nowhere",
    ),
    Case(
        "resume=auto, last.ckpt truncated",
        TRAIN,
        "{exp} output_dir={runs} trainer.resume=auto",
        truncate("checkpoints/last.ckpt"),
        "{run}/checkpoints/last.ckpt",
    ),
    Case(
        "resume=auto, last and previous truncated",
        TRAIN,
        "{exp} output_dir={runs} trainer.resume=auto",
        both(truncate("checkpoints/last.ckpt"), truncate("checkpoints/previous.ckpt")),
        "{run}/checkpoints/last.ckpt",
    ),
    Case(
        "resume=garbage.ckpt",
        TRAIN,
        "{exp} output_dir={runs} trainer.resume={tmp}/garbage.ckpt",
        write("garbage.ckpt", b"not a checkpoint\n" * 10),
        "trainer.resume: {tmp}/garbage.ckpt",
    ),
    Case(
        "accelerator=gpu without one",
        TRAIN,
        "{exp} output_dir={runs} trainer.accelerator=gpu",
        names="trainer.accelerator: 'gpu'",
    ),
    Case("strategy=bogus", TRAIN, "{exp} output_dir={runs} trainer.strategy=bogus", names="trainer.strategy: 'bogus'"),
    Case("empty YAML", TRAIN, "{tmp}/empty.yaml", write("empty.yaml", ""), "{tmp}/empty.yaml is empty"),
    Case("max_steps=0", TRAIN, "{exp} output_dir={runs} trainer.max_steps=0", names="trainer.max_steps: must be >= 1"),
    Case(
        "data file shorter than a block",
        TRAIN,
        "{exp} output_dir={runs} data.source=files data.train_files=[{tmp}/short.txt]",
        write("short.txt", "tiny text\n" * 3),
        "{tmp}/short.txt",
    ),
    Case(
        "non-UTF-8 .txt",
        TRAIN,
        "{exp} output_dir={runs} data.source=files data.train_files=[{tmp}/latin1.txt]",
        write("latin1.txt", b"ok line\n" * 40 + "caf\xe9\n".encode("latin-1") + b"more\n" * 40),
        "{tmp}/latin1.txt: cannot be read as text: not UTF-8 text: byte 0xe9 at offset 323 (line 41)",
    ),
    Case(
        "malformed jsonl",
        TRAIN,
        "{exp} output_dir={runs} data.source=files data.train_files=[{tmp}/bad.jsonl]",
        write("bad.jsonl", '{"text": "a fine row"}\n' * 20 + '{"text": "broken\n'),
        "{tmp}/bad.jsonl",
    ),
    Case(
        "report: storage file missing",
        "moe_lab.report",
        "{tmp}/study",
        write(
            "study/study_info.json", json.dumps({"study_name": "s", "storage_url": "sqlite:///{tmp}/study/study.db"})
        ),
        "(looked for {tmp}/study/study.db)",
    ),
    Case(
        "hf convert: config.json is a list",
        "moe_lab.interop.hf",
        "convert {tmp}/hf {tmp}/out",
        write("hf/config.json", "[1, 2]"),
        "{tmp}/hf/config.json: expected a JSON object",
    ),
    Case(
        "sweep output_dir is a file",
        "moe_lab.sweep",
        "{tmp}/sweep.yaml output_dir={tmp}/afile",
        write("afile", "x"),
        "output_dir: {tmp}/afile is a file",
    ),
    Case(
        "sweep output_dir not writable",
        "moe_lab.sweep",
        "{tmp}/sweep.yaml output_dir={tmp}/ro/sweeps",
        unwritable("ro"),
        "output_dir: cannot write in {tmp}/ro",
    ),
]


# ------------------------------------------------------------------------------------- machinery


def tree_digest(*roots: Path) -> dict[str, str]:
    """Every file, folder and link under `roots` -> a hash of its content (or link target)."""
    digest = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    digest[str(path)] = "link:" + os.readlink(path)
                elif path.is_dir():
                    digest[str(path)] = "dir"
                else:
                    digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def run_cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run with two checkpoints (last.ckpt and previous.ckpt), and its warmed data cache."""
    base = tmp_path_factory.mktemp("trained")
    exp = write_tiny_experiment(base / "tiny.yaml", base / "cache", steps=2)
    result = run_cli(TRAIN, [str(exp), f"output_dir={base / 'runs'}", "trainer.val_every_n_steps=1"], base)
    assert result.returncode == 0, result.stderr
    run = base / "runs" / "tiny" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "previous.ckpt").is_file()
    return base, exp, run


def sweep_yaml(exp: Path) -> str:
    return f"base: {exp}\nsampler: grid\nspace: {{model.moe.top_k: [1]}}\n"


class Outcome(NamedTuple):
    result: subprocess.CompletedProcess
    places: dict
    case_files_before: dict[str, str]
    case_files_after: dict[str, str]


class Batch(NamedTuple):
    outcomes: dict[str, Outcome]
    cache_before: dict[str, str]
    cache_after: dict[str, str]


@pytest.fixture(scope="module")
def batch(trained, tmp_path_factory) -> Batch:
    """Every case run once, one per core: each is a fresh interpreter spending most of its time on
    imports, so they overlap well. The data cache they share is compared around the whole batch
    (test_no_case_changed_the_data_cache)."""
    base, exp, run = trained

    def one(case: Case) -> tuple[str, Outcome]:
        tmp = tmp_path_factory.mktemp("case")
        shutil.copytree(base / "runs", tmp / "runs")
        case_run = tmp / "runs" / run.relative_to(base / "runs")
        case.setup(tmp, case_run)
        if case.module == "moe_lab.sweep":  # {tmp}/sweep.yaml: a one-point grid over the tiny experiment
            (tmp / "sweep.yaml").write_text(sweep_yaml(exp))
        places = dict(exp=exp, runs=tmp / "runs", run=case_run, cache=base / "cache", tmp=tmp)
        before = tree_digest(tmp)
        result = run_cli(case.module, case.args.format(**places).split(), cwd=tmp)
        return case.id, Outcome(result, places, before, tree_digest(tmp))

    cache_before = tree_digest(base / "cache")
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        outcomes = dict(pool.map(one, CASES))
    return Batch(outcomes, cache_before, tree_digest(base / "cache"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(case: Case, batch):
    result, places, before, after = batch.outcomes[case.id]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.names.format(**places) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert after == before


def test_no_case_changed_the_data_cache(batch):
    assert len(batch.outcomes) == len(CASES) and batch.cache_before
    assert sorted(set(batch.cache_before.items()) ^ set(batch.cache_after.items())) == []


# ------------------------------------------------------------------------- the pieces behind them


@pytest.mark.parametrize(
    "prefix, bad", [(b"", b"\xff"), (b"a" * 5, b"\xe9 "), ("é".encode() * 3, b"\x80"), (b"x\n" * 4, "€".encode()[:2])]
)  # last: file ends mid-character
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1 << 20])  # a character cut across chunks must not count
def test_first_invalid_utf8_agrees_with_a_whole_file_decode(tmp_path, prefix, bad, chunk_size):
    from moe_lab.data.corpora import _first_invalid_utf8

    path = tmp_path / "t.txt"
    path.write_bytes(prefix + bad + "ok é".encode())
    data = path.read_bytes()
    with pytest.raises(UnicodeDecodeError) as err:
        data.decode("utf-8")
    start = err.value.start
    assert _first_invalid_utf8(path, chunk_size) == (start, data[:start].count(b"\n") + 1, data[start])
    path.write_bytes(prefix + "ok é".encode())
    assert _first_invalid_utf8(path, chunk_size) is None


def test_previous_checkpoint_is_the_one_last_replaced(trained):
    import torch

    _, _, run = trained
    steps = {
        name: torch.load(run / "checkpoints" / name, weights_only=True)["global_step"]
        for name in ("last.ckpt", "previous.ckpt")
    }
    assert steps == {"last.ckpt": 2, "previous.ckpt": 1}  # checkpoints every step (val_every_n_steps=1)
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind


def test_resume_auto_names_the_intact_previous_checkpoint_and_it_resumes(trained, tmp_path):
    base, exp, run = trained
    shutil.copytree(base / "runs", tmp_path / "runs")
    checkpoints = tmp_path / "runs" / run.relative_to(base / "runs") / "checkpoints"
    truncate("last.ckpt")(tmp_path, checkpoints)
    common = [str(exp), f"output_dir={tmp_path / 'runs'}", "trainer.val_every_n_steps=1", "trainer.max_steps=3"]
    refused = run_cli(TRAIN, [*common, "trainer.resume=auto"], tmp_path)
    assert refused.returncode == 2 and str(checkpoints / "last.ckpt") in refused.stderr
    offered = f"trainer.resume={checkpoints / 'previous.ckpt'}"
    assert offered in refused.stderr
    resumed = run_cli(TRAIN, [*common, offered], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((checkpoints.parent / "metrics.json").read_text())
    # Resumed at step 1 of 3: the totals count all three steps, the part itself two (batch 4 x block 32).
    assert metrics["resumed_from_step"] == 1 and metrics["steps"] == 3
    assert metrics["train_tokens"] == 3 * 4 * 32 and metrics["this_part"]["train_tokens"] == 2 * 4 * 32
    assert metrics["wall_time_s"] > metrics["this_part"]["wall_time_s"]


class _DriverError(Exception):
    """Stands in for SQLAlchemy's wrapper: the driver's own error is `orig`."""

    def __init__(self, message: str, orig: Exception):
        super().__init__(message)
        self.orig = orig


@pytest.mark.parametrize(
    ("err", "limit", "expected"),
    [
        (ValueError("bad value\nsecond line"), None, "bad value"),
        (ValueError("\n\n  indented first  \nnext"), None, "indented first"),
        (ValueError(""), None, "ValueError"),  # an empty message: the type, never an IndexError
        (KeyError(), None, "KeyError"),
        (ValueError("x" * 50), 10, "x" * 10),
        (
            _DriverError("(wrapped) long SQL text\n[SQL: ...]", OSError("could not connect\nhint")),
            None,
            "could not connect",
        ),
    ],
)
def test_first_line_of_an_error(err, limit, expected):
    from moe_lab.errors import first_line

    assert first_line(err, limit) == expected
