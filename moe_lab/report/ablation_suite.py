"""RESULTS.md of the shipped ablation suite, assembled from each ablation's own report.

    python -m moe_lab.report.ablation_suite collect ablations_out/<name> [--into DIR]
    python -m moe_lab.report.ablation_suite assemble [--results DIR] [--out FILE] [--reading FILE]

The suite takes hours, so it runs in chunks, possibly over several sessions on fresh checkouts:
`collect` keeps what a finished ablation needs for the suite file (its results.md/.csv/.tex, plots and
`suite.json`: wall time (the union of its runs' intervals), runs, claims, the commits and thread counts
its runs recorded) in DIR
(default experiments/ablations/results/<name>/, small enough to commit); `assemble` writes RESULTS.md
from whatever DIR holds: one overview table, the provenance over every run of every ablation (it says
so loudly when runs came from more than one commit or a dirty tree), an optional hand-written reading
(--reading FILE; without it, the Reading section of the RESULTS.md it replaces is kept), and each
ablation's report as a section. `collect` refuses an ablation with seeds still running or not started,
unless --partial says its finished runs are wanted now.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from moe_lab.artifacts.atomic import write_json_atomic, write_text_atomic
from moe_lab.artifacts.run_dir import ENV, METRICS, PROGRESS
from moe_lab.artifacts.run_index import reused_from
from moe_lab.artifacts.study_dir import PLOTS, RESULTS_MD, STUDY_INFO, TRIALS
from moe_lab.errors import MoELabError
from moe_lab.report.ablation_data import SEED_DIR, AblationData, load_ablation_data
from moe_lab.report.common import (
    code_revision,
    duration,
    is_finite_non_bool,
    markdown_table,
    optional_json_object,
    read_json_object,
)

REPORT_FILES = ("results_md", "results_csv", "results_tex", "per_seed_csv")  # copied beside suite.json
SUITE_JSON = "suite.json"  # per ablation in the results folder: what the overview and provenance need
DEFAULT_RESULTS = Path("experiments/ablations/results")
DEFAULT_OUT = Path("experiments/ablations/RESULTS.md")
READING_HEADING = "## Reading"
UNFINISHED = ("running", "not started")  # seed statuses (ablation_data.SeedRun) of an ablation not done yet


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Wall time during which at least one run trained: the union of the runs' (start, end) intervals,
    so the gaps of an ablation resumed in another session do not count."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def attempt_interval(run_dir: Path) -> tuple[float, float] | None:
    """When one attempt at a run trained, (start, end) in seconds since the epoch. A finished attempt ends
    when its metrics file is written; a retry that resumed an earlier attempt's checkpoint counts only its
    own part (the earlier part is that attempt's directory). An attempt cut off (its worker died, the
    session ended) ran from its environment record, written as it started, to its last progress update."""
    metrics, progress = optional_json_object(run_dir / METRICS), optional_json_object(run_dir / PROGRESS)
    if metrics:
        end = (run_dir / METRICS).stat().st_mtime
        retry = (m := SEED_DIR.match(run_dir.name)) is not None and m.group(2) is not None
        part = metrics.get("this_part") if retry else None
        wall = (part if isinstance(part, dict) else metrics).get("wall_time_s")
        return (end - wall, end) if is_finite_non_bool(wall) else None
    updated = progress.get("updated") if progress else None
    if not is_finite_non_bool(updated) or not (run_dir / ENV).is_file():
        return None
    return (run_dir / ENV).stat().st_mtime, updated


def attempt_intervals(study_dir: Path) -> list[tuple[float, float]]:
    """The intervals of every attempt at every run of a study, finished or cut off."""
    dirs = [
        d
        for d in (study_dir / TRIALS).glob("t*/seed*")
        if d.is_dir() and SEED_DIR.match(d.name) and reused_from(d) is None  # a copy took no training time
    ]
    return [i for i in map(attempt_interval, dirs) if i is not None]


def unfinished_runs(data: AblationData) -> str:
    """The seeds of an ablation still running or not started, as 'running: a seed 1; not started: b seed 2'
    ("" when every seed finished: completed, pruned, stopped or failed)."""
    runs = [(arm.name, run) for arm in data.arms for run in arm.runs]
    groups = [(s, [f"{arm} seed {run.seed}" for arm, run in runs if run.status == s]) for s in UNFINISHED]
    return "; ".join(f"{status}: {', '.join(names)}" for status, names in groups if names)


def collect(study_dir: Path, into: Path, partial: bool = False) -> Path:
    """Regenerate the ablation's report from its runs and keep it, with suite.json, in into/<name>/.
    An ablation with unfinished seeds is refused unless `partial` (suite.json then names them)."""
    from moe_lab.report.ablation_claims import counts, overall_line, verdicts
    from moe_lab.report.ablation_results import write_ablation_report

    data = load_ablation_data(study_dir)
    unfinished = unfinished_runs(data)
    if unfinished and not partial:
        raise MoELabError(
            f"{study_dir}: ablation {data.name} is unfinished ({unfinished}); rerun its ablate command to finish "
            f"it, or pass --partial to collect the runs finished so far"
        )
    written = write_ablation_report(study_dir)
    runs = [run for arm in data.arms for run in arm.runs]
    results = verdicts(data)
    summary = {
        "name": data.name,
        "wall_time_s": busy_seconds(attempt_intervals(study_dir)),
        "runs_completed": sum(run.completed for run in runs),
        "runs_expected": len(runs),
        "claims": len(results),
        "claim_outcomes": counts(results),
        "overall": overall_line(results),
        "commits": sorted({code_revision(run.env) for run in runs if run.env}),
        "threads": sorted({str((run.env.get("torch") or {}).get("threads")) for run in runs if run.env}),
        "software": sorted({_software(run.env) for run in runs if run.env}),
        "unfinished": unfinished,
    }
    dest = into / data.name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / PLOTS).mkdir(parents=True)
    for key, path in written.items():
        report_file = key in REPORT_FILES
        shutil.copyfile(path, (dest if report_file else dest / PLOTS) / path.name)
    write_json_atomic(dest / SUITE_JSON, summary)
    return dest


def _software(env: dict) -> str:
    packages = env.get("packages") or {}
    return (
        f"Python {env.get('python')}, torch {packages.get('torch')}, lightning {packages.get('lightning')}, "
        f"optuna {packages.get('optuna')}; {env.get('platform')}"
    )


def existing_reading(out: Path) -> str:
    """The hand-written Reading section of an existing RESULTS.md, up to the next section ("" if none)."""
    lines = out.read_text().splitlines() if out.is_file() else []
    if READING_HEADING not in lines:
        return ""
    start = lines.index(READING_HEADING) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()


def assemble(results: Path, out: Path, reading: Path | None = None) -> str:
    """Write RESULTS.md from the collected ablations in `results`; return its text. The reading is `reading`'s
    text, or else the one `out` already has (it is written by hand: an assemble must not drop it)."""
    folders = sorted(d for d in results.iterdir() if (d / SUITE_JSON).is_file()) if results.is_dir() else []
    if not folders:
        raise MoELabError(f"{results}: no collected ablation (run `collect` on a finished ablation first)")
    suites = [read_json_object(d / SUITE_JSON) for d in folders]
    commits = sorted({c for s in suites for c in s["commits"]})
    single = len(commits) == 1 and "(dirty)" not in commits[0]
    lines = [
        "# Paper ablations at small scale: results",
        "",
        "Every shipped ablation at the reference budget (`experiments/reference.yaml`), regenerated by "
        "`python -m moe_lab.report.ablation_suite assemble` from each ablation's own report.",
        "",
        f"- code: every run at commit `{commits[0]}`, clean tree"
        if single
        else f"- **code: runs from {len(commits)} revisions, not one clean commit**: " + ", ".join(commits),
        f"- torch threads per run: {', '.join(sorted({t for s in suites for t in s['threads']}))}",
        *[f"- software: {sw}" for sw in sorted({sw for s in suites for sw in s["software"]})],
        "- command per ablation: `python -m moe_lab.ablate experiments/ablations/<name>.yaml --workers 2`",
        "",
        "## Overview",
        "",
    ]
    cells = [
        [
            f"[{s['name']}](#ablation-{s['name']})",
            f"{s['runs_completed']} of {s['runs_expected']}",
            duration(s["wall_time_s"]),
            s["overall"].replace("**", "").split(".")[0],
        ]
        for s in suites
    ]
    columns = ("ablation", "runs completed", "wall time (2 workers)", "claims")
    lines += [markdown_table(columns, cells, {"runs completed", "wall time (2 workers)"}), ""]
    total = sum(s["wall_time_s"] for s in suites)
    lines += [f"Total wall time: {duration(total)} for {len(suites)} ablations.", ""]
    reading_text = reading.read_text().strip() if reading is not None else existing_reading(out)
    if reading_text:
        lines += [READING_HEADING, "", reading_text, ""]
    lines += [section for folder in folders for section in (_section(folder, out.parent), "")]
    text = "\n".join(lines).rstrip() + "\n"
    write_text_atomic(out, text)
    return text


def _section(folder: Path, relative_to: Path) -> str:
    """An ablation's results.md one heading level down, its plot links pointing into its folder."""
    text = (folder / RESULTS_MD).read_text()
    prefix = Path(os.path.relpath(folder.resolve(), relative_to.resolve())).as_posix()
    text = text.replace(f"]({PLOTS}/", f"]({prefix}/{PLOTS}/")
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    from moe_lab.cli import run_main

    parser = argparse.ArgumentParser(prog="python -m moe_lab.report.ablation_suite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_collect = sub.add_parser("collect", help="keep a finished ablation's report for the suite file")
    p_collect.add_argument("study_dir", type=Path)
    p_collect.add_argument("--into", type=Path, default=DEFAULT_RESULTS)
    p_collect.add_argument(
        "--partial", action="store_true", help="collect an ablation with seeds still running or not started"
    )
    p_assemble = sub.add_parser("assemble", help="write RESULTS.md from the collected ablations")
    p_assemble.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p_assemble.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p_assemble.add_argument(
        "--reading",
        type=Path,
        default=None,
        help="a hand-written reading of the results (default: keep the one --out already has)",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "collect":
            if not (args.study_dir / STUDY_INFO).is_file():
                raise MoELabError(f"{args.study_dir}: no {STUDY_INFO}; expected an ablation directory")
            dest = collect(args.study_dir, args.into, partial=args.partial)
            unfinished = read_json_object(dest / SUITE_JSON)["unfinished"]
            print(f"collected {args.study_dir} into {dest}" + (f" (partial: {unfinished})" if unfinished else ""))
        else:
            if args.reading is not None and not args.reading.is_file():
                raise MoELabError(f"--reading: {args.reading}: no such file")
            kept = args.reading is None and existing_reading(args.out)
            assemble(args.results, args.out, args.reading)
            print(f"wrote {args.out}" + (" (its Reading section kept)" if kept else ""))
        return 0

    return run_main(body, tune_allocator=False)


if __name__ == "__main__":
    sys.exit(main())
