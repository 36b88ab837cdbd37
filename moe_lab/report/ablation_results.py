"""The results report of a paper ablation: did the paper's direction hold at this scale?

Everything is read back from the run directories the ablation wrote (ablation_data), never from the
Optuna storage, so the report can be regenerated at any time (also while arms are still running) and the
same logs always give the same bytes:

    <dir>/results.md    settings, provenance, results table, one verdict per claim, an overall line
    <dir>/results.csv   one row per arm: every number of the table, as mean / std / n columns
    <dir>/results.tex   the table for a paper (booktabs)
    <dir>/plots/val_curves.png, load_balance.png

A pruned, stopped or failed seed, or one still running, is listed under the table and left out of every
mean, so each arm reports its own n. The claims' statistics: ablation_claims.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.artifacts.run_dir import CONFIG, ENV
from moe_lab.artifacts.study_dir import (
    PER_SEED_CSV,
    PREREQUISITES,
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_TEX,
    SWEEP_COPY,
)
from moe_lab.report.ablation_claims import Verdict, overall_line, verdicts
from moe_lab.report.ablation_curves import claim_curves, curve_lines
from moe_lab.report.ablation_data import AblationData, load_ablation_data, recorded_tokens_per_step
from moe_lab.report.ablation_plots import write_plots
from moe_lab.report.ablation_tables import (
    ArmRow,
    arm_rows,
    format_table,
    markdown_table,
    per_seed_csv,
    per_seed_markdown,
    results_csv,
    results_tex,
    reuse_lines,
    seed_notes,
)
from moe_lab.report.common import matching_means, run_metrics
from moe_lab.report.stats import CONFIDENCE, INDICATIVE_N

CLAIMS_METHOD = (
    "Δ = mean(arm) − mean(other). Each claim is tested paired by seed (a seed fixes every arm's data order, "
    "and the initial weights where the arms build the same modules, so per-seed differences cancel what of "
    "the seed's luck the arms share; Student's t on the differences, df = pairs − 1), or with Welch's t where "
    "the arms share fewer than two "
    f"seeds. **supported**: the whole {CONFIDENCE:.0%} confidence interval of Δ lies on the claimed side "
    "(below 0, or below the tolerance for ≤ claims); **contradicted**: wholly on the other side; "
    "**undecided**: the interval straddles it, and its ends are the largest effects the data still allow. "
    f"With n ≤ {INDICATIVE_N} seeds a decision is indicative only. Claims are not corrected for multiplicity."
)


def write_ablation_report(study_dir: str | Path, echo: bool = False) -> dict[str, Path]:
    """Write results.md, results.csv, results.tex and plots/ into the ablation directory; return
    {what: path}. `echo` prints the table and the verdicts first."""
    data = load_ablation_data(study_dir)
    rows, results = arm_rows(data), verdicts(data)
    if echo:
        print(f"ablation {data.name}: {data.spec.get('paper') or ''}")
        print(format_table(rows))
        for note in seed_notes(data):
            print(note)
        print()
        for v in results:
            print(f"- {v.line()}".replace("**", ""))
        print(overall_line(results).replace("**", ""), flush=True)  # before the plots, which take seconds
    differences = claim_curves(data)
    plots, skipped = write_plots(data, differences)
    paths = {
        "results_md": data.study_dir / RESULTS_MD,
        "results_csv": data.study_dir / RESULTS_CSV,
        "results_tex": data.study_dir / RESULTS_TEX,
        "per_seed_csv": data.study_dir / PER_SEED_CSV,
    }
    write_text_atomic(paths["results_csv"], results_csv(data, rows))
    write_text_atomic(paths["results_tex"], results_tex(data, rows))
    write_text_atomic(paths["per_seed_csv"], per_seed_csv(data))
    write_text_atomic(paths["results_md"], results_markdown(data, rows, results, plots, skipped, differences))
    return {**paths, **plots}


def budget_line(data: AblationData) -> str:
    """steps x batch x block from the runs' resolved config; each distinct budget with its arms."""
    by_budget: dict[tuple, list[str]] = {}
    for arm in data.arms:
        for run in arm.runs:
            if run.config:
                names = by_budget.setdefault(run.budget(), [])
                if arm.name not in names:
                    names.append(arm.name)
    if not by_budget:
        return f"- budget: unknown (no run has written its {CONFIG} yet)"

    def text(steps, batch, block, accumulate) -> str:
        per_step = recorded_tokens_per_step(batch, block, accumulate)
        if per_step is None or not isinstance(steps, int):
            return f"{steps} steps × {batch} sequences × {block} tokens"
        acc = f" × {accumulate} accumulated" if per_step != batch * block else ""
        return f"{steps} steps × {batch} sequences{acc} × {block} tokens = {steps * per_step:,} training tokens per run"

    if len(by_budget) == 1:
        return f"- budget: {text(*next(iter(by_budget)))} (all arms)"
    parts = [f"{text(*key)} ({', '.join(names)})" for key, names in sorted(by_budget.items(), key=str)]
    return "- budget: **differs between arms**: " + "; ".join(parts)


