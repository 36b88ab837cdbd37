"""report.html (`python -m moe_lab.report DIR --html`), parsed back with the standard library's HTML parser
from studies built by hand as tests/test_report.py builds them."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from moe_lab.report.__main__ import main
from moe_lab.report.sweep_study import load_study_data
from moe_lab.report.sweep_summary import best_headline, write_study_report
from moe_lab.report.tb_link import answer_url
from tests.test_report import TRIALS, make_one_key_grid, make_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a page the tests read: its text, the rows of each table, every src / href."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.tables, self.links, self._cell = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[a] for a in ("src", "href") if a in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def one_key_grid(tmp_path_factory):
    """The shipped demo's kind of sweep: a grid over one key, three seeds, reported with --html."""
    study_dir = tmp_path_factory.mktemp("html") / "grid1"
    runs = {
        4: [(2.5, 1000.0, 90.0), (2.625, 3000.0, 60.0), (2.75, 50000.0, 30.0)],
        1: [(2.25, 2000.0, 50.0), (2.5, 2500.0, 40.0), (2.375, 100.0, 700.0)],
        2: [(3.0, 2000.0, 50.0), (3.125, 2500.0, 40.0), (3.25, 100.0, 700.0)],
    }
    make_one_key_grid(study_dir, runs)
    paths = write_study_report(study_dir, html=True)
    return study_dir, paths, Page((study_dir / "report.html").read_text(encoding="utf-8"))


def test_one_key_grid_gets_report_html_with_the_headline(one_key_grid):
    study_dir, paths, page = one_key_grid
    assert paths["report_html"] == study_dir / "report.html"
    data = load_study_data(study_dir)
    headline = best_headline(data.rows, data.info)
    assert headline.startswith("**top_k=1") and " beat" in headline
    text = "".join(page.text)
    assert headline.replace("**", "") in text
    raw = (study_dir / "report.html").read_text(encoding="utf-8")
    bold = headline.split("**")[1]
    assert f"<strong>{html.escape(bold)}</strong>" in raw
    assert "objective: val_loss (minimize)" in text and "compute matching: active" in text  # the header lines


def test_results_table_has_one_row_per_configuration_best_first(one_key_grid):
    study_dir, _, page = one_key_grid
    results = page.tables[0]
    header, body = results[0], results[1:]
    assert header[:4] == ["", "trial", "config", "objective (mean ± std, n seeds)"]  # the colour first
    assert [row[2] for row in body] == [r.label for r in load_study_data(study_dir).rows]
    assert [row[2] for row in body] == ["top_k=1", "top_k=4", "top_k=2"]
    assert body[0][3] == "2.3750 ± 0.1250 (n=3)"


def test_plots_are_embedded_and_nothing_is_fetched(one_key_grid):
    study_dir, _, page = one_key_grid
    images = [src for src in page.links if src.startswith("data:image/png;base64,")]
    pngs = sorted((study_dir / "plots").glob("*.png"))
    assert len(images) == len(pngs) >= 3
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == PNG_MAGIC
    assert {p.name for p in pngs} <= set(page.text)  # each captioned with its file name
    # The one link out is the TensorBoard view a click opens (answer_url); nothing the page loads is remote.
    others = [link for link in page.links if not link.startswith(("data:", answer_url()))]
    assert others == []  # no separate file either


def test_glossary_lists_the_vocabulary(one_key_grid):
    _, _, page = one_key_grid
    glossary = {row[0]: row for row in page.tables[-1][1:]}
    assert glossary["MaxVio"][1] == "final_max_vio"
    assert glossary["load CV"][1] == "final_load_cv"
    assert glossary["val loss"][2:4] == ["nats/token", "lower is better"]
    assert glossary["tok/s"][3] == "higher is better"


def test_cli_html_writes_report_html_for_a_grid_and_a_multi_key_study(tmp_path, capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_study(tmp_path / "demo", TRIALS)
    make_one_key_grid(tmp_path / "grid1", {1: [(2.0, 1.0, 1.0), (2.5, 1.0, 1.0)], 2: [(3.0, 1.0, 1.0)] * 2})
    for name in ("demo", "grid1"):
        assert main([str(tmp_path / name), "--html"]) == 0
        assert f"  {tmp_path / name / 'report.html'}\n" in capsys.readouterr().out
        page = Page((tmp_path / name / "report.html").read_text(encoding="utf-8"))
        assert any(src.startswith("data:image/png;base64,") for src in page.links)


def test_cli_html_on_an_unwritable_study_says_why_in_one_line(tmp_path, capsys):
    make_one_key_grid(tmp_path / "grid1", {1: [(2.0, 1.0, 1.0), (2.5, 1.0, 1.0)], 2: [(3.0, 1.0, 1.0)] * 2})
    (tmp_path / "grid1" / "report.html").mkdir()  # a directory where the page goes: it cannot be written
    assert main([str(tmp_path / "grid1"), "--html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'grid1' / 'report.html'}: ") and len(err.strip().splitlines()) == 1


def test_without_html_no_page(tmp_path):
    make_one_key_grid(tmp_path / "grid1", {1: [(2.0, 1.0, 1.0), (2.5, 1.0, 1.0)], 2: [(3.0, 1.0, 1.0)] * 2})
    assert "report_html" not in write_study_report(tmp_path / "grid1")
    assert not Path(tmp_path / "grid1" / "report.html").exists()


def test_cli_html_on_an_unsupported_directory_exits_2_in_one_line(tmp_path, capsys):
    ablation = tmp_path / "abl"
    ablation.mkdir()
    (ablation / "study_info.json").write_text('{"study_name": "abl", "kind": "ablation"}')
    (tmp_path / "empty").mkdir()
    for path, says in ((ablation, "is an ablation"), (tmp_path / "empty", "no study_info.json")):
        assert main([str(path), "--html"]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
        assert not (path / "report.html").exists()
