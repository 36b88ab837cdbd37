"""trainer.loggers: CSV, wandb (offline) and MLflow (local file store) each follow a real 2-step run,
checked against the run's own metrics.json; bad logger lists are refused before anything is written."""

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lab.config import load_config, missing_package
from moe_lab.errors import ConfigError
from moe_lab.report.tb_scalars import read_scalars
from moe_lab.training.run import run
from tests.helpers import write_tiny_experiment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def wandb_records(path: Path):
    """The protobuf records of a wandb offline run file (wandb 0.2x+ reads it only from its Go core): the
    LevelDB log format, a 7-byte file header then 32 KiB blocks of chunks (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks = path.read_bytes(), 32768, 7, []
    assert data.startswith(b":W&B")
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    """wandb in offline mode and MLflow on a local file store: nothing leaves the machine."""
    for package in ("wandb", "mlflow"):
        if missing_package(package):
            pytest.skip(f"{package} is not installed (pip install 'moe-lab[{package}]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").resolve().as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "loggers-test")
    return tmp_path / "mlruns"


def test_csv_wandb_mlflow_each_record_a_two_step_run(tmp_path, data_cache, offline_trackers):
    base = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=2)
    cfg = load_config(base, [f"output_dir={tmp_path / 'out'}", "trainer.loggers=[csv,wandb,mlflow]"])
    result = run(cfg, quiet=True)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    assert not list(result.run_dir.glob("events.out.tfevents.*"))  # TensorBoard was not asked for

    # CSV: Lightning's metrics.csv holds the validation loss at the last step and the final metrics.
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val[-1] == pytest.approx(metrics["val_loss"], rel=1e-6)
    final = [float(r["final/val_loss"]) for r in rows if r.get("final/val_loss")]
    assert final == [pytest.approx(metrics["val_loss"], rel=1e-6)]
    assert "top_k" in (result.run_dir / "hparams.yaml").read_text()
    # ... and the reports' curves are read from it when there are no TensorBoard events.
    assert read_scalars(result.run_dir, "val/loss") == {1: pytest.approx(metrics["val_loss"], rel=1e-6)}

    # wandb offline: one finished run under the run directory, holding the config and final metrics.
    files = list(result.run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history, config, exited = {}, {}, False
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        exited |= kind == "exit"
    assert history["val/loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert history["final/val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert config["model.moe.top_k"] == 2 and exited

    # MLflow file store: the run, named after the run directory, with the config and final metrics.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(offline_trackers.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("loggers-test").experiment_id])
    assert [r.info.run_name for r in runs] == ["tiny/version_0"]
    assert runs[0].data.metrics["final/val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert runs[0].data.params["model.moe.top_k"] == "2"
    assert runs[0].info.status == "FINISHED"


def test_unknown_logger_is_one_error_line(tmp_path, data_cache):
    base = write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=2)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_lab.train",
            str(base),
            f"output_dir={out}",
            "trainer.loggers=[tensorboard,neptune]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: trainer.loggers") and "unknown logger 'neptune'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_logger_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="trainer.loggers.*listed twice"):
        load_config(None, ["trainer.loggers=[csv,csv]"])


def test_a_missing_tracker_package_names_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.loggers.*wandb package.*moe-lab\[wandb\]"):
        load_config(None, ["trainer.loggers=[wandb]"])