def provenance_lines(data: AblationData) -> list[str]:
    """Distinct machine and software records over the runs' environment records, each with its run count."""
    envs = [run.env for arm in data.arms for run in arm.runs if run.env]
    if not envs:
        return [f"- no run has written its {ENV} yet"]

    def revision(env: dict) -> str:
        git = env.get("git") or {}
        dirty = {True: "dirty", False: "clean"}.get(git.get("dirty"), "dirty flag unknown")
        if git.get("changed_since_start"):  # the checkout moved while the worker ran its imported code
            dirty = "dirty (checkout changed after the process started)"
        return f"`{git.get('commit') or 'unknown'}` {dirty}"

    def package(name: str):
        return lambda env: str((env.get("packages") or {}).get(name) or "unknown")

    def device(env: dict) -> str:
        return str((env.get("torch") or {}).get("cuda_device") or "cpu")

    fields = (
        ("git commit", revision),
        ("torch", package("torch")),
        ("lightning", package("lightning")),
        ("data hash", lambda env: f"`{(env.get('data') or {}).get('data_hash') or 'unknown'}`"),
        ("python", lambda env: str(env.get("python") or "unknown")),
        ("platform", lambda env: str(env.get("platform") or "unknown")),
        ("device", device),
    )
    return [f"- {title}: {_distinct([fn(env) for env in envs])}" for title, fn in fields]


def results_markdown(
    data: AblationData,
    rows: list[ArmRow],
    results: list[Verdict],
    plots: dict[str, Path],
    skipped: dict[str, str],
    differences: dict | None = None,
) -> str:
    info, spec = data.info, data.spec
    matching = str(info.get("compute_matching") or spec.get("compute_matching") or "none")
    objective = spec.get("objective") or {}
    base = Path(str(info.get("base") or spec.get("base") or "?")).name
    lines = [f"# Ablation: {data.name}", ""]
    lines += [f"- paper: {spec.get('paper') or '-'}", f"- claim: {spec.get('claim') or '-'}"]
    if spec.get("caveat"):
        lines.append(f"- **caveat:** {spec['caveat']}")
    lines += [
        f"- seeds: {data.seeds} (a seed counts once its run completed; n per arm below)",
        f"- compute matching: **{matching}**: {matching_means(matching, 'arm')}",
        budget_line(data),
        f"- base experiment: `{base}`; objective `{info.get('objective_metric') or objective.get('metric', '?')}` "
        f"({info.get('direction') or objective.get('direction', '?')})",
        "",
        "## Provenance",
        "",
        *provenance_lines(data),
        "",
        "## Arms",
        "",
        *[
            f"- `{arm.name}`: {', '.join(f'`{o}`' for o in arm.overrides) or 'the base experiment'}"
            for arm in data.arms
        ],
        "",
        *prerequisite_lines(data),
        "## Results",
        "",
        "Mean ± sample std over the completed seeds (n = completed / expected); tokens/s is the mean; "
        "collapses is the total over the completed seeds; `-`: no value (a dense arm has no load CV).",
        "",
        markdown_table(rows) if rows else "No arms.",
        "",
    ]
    notes = seed_notes(data)
    if notes:
        lines += ["Seeds left out:", "", *notes, ""]
    lines += reuse_lines(data)
    lines += [
        "## Per seed",
        "",
        f"The values the claims are tested on; every metric of every seed, with its run and code: {PER_SEED_CSV}.",
        "",
        *per_seed_markdown(data),
        "## Claims",
        "",
        CLAIMS_METHOD,
        "",
    ]
    lines += [f"- {v.line()}" for v in results] or [f"No claims in {SWEEP_COPY}."]
    lines += ["", overall_line(results), ""]
    if differences:
        lines += [
            "## Loss against training tokens",
            "",
            "Δ of each validation-loss claim at every evaluation, tested as the final value is (pointwise 95% "
            "intervals, descriptive: evaluations are not independent tests); the arms separate where the "
            "interval leaves 0 and stays on that side to the end (plot: val loss difference).",
            "",
            *curve_lines(data, differences),
        ]
    lines += ["## Plots", ""]
    lines += [
        f"- {key.replace('_', ' ')}: [png]({path.relative_to(data.study_dir).as_posix()})"
        for key, path in plots.items()
    ]
    lines += [f"- {key.replace('_', ' ')}: skipped ({why})" for key, why in skipped.items()]
    return "\n".join(lines) + "\n"


def prerequisite_lines(data: AblationData) -> list[str]:
    """The runs the arms start from (moe_lab.sweep.prerequisites), with each seed's final validation loss."""
    runs = data.spec.get("prerequisites") or {}
    if not runs:
        return []
    lines = [
        "## Prerequisites",
        "",
        f"Trained per seed before the arms, in `{PREREQUISITES}/<name>/seed<S>`; an arm's value `@name` is that run "
        "of the arm's own seed.",
        "",
    ]
    for name, overrides in runs.items():
        losses = []
        for seed in data.seeds:
            loss = run_metrics(data.study_dir / PREREQUISITES / str(name) / f"seed{seed}").get("val_loss")
            losses.append(f"{seed}: {loss:.4f}" if isinstance(loss, float) else f"{seed}: -")
        described = ", ".join(f"`{o}`" for o in overrides or []) or "the base experiment"
        lines.append(f"- `{name}`: {described}; final val loss by seed: {', '.join(losses)}")
    return [*lines, ""]


def _distinct(values: list[str]) -> str:
    """'a (all 6 runs)' or 'a (4 runs), b (2 runs)', sorted by value."""
    counts = Counter(values)
    if len(counts) == 1:
        return f"{values[0]} (all {len(values)} runs)"
    return ", ".join(f"{v} ({n} run{'s' * (n != 1)})" for v, n in sorted(counts.items()))
