"""The researcher's view of a sweep: one self-contained report.html (`python -m moe_lab.report DIR --html`).

One page that opens offline, without a server or a separate script: the study's settings, the tie-aware
headline (sweep_summary.best_headline), the results table (sweep_tables.result_columns, sortable by a
click on its header), every PNG of plots/ embedded as base64, and a glossary of the metric vocabulary.
Everything is taken from what the markdown report shows, so the two cannot disagree.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.artifacts.metrics import VOCABULARY, Metric
from moe_lab.artifacts.study_dir import PLOTS, REPORT_HTML
from moe_lab.errors import MoELabError
from moe_lab.report import columns
from moe_lab.report.common import run_metrics
from moe_lab.report.sweep_study import StudyData
from moe_lab.report.sweep_tables import LOAD_CAVEAT, result_columns
from moe_lab.report.tb_link import answer_lines, answer_url


def write_html_report(
    data: StudyData, header: list[str], headline: str, best: str, colours: dict[str, str] | None = None
) -> Path:
    """Write <study_dir>/report.html from the study, the summary's own header lines, headline and best line
    (markdown, from moe_lab.report.sweep_summary), the configurations' colours (config_colours) and the
    PNGs already in plots/; return its path."""
    path = data.study_dir / REPORT_HTML
    try:
        write_text_atomic(path, html_page(data, header, headline, best, colours or {}))
    except OSError as err:
        raise MoELabError(f"{path}: cannot write the HTML report ({err.strerror or err})") from err
    return path


def html_page(data: StudyData, header: list[str], headline: str, best: str, colours: dict[str, str]) -> str:
    info, rows = data.info, data.rows
    title = f"Sweep report: {info.study_name}"
    command = answer_lines(".")[0]  # the page travels with its study folder: no absolute path
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{inline(line.removeprefix('- '))}</li>" for line in header) + "</ul>",
        "<h2>Best configuration</h2>",
        *([f"<p class='headline'>{inline(headline)}</p>"] if headline else []),
        f"<p>{inline(best)}</p>",
        f"<p>The answer in TensorBoard: <code>{html.escape(command)}</code> in this study's folder, then open "
        f"<a href='{html.escape(answer_url())}'>this view</a> (validation loss, load CV and collapses, "
        "unsmoothed, in the colours of this page).</p>",
        "<h2>Results</h2>",
        results_table(data, colours) if rows else "<p>No trials yet.</p>",
        *([f"<p class='note'>{html.escape(LOAD_CAVEAT)}</p>"] if rows else []),
        "<h2>Plots</h2>",
        *plot_figures(data.study_dir / PLOTS),
        "<h2>Collapse log</h2>",
        collapse_log(data),
        "<h2>Glossary of metrics</h2>",
        glossary(),
    ]
    return PAGE.format(title=html.escape(title), style=STYLE, body="\n".join(body), script=SORT_SCRIPT)


def inline(markdown: str) -> str:
    """One line of the markdown report as HTML: escaped, **bold** as <strong>, `code` as <code>."""
    text = html.escape(markdown)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def results_table(data: StudyData, colours: dict[str, str]) -> str:
    """The results table, one <tr> per configuration, best first, led by the configuration's colour in
    the plots and TensorBoard; numbers align right."""
    spec = result_columns(data.info.objective_metric)
    align = ["left" if c.left else "right" for c in spec]
    head = "<th></th>" + "".join(
        f"<th class='{a}' title='click to sort'>{html.escape(c.title)}</th>" for c, a in zip(spec, align, strict=True)
    )
    body = [
        f"<tr><td><span class='swatch' style='background:{colours.get(row.label, 'transparent')}'></span></td>"
        + "".join(f"<td class='{a}'>{html.escape(cell)}</td>" for cell, a in zip(line, align, strict=True))
        + "</tr>"
        for row, line in zip(data.rows, columns.cells(spec, data.rows), strict=True)
    ]
    rows = "\n".join(body)
    return f"<table class='sortable'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>"


def plot_figures(plots_dir: Path) -> list[str]:
    """Every PNG of plots/ as an embedded image, captioned with its file name."""
    pngs = sorted(plots_dir.glob("*.png")) if plots_dir.is_dir() else []
    if not pngs:
        return ["<p>No plots were written.</p>"]
    return [
        f"<figure><img alt='{html.escape(png.stem)}' src='data:image/png;base64,"
        f"{base64.b64encode(png.read_bytes()).decode('ascii')}'>"
        f"<figcaption>{html.escape(png.name)}</figcaption></figure>"
        for png in pngs
    ]


def collapse_log(data: StudyData) -> str:
    """Every collapse event of every run (metrics.json's collapse_events): when, where, what kind, its value.
    The kinds are defined in the glossary below."""
    events = []
    for row in data.rows:
        for run_dir in row.run_dirs:
            for event in run_metrics(data.study_dir / run_dir).get("collapse_events") or []:
                value = next((v for k, v in event.items() if k not in ("step", "layer", "expert", "kind")), None)
                cells = (row.label, Path(run_dir).name, event.get("step"), event.get("layer"), event.get("expert"))
                events.append((*cells, event.get("kind"), value))
    if not events:
        return "<p>No collapse event in any run.</p>"
    head = "".join(f"<th>{t}</th>" for t in ("configuration", "run", "step", "layer", "expert", "kind", "value"))
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape('-' if c is None else str(c))}</td>" for c in event) + "</tr>"
        for event in events
    )
    return f"<table class='sortable'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _better(metric: Metric) -> str:
    # Metric.better: "" is a figure that never ranks (a cost, a count of the machine's).
    return f"{metric.better} is better" if metric.better else "never ranks"


def _meaning(metric: Metric) -> str:
    """What the Metric docstring says of this one: where its value comes from, how seeds combine."""
    source = f"from the logged scalar {metric.tag}" if metric.tag else "reported by a monitor of the run"
    parts = [source, f"seeds combine by their {metric.seeds}"]
    if metric.machine:
        parts.append("depends on the machine and its load, not on the configuration: shown, never a result")
    return "; ".join(parts)


def glossary() -> str:
    """Every metric of the vocabulary: its column title, name, unit, which way is better and its source."""
    head = "".join(f"<th>{t}</th>" for t in ("title", "name", "unit", "better", "meaning"))
    body = "\n".join(
        "<tr>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in (m.title, m.name, m.unit or "-", _better(m), _meaning(m)))
        + "</tr>"
        for m in VOCABULARY
    )
    return f"<table class='glossary'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 90em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f2f2f2; }
table.sortable th { cursor: pointer; }
td.right, th.right { text-align: right; } td.left, th.left { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 100%; }
figcaption, .note { color: #555; font-size: 0.85em; }
.swatch { display: inline-block; width: 1em; height: 1em; border-radius: 50%; vertical-align: middle; }
"""

# Click a header to sort by its column; click again to reverse. Cells that read as numbers ("2.3457 ±
# 0.0120 (n=2)", "1.20M", "50.0s") sort by their leading number with its SI suffix, the rest as text.
SORT_SCRIPT = """
const SI = {k: 1e3, M: 1e6, G: 1e9, T: 1e12};
function sortKey(text) {
  const m = text.trim().match(/^([-+]?\\d*\\.?\\d+(?:e[-+]?\\d+)?)([kMGT]?)/);
  return m ? parseFloat(m[1]) * (SI[m[2]] || 1) : null;
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
    const body = table.tBodies[0], up = th.dataset.dir !== "up";
    th.dataset.dir = up ? "up" : "down";
    const rows = Array.from(body.rows), cell = r => r.cells[col].textContent;
    rows.sort((a, b) => {
      const x = sortKey(cell(a)), y = sortKey(cell(b));
      // A number before any text ("-", no value), so empty cells stay at the end either way round.
      const order = x !== null && y !== null ? x - y : x !== null ? -1 : y !== null ? 1
        : cell(a).localeCompare(cell(b));
      return up || (x === null) !== (y === null) ? order : -order;
    });
    rows.forEach(r => body.appendChild(r));
  }));
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
<script>{script}</script>
</body>
</html>
"""
