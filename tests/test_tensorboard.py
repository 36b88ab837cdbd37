"""A real TensorBoard server on loopback, against a finished tiny sweep: its HTTP API lists every trial
run, the swept hyperparameters (only) with the objective first among the metrics, one HPARAMS row per
configuration (its seeds' runs, their mean objective) and the study's comparison charts."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from moe_lab.sweep.config import load_sweep
from moe_lab.sweep.runner import run_worker
from tests.helpers import write_tiny_experiment

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def finished_sweep(tmp_path, data_cache):
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=2)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\nsampler: grid\nseeds: [0, 1]\n"
        "space:\n  model.moe.top_k: [1, 2]\n"
    )
    sweep = load_sweep(path)
    assert run_worker(sweep, log=lambda m: None) == 4  # 2 configurations x 2 seeds
    return sweep


@pytest.fixture
def tensorboard(finished_sweep):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(finished_sweep.study_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_runs(base: str, expected: set[str]) -> list[str]:
    """/data/runs once the server has loaded every expected run (it reads the log directory in the
    background after it starts listening)."""
    deadline = time.time() + 180
    while True:
        try:
            runs = get(f"{base}/data/runs")
            if expected <= set(runs):
                return runs
        except OSError:
            pass  # not listening yet
        assert time.time() < deadline, "TensorBoard did not list the sweep's runs"
        time.sleep(1)


def test_tensorboard_lists_trials_swept_hparams_and_final_metrics(finished_sweep, tensorboard):
    from moe_lab.report.sweep_study import load_study_data

    # One (configuration, seed) per trial: the report's rows merge a configuration's seeds.
    rows = {r.label: r for r in load_study_data(finished_sweep.study_dir).rows}
    run_dirs = {label: row.run_dirs for label, row in rows.items()}
    assert sorted(run_dirs) == ["top_k=1", "top_k=2"] and all(len(d) == 2 for d in run_dirs.values())
    every_run = {d for dirs in run_dirs.values() for d in dirs}
    assert "." in wait_for_runs(tensorboard, every_run | {"."})  # the study's own declaration

    experiment = get(f"{tensorboard}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert [h["name"] for h in experiment["hparamInfos"]] == ["model.moe.top_k"]  # not the ~90 config keys
    assert experiment["hparamInfos"][0]["type"] == "DATA_TYPE_STRING"  # top_k 2, not 2.0000
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[0] == "final/val_loss" and "final/load_cv" in metrics

    groups = get(
        f"{tensorboard}/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [{"hparam": "model.moe.top_k"}, {"metric": {"tag": "final/val_loss"}}],
            "aggregationType": "AGGREGATION_AVG",
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]
    assert {g["name"] for g in groups} == set(run_dirs)  # one row per configuration, named by it
    for group in groups:
        row = rows[group["name"]]
        assert sorted(s["name"] for s in group["sessions"]) == sorted(run_dirs[group["name"]])
        assert group["hparams"]["model.moe.top_k"] == str(row.params["model.moe.top_k"])  # a category
        value = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}["final/val_loss"]
        assert value == pytest.approx(row.objective_mean, rel=1e-6)  # the seeds' mean, as the report has it

    tags = get(f"{tensorboard}/data/plugin/scalars/tags")
    for run in every_run:
        assert {"val/loss", "final/val_loss", "moe/load_cv_mean"} <= set(tags[run]), run
    layout = get(f"{tensorboard}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["val loss"] == ["val/loss"] and "load CV (mean over layers)" in charts
