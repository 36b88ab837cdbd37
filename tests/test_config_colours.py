"""The sweep's one colour per configuration follows TensorBoard's run order (first event's wall time),
and the answer link carries the view state TensorBoard reads from its query string."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from moe_lab.report.config_colours import TENSORBOARD_PALETTE, config_colours, run_start_time
from moe_lab.report.tb_link import ANSWER_TAGS, answer_url


def write_run(run_dir: Path) -> float:
    from torch.utils.tensorboard import SummaryWriter

    before = time.time()
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_scalar("val/loss", 1.0, 1)
    return before


def test_colours_follow_the_start_of_each_configurations_first_run(tmp_path):
    # Started in the order c, a, b (a later seed of c last): names sorted would give a, b, c.
    order = ["t002-c/seed0", "t000-a/seed0", "t001-b/seed0", "t002-c/seed1"]
    started = {}
    for run in order:
        started[run] = write_run(tmp_path / "trials" / run)
        time.sleep(0.05)
    assert run_start_time(tmp_path / "trials" / "t000-a/seed0") >= started["t000-a/seed0"]
    rows = [
        SimpleNamespace(label=label, run_dirs=[f"trials/{d}" for d in dirs])
        for label, dirs in (
            ("a", ["t000-a/seed0"]),
            ("b", ["t001-b/seed0"]),
            ("c", ["t002-c/seed0", "t002-c/seed1"]),
            ("d", []),  # not started: last
        )
    ]
    colours = config_colours(SimpleNamespace(rows=rows, study_dir=tmp_path))
    assert colours == dict(zip("cabd", TENSORBOARD_PALETTE, strict=False))


def test_answer_url_query_is_what_tensorboard_parses():
    url = urlsplit(answer_url(6123))
    assert (url.netloc, url.fragment) == ("localhost:6123", "timeseries")
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["smoothing"] == "0" and query["runFilter"] == "trials/"
    assert query["runColorGroup"] == "regex:trials/([^/]+)/"  # "+" survives as %2B, not a space
    assert query["tagFilter"] == "^(" + "|".join(ANSWER_TAGS) + ")$"
