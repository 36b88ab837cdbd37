"""The TensorBoard link that opens a study's answer: printed at the end of every sweep and in summary.md.

TensorBoard (2.x, Time Series dashboard) reads its state from the page's query parameters, in the form
checked in headless Chromium (tests/test_tensorboard_browser.py):

  smoothing=0                                 the last validation point is the value, not an EMA
  runColorGroup=regex:trials/([^/]+)/         one colour per configuration: the seeds and the mean run
                                              of trials/<config>/ share it (moe_lab.report.config_colours)
  runFilter=trials/                           only the trials' runs (not the study root's declaration)
  tagFilter=^(val/loss|...)$                  the validation loss, load CV and collapse count only
"""

from __future__ import annotations

from urllib.parse import quote

from moe_lab.artifacts.metrics import COLLAPSE_EVENTS, LOAD_CV_MAX, LOAD_CV_MEAN, VAL_LOSS

DEFAULT_PORT = 6006
ANSWER_TAGS = (VAL_LOSS, LOAD_CV_MAX, LOAD_CV_MEAN, COLLAPSE_EVENTS)
CONFIG_GROUP = r"trials/([^/]+)/"  # the capture is the configuration's folder


def answer_url(port: int = DEFAULT_PORT, host: str = "localhost") -> str:
    """The Time Series view of a study's answer, for `tensorboard --logdir <study_dir> --port <port>`."""
    tags = "^(" + "|".join(tag.replace(".", r"\.") for tag in ANSWER_TAGS) + ")$"
    query = [
        ("smoothing", "0"),
        ("runColorGroup", "regex:" + CONFIG_GROUP),
        ("runFilter", "trials/"),
        ("tagFilter", tags),
    ]
    encoded = "&".join(f"{key}={quote(value, safe='/:^$()|')}" for key, value in query)
    return f"http://{host}:{port}/?{encoded}#timeseries"


def answer_lines(study_dir: str) -> list[str]:
    """How to open the answer: the command, then the link (two lines, for the console and summary.md)."""
    return [f"tensorboard --logdir {study_dir}", f"then open {answer_url()}"]
