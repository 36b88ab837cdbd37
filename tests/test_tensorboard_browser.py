"""What a researcher sees, checked in a real browser (headless Chromium, Debian's `chromium` package):
the TensorBoard link a finished sweep prints opens the validation-loss view with one colour per
configuration (the colours of the sweep's plots), and report.html shows the headline offline.

Slow (a sweep, a TensorBoard server, a browser); skipped where Chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from moe_lab.report.config_colours import config_colours
from moe_lab.report.sweep_study import load_study_data
from moe_lab.sweep.__main__ import main as sweep_main
from tests.helpers import write_tiny_experiment
from tests.test_tensorboard import free_port, wait_for_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]
# Without the networking flags Chromium keeps trying to reach Google's hosts from a closed network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

WINDOW = ("--window-size=1600,2400",)  # TensorBoard renders only the cards in view: all of them here


def rendered_dom(url: str, profile, budget_ms: int = 20000) -> str:
    """The page's DOM once its scripts have run for `budget_ms` of virtual time."""
    args = [
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        *WINDOW,
        "--dump-dom",
        url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout


def hex_to_rgb(colour: str) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture
def printed_sweep(tmp_path, data_cache, capsys):
    """A finished 2 x 2 sweep run by its CLI, and what it printed."""
    write_tiny_experiment(tmp_path / "tiny.yaml", data_cache, steps=6)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"base: tiny.yaml\noutput_dir: {tmp_path / 'out'}\nsampler: grid\nseeds: [0, 1]\n"
        "collapse_prunes: false\nspace:\n  model.moe.top_k: [1, 2]\n"
    )
    assert sweep_main([str(path)]) == 0
    return tmp_path / "out" / "sweep", capsys.readouterr().out


@pytest.fixture
def tensorboard_on(printed_sweep):
    study_dir, _ = printed_sweep
    port = free_port()
    args = [sys.executable, "-m", "tensorboard.main", "--logdir", str(study_dir), "--port", str(port)]
    proc = subprocess.Popen([*args, "--host", "127.0.0.1", "--load_fast=false"], stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_printed_link_opens_validation_loss_coloured_by_configuration(printed_sweep, tensorboard_on, tmp_path):
    study_dir, printed = printed_sweep
    link = re.search(r"http://localhost:6006/\S+", printed).group(0)  # as printed at the end of the sweep
    data = load_study_data(study_dir)
    seed_runs = {d for row in data.rows for d in row.run_dirs}
    wait_for_runs(f"http://127.0.0.1:{tensorboard_on}", seed_runs)

    # forceSVG: charts drawn as SVG, whose lines the DOM shows (headless Chromium does not draw TensorBoard's
    # WebGL charts under a virtual-time budget); the view's own state is the printed link's.
    url = link.replace("localhost:6006/?", f"127.0.0.1:{tensorboard_on}/?forceSVG=true&")
    dom = rendered_dom(url, tmp_path / "profile")

    # The runs table: each run's name and its colour swatch.
    shown = dict(
        re.findall(r'data-id="defaultExperimentId/([^"]+)".*?class="run-color-swatch" style="background: ([^;]+);', dom)
    )
    means = {f"{d.rsplit('/', 1)[0]}/mean" for d in seed_runs}
    assert set(shown) == seed_runs | means  # the study root's declaration (".") is filtered out
    colours = config_colours(data)
    for row in data.rows:  # every seed and the mean of a configuration in its colour of the plots
        runs = [*row.run_dirs, f"{row.run_dirs[0].rsplit('/', 1)[0]}/mean"]
        assert {shown[r] for r in runs} == {hex_to_rgb(colours[row.label])}, row.label
    assert len({shown[r] for r in seed_runs}) == len(data.rows)  # configurations told apart
    lines = re.findall(r"<path[^>]*stroke: (rgb\([^)]*\))", dom)  # the charts' lines
    assert set(lines) == {hex_to_rgb(c) for c in colours.values()}
    cards = set(re.findall(r'title="((?:val|moe|train|final)/[^"]+)"', dom))  # each card's heading
    assert "val/loss" in cards and "moe/load_cv_max" in cards and "moe/collapse_events" in cards
    assert not {"train/lm_loss", "val/bpb", "final/val_loss"} & cards  # filtered to the answer
    assert 'aria-valuetext="0"' in dom  # the smoothing slider at 0: the last point is the value


def test_report_html_opens_offline_with_the_headline(printed_sweep, tmp_path):
    study_dir, _ = printed_sweep
    assert sweep_report_html(study_dir).is_file()
    dom = rendered_dom((study_dir / "report.html").as_uri(), tmp_path / "profile", budget_ms=3000)
    data = load_study_data(study_dir)
    assert f"Sweep report: {data.info.study_name}" in dom
    assert "Best configuration" in dom and re.search(r"<strong>top_k=[12]</strong>", dom)
    colours = config_colours(data)
    swatches = re.findall(r"class=\"swatch\" style=\"background:(#[0-9a-f]{6})", dom)
    assert sorted(swatches) == sorted(colours.values())  # one per configuration, the plots' colours
    assert dom.count("data:image/png;base64,") >= 3  # the plots are inside the page


def sweep_report_html(study_dir):
    from moe_lab.report.__main__ import main as report_main

    assert report_main([str(study_dir), "--html"]) == 0
    return study_dir / "report.html"
