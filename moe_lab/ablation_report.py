"""The results report of a paper ablation: did the paper's direction hold at this scale?

Everything is read back from the run directories the ablation wrote, never from the Optuna storage, so
the report can be regenerated at any time (also while arms are still running) and the same logs always
give the same bytes:

    <dir>/study_info.json                     what `python -m moe_lab.ablate` wrote ("kind": "ablation")
    <dir>/sweep.yaml                          the resolved AblationConfig: paper, claim, arms, claims
    <dir>/trials/t<NNN>-arm=<name>/seed<s>/   one run directory per arm and seed (metrics.json, config.yaml,
                                              env.json, TensorBoard events)
->
    <dir>/results.md    settings, provenance, results table, one verdict per claim, an overall line
    <dir>/results.csv   one row per arm: every number of the table, as mean / std / n columns
    <dir>/results.tex   the table for a paper (booktabs)
    <dir>/plots/val_curves.png, load_balance.png

Only seeds whose run completed count: a pruned, stopped or failed seed, or one still running, is listed
under the table and left out of every mean, so each arm reports its own n.

A claim compares the per-seed values of two arms (moe_lab.stats, shared with the sweep report).
Δ = mean(arm) - mean(other); the seed spread σ is the pooled sample std of the two arms; z = Δ / SE with
Welch's standard error SE = sqrt(s_a²/n_a + s_b²/n_b).
`less_than` holds iff Δ < 0; `at_most` holds iff Δ <= tolerance, and its z is taken against the
tolerance, (Δ - tolerance) / SE. |z| < 2 is reported as within seed noise.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from moe_lab.errors import MoELabError
from moe_lab.model.accounting import si
from moe_lab.artifacts.atomic import write_text_atomic
from moe_lab.stats import NOISE_Z, Stat, compare, noise_of

STUDY_INFO = "study_info.json"
SPEC = "sweep.yaml"
PLOTS = "plots"
TRIAL_DIR = re.compile(r"^t(\d+)-(arm=.*)$")
SEED_DIR = re.compile(r"^seed(\d+)$")
LABEL_WIDTH = 80  # moe_lab.sweep.config.trial_label truncates a trial directory's label to this many chars

# (metric in metrics.json, column title); the table shows these, the CSV adds the claims' metrics.
TABLE_METRICS = (("val_loss", "val loss"), ("val_bpb", "val bpb"), ("tokens_per_s", "tok/s"),
                 ("final_load_cv", "load CV"), ("final_dropped_frac", "dropped"),
                 ("collapse_events_count", "collapses"))
MATCHING_MEANS = {
    "none": "no parameter count is held constant: each arm keeps the base experiment's expert width",
    "active": "active parameters per token are held constant: the expert width is resized per arm "
              "to match the base experiment",
    "total": "total parameters are held constant: the expert width is resized per arm to match the "
             "base experiment",
}


class AblationReportError(MoELabError):
    """An ablation directory cannot be read."""


# ------------------------------------------------------------------------------------------ reading

@dataclass
class SeedRun:
    seed: int
    status: str  # metrics.json's status, or "running" (no metrics.json yet) / "not started" (no directory)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


@dataclass
class Arm:
    name: str
    overrides: list[str]
    runs: list[SeedRun]  # one per seed, by seed

    @property
    def completed(self) -> list[SeedRun]:
        return [r for r in self.runs if r.completed]

    def values(self, metric: str) -> list[float]:
        """The metric over the completed seeds that recorded a finite value, by seed."""
        return [float(r.metrics[metric]) for r in self.completed if _finite(r.metrics.get(metric))]

    def first(self, key: str) -> Any:
        """A value every seed shares (parameter counts): the first seed's that recorded it."""
        return next((r.metrics[key] for r in self.runs if r.metrics.get(key) is not None), None)


@dataclass(frozen=True)
class Claim:
    metric: str
    arm: str
    other: str
    at_most: bool  # False: `arm less_than other`; True: `arm at_most other` (+ tolerance)
    tolerance: float = 0.0
    note: str = ""

    @property
    def text(self) -> str:
        if self.at_most:
            return f"{self.metric}: {self.arm} ≤ {self.other} + {self.tolerance:g}"
        return f"{self.metric}: {self.arm} < {self.other}"


@dataclass
class AblationData:
    study_dir: Path
    info: dict  # study_info.json
    spec: dict  # sweep.yaml
    arms: list[Arm]  # in sweep.yaml's order, then arms found only on disk, by name
    claims: list[Claim]

    @property
    def name(self) -> str:
        return str(self.info.get("study_name") or self.spec.get("name") or self.study_dir.name)

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in (self.info.get("seeds") or self.spec.get("seeds") or [])]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AblationReportError(f"{path}: not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise AblationReportError(f"{path}: expected a JSON object")
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # yaml and OmegaConf raise their own types; one line for people
        raise AblationReportError(f"{path}: not readable YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise AblationReportError(f"{path}: expected a mapping")
    return data


def _optional_json(path: Path) -> dict:
    """A run's own record, or {} while it is being written or was never written."""
    try:
        return _read_json(path)
    except AblationReportError:
        return {}


def _optional_yaml(path: Path) -> dict:
    try:
        return _read_yaml(path) if path.is_file() else {}
    except AblationReportError:
        return {}


def read_claims(spec: dict) -> list[Claim]:
    claims = []
    for raw in spec.get("claims") or []:
        at_most = bool(raw.get("at_most"))
        claims.append(Claim(metric=str(raw.get("metric", "val_loss")), arm=str(raw.get("arm", "")),
                            other=str(raw["at_most"] if at_most else raw.get("less_than", "")), at_most=at_most,
                            tolerance=float(raw.get("tolerance") or 0.0), note=str(raw.get("note") or "")))
    return claims


def _arm_of(label: str, names: list[str]) -> str:
    """The arm a trial directory's label ('arm=<name>', possibly truncated) belongs to."""
    for name in names:
        if label == f"arm={name}"[:LABEL_WIDTH]:
            return name
    return label.removeprefix("arm=")


def _seed_run(seed: int, run_dir: Path | None) -> SeedRun:
    if run_dir is None or not run_dir.is_dir():
        return SeedRun(seed, "not started")
    metrics = _optional_json(run_dir / "metrics.json")
    status = str(metrics.get("status") or "running") if metrics else "running"
    return SeedRun(seed, status, metrics, _optional_yaml(run_dir / "config.yaml"),
                   _optional_json(run_dir / "env.json"), run_dir)


def load_ablation_data(study_dir: str | Path) -> AblationData:
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise AblationReportError(f"{study_dir}: no such directory")
    for name in (STUDY_INFO, SPEC):
        if not (study_dir / name).is_file():
            raise AblationReportError(f"{study_dir}: no {name}; expected an ablation directory")
    info, spec = _read_json(study_dir / STUDY_INFO), _read_yaml(study_dir / SPEC)
    arm_overrides = {str(k): [str(o) for o in (v or [])] for k, v in (spec.get("arms") or {}).items()}
    names = list(arm_overrides)

    found: dict[str, dict[int, Path]] = {}  # arm -> seed -> run dir; a later trial number wins
    trial_dirs = sorted((p for p in (study_dir / "trials").glob("t*") if p.is_dir() and TRIAL_DIR.match(p.name)),
                        key=lambda p: (int(TRIAL_DIR.match(p.name).group(1)), p.name))
    for trial_dir in trial_dirs:
        arm = _arm_of(TRIAL_DIR.match(trial_dir.name).group(2), names)
        for seed_dir in trial_dir.iterdir():
            if seed_dir.is_dir() and (m := SEED_DIR.match(seed_dir.name)):
                found.setdefault(arm, {})[int(m.group(1))] = seed_dir

    data = AblationData(study_dir, info, spec, [], read_claims(spec))
    for name in names + sorted(set(found) - set(names)):
        runs = found.get(name, {})
        seeds = sorted(set(data.seeds) | set(runs))
        data.arms.append(Arm(name, arm_overrides.get(name, []), [_seed_run(s, runs.get(s)) for s in seeds]))
    return data


# ------------------------------------------------------------------------------------------ statistics

@dataclass(frozen=True)
class Verdict:
    claim: Claim
    a: Stat
    b: Stat
    delta: float | None = None
    sigma: float | None = None  # pooled sample std of the two arms
    z: float | None = None  # Welch; for at_most against the tolerance
    why_no_z: str = ""

    @property
    def tested(self) -> bool:
        return self.delta is not None

    @property
    def held(self) -> bool:
        if not self.tested:
            return False
        return self.delta <= self.claim.tolerance if self.claim.at_most else self.delta < 0

    @property
    def noise(self) -> str:
        """'clear' (|z| >= 2), 'within' (|z| < 2) or 'unknown' (no z)."""
        return noise_of(self.z)

    @property
    def outcome(self) -> str:
        if not self.tested:
            return "not tested"
        if self.held:
            return {"clear": "held", "within": f"held, but within seed noise (|z| < {NOISE_Z:g})",
                    "unknown": "held, but seed noise not assessed"}[self.noise]
        return {"clear": "did not hold",
                "within": f"did not hold (the difference is within seed noise, |z| < {NOISE_Z:g})",
                "unknown": "did not hold (seed noise not assessed)"}[self.noise]

    def line(self) -> str:
        c = self.claim
        if not self.tested:
            missing = [name for name, s in ((c.arm, self.a), (c.other, self.b)) if s.n == 0]
            text = f"{c.text} — not tested: no completed seed of {' and '.join(missing)} recorded {c.metric}"
        else:
            bound = (f" {'≤' if self.held else '>'} {c.tolerance:g}") if c.at_most else ""
            if self.z is None:
                spread = self.why_no_z
            else:
                against = " against the tolerance" if c.at_most else ""
                spread = f"|Δ| = {abs(self.delta) / self.sigma:.1f} seed-σ, z = {self.z:+.2f}{against}"
            text = (f"{c.text} — {self.outcome}: {_num(self.a.mean)} vs {_num(self.b.mean)} "
                    f"(n = {self.a.n} vs {self.b.n}), Δ = {self.delta:+.4f}{bound} ({spread})")
        return text + (f". Note: {c.note}" if c.note else "")


def judge(claim: Claim, arms: dict[str, Arm]) -> Verdict:
    """The verdict of one claim on the completed seeds of its two arms (moe_lab.stats.compare)."""
    a, b = (arms[name].values(claim.metric) if name in arms else [] for name in (claim.arm, claim.other))
    c = compare(a, b, (claim.arm, claim.other), margin=claim.tolerance if claim.at_most else 0.0)
    return Verdict(claim, c.a, c.b, c.delta, c.sigma, c.z, c.why_no_z)


def verdicts(data: AblationData) -> list[Verdict]:
    arms = {arm.name: arm for arm in data.arms}
    return [judge(claim, arms) for claim in data.claims]


def overall_line(results: list[Verdict]) -> str:
    if not results:
        return "No claims to check."
    held = [v for v in results if v.held]
    noisy = sum(v.noise == "within" for v in held)
    unknown = sum(v.noise == "unknown" for v in held)
    failed = [v for v in results if v.tested and not v.held]
    untested = [v for v in results if not v.tested]
    text = f"**{len(held)} of {len(results)} claims held**"
    caveats = ([f"{noisy} of them within seed noise"] if noisy else []) + \
              ([f"{unknown} with too few seeds to judge the noise"] if unknown else [])
    text += f" ({'; '.join(caveats)})." if caveats else "."
    if failed:
        text += f" Did not reproduce at this scale: {'; '.join(v.claim.text for v in failed)}."
    if untested:
        text += (f" Not tested (an arm has no completed seed with a value for the metric): "
                 f"{'; '.join(v.claim.text for v in untested)}.")
    return text


# ------------------------------------------------------------------------------------------ table

@dataclass
class ArmRow:
    arm: Arm
    stats: dict[str, Stat]  # metric -> over the completed seeds
    active_params: int | None
    total_params: int | None
    collapse_events_total: int | None

    @property
    def n_label(self) -> str:
        return f"{len(self.arm.completed)}/{len(self.arm.runs)}"


def arm_rows(data: AblationData) -> list[ArmRow]:
    metrics = csv_metrics(data)
    rows = []
    for arm in data.arms:
        collapses = arm.values("collapse_events_count")
        rows.append(ArmRow(arm, {m: Stat.of(arm.values(m)) for m in metrics}, arm.first("active_params"),
                           arm.first("total_params"), int(sum(collapses)) if collapses else None))
    return rows


def csv_metrics(data: AblationData) -> list[str]:
    """The table's metrics, then any other metric a claim is about."""
    return list(dict.fromkeys([m for m, _ in TABLE_METRICS] + [c.metric for c in data.claims]))


COLUMNS = ("arm", "n", "val loss (mean ± std, n)", "val bpb (mean ± std, n)", "tok/s", "active", "total",
           "load CV", "dropped", "collapses")


def table_cells(rows: list[ArmRow]) -> list[list[str]]:
    return [[r.arm.name, r.n_label, _mean_std(r.stats["val_loss"], with_n=True),
             _mean_std(r.stats["val_bpb"], with_n=True), si(r.stats["tokens_per_s"].mean), si(r.active_params),
             si(r.total_params), _mean_std(r.stats["final_load_cv"]), _mean_std(r.stats["final_dropped_frac"]),
             "-" if r.collapse_events_total is None else str(r.collapse_events_total)] for r in rows]


def format_table(rows: list[ArmRow]) -> str:
    """Plain aligned text for the terminal (arm names left, numbers right)."""
    cells = table_cells(rows)
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]

    def line(values) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(COLUMNS), "  ".join("-" * w for w in widths)] + [line(c) for c in cells])


def markdown_table(rows: list[ArmRow]) -> str:
    lines = [list(COLUMNS), ["---"] + ["---:"] * (len(COLUMNS) - 1)]
    lines += [[v.replace("|", "\\|") for v in c] for c in table_cells(rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def seed_notes(data: AblationData) -> list[str]:
    """One line per arm with seeds that do not count: which, and why."""
    notes = []
    for arm in data.arms:
        left_out = [f"seed {r.seed} {_why_left_out(r)}" for r in arm.runs if not r.completed]
        if left_out:
            notes.append(f"- {arm.name}: n = {len(arm.completed)} of {len(arm.runs)}; " + "; ".join(left_out))
    return notes


def _why_left_out(run: SeedRun) -> str:
    if run.status in ("running", "not started"):
        return {"running": "has no metrics.json yet (running, or died before finishing)",
                "not started": "not started"}[run.status]
    reason = run.metrics.get("prune_reason") or run.metrics.get("error") or ""
    reason = " ".join(str(reason).split())
    return run.status + (f" ({reason[:80]})" if reason else "")


# ------------------------------------------------------------------------------------------ formatting

def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.3e}"


def _mean_std(stat: Stat, with_n: bool = False) -> str:
    if stat.mean is None:
        return "-"
    text = _num(stat.mean) + (f" ± {_num(stat.std)}" if stat.std is not None else "")
    return text + (f" (n={stat.n})" if with_n else "")


def _distinct(values: list[str]) -> str:
    """'a (all 6 runs)' or 'a (4 runs), b (2 runs)', sorted by value."""
    counts = Counter(values)
    if len(counts) == 1:
        return f"{values[0]} (all {len(values)} runs)"
    return ", ".join(f"{v} ({n} run{'s' * (n != 1)})" for v, n in sorted(counts.items()))


# ------------------------------------------------------------------------------------------ results.md

def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def budget_line(data: AblationData) -> str:
    """steps x batch x block from the runs' config.yaml; each distinct budget with its arms."""
    by_budget: dict[tuple, list[str]] = {}
    for arm in data.arms:
        for run in arm.runs:
            if run.config:
                key = tuple(_get(run.config, k) for k in ("trainer.max_steps", "data.batch_size", "data.block_size",
                                                          "trainer.accumulate_grad_batches"))
                names = by_budget.setdefault(key, [])
                if arm.name not in names:
                    names.append(arm.name)
    if not by_budget:
        return "- budget: unknown (no run has written its config.yaml yet)"

    def text(steps, batch, block, accumulate) -> str:
        if not all(isinstance(v, int) for v in (steps, batch, block)):
            return f"{steps} steps × {batch} sequences × {block} tokens"
        accumulate = accumulate if isinstance(accumulate, int) and accumulate > 1 else 1
        acc = f" × {accumulate} accumulated" if accumulate > 1 else ""
        return (f"{steps} steps × {batch} sequences{acc} × {block} tokens = "
                f"{steps * batch * block * accumulate:,} training tokens per run")

    if len(by_budget) == 1:
        return f"- budget: {text(*next(iter(by_budget)))} (all arms)"
    parts = [f"{text(*key)} ({', '.join(names)})" for key, names in sorted(by_budget.items(), key=str)]
    return "- budget: **differs between arms**: " + "; ".join(parts)


def provenance_lines(data: AblationData) -> list[str]:
    """Distinct machine and software records over the runs' env.json, each with its run count."""
    envs = [run.env for arm in data.arms for run in arm.runs if run.env]
    if not envs:
        return ["- no run has written its env.json yet"]

    def revision(env: dict) -> str:
        git = env.get("git") or {}
        dirty = {True: "dirty", False: "clean"}.get(git.get("dirty"), "dirty flag unknown")
        return f"`{git.get('commit') or 'unknown'}` {dirty}"

    def package(name: str):
        return lambda env: str((env.get("packages") or {}).get(name) or "unknown")

    def device(env: dict) -> str:
        return str((env.get("torch") or {}).get("cuda_device") or "cpu")

    fields = (("git commit", revision), ("torch", package("torch")), ("lightning", package("lightning")),
              ("data hash", lambda env: f"`{(env.get('data') or {}).get('data_hash') or 'unknown'}`"),
              ("python", lambda env: str(env.get("python") or "unknown")),
              ("platform", lambda env: str(env.get("platform") or "unknown")), ("device", device))
    return [f"- {title}: {_distinct([fn(env) for env in envs])}" for title, fn in fields]


def results_markdown(data: AblationData, rows: list[ArmRow], results: list[Verdict],
                     plots: dict[str, Path], skipped: dict[str, str]) -> str:
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
        f"- compute matching: **{matching}**: {MATCHING_MEANS.get(matching, 'unknown mode')}",
        budget_line(data),
        f"- base experiment: `{base}`; objective `{info.get('objective_metric') or objective.get('metric', '?')}` "
        f"({info.get('direction') or objective.get('direction', '?')})",
        "", "## Provenance", "", *provenance_lines(data),
        "", "## Arms", "",
        *[f"- `{arm.name}`: {', '.join(f'`{o}`' for o in arm.overrides) or 'the base experiment'}"
          for arm in data.arms],
        "", "## Results", "",
        "Mean ± sample std over the completed seeds (n = completed / expected); tokens/s is the mean; "
        "collapses is the total over the completed seeds; `-`: no value (a dense arm has no load CV).",
        "", markdown_table(rows) if rows else "No arms.", "",
    ]
    notes = seed_notes(data)
    if notes:
        lines += ["Seeds left out:", "", *notes, ""]
    lines += ["## Claims", "",
              "Δ = mean(arm) − mean(other); σ = pooled sample std of the two arms; z = Δ / Welch standard error "
              "(for ≤ claims: (Δ − tolerance) / SE); |z| < 2 is within seed noise.", ""]
    lines += [f"- {v.line()}" for v in results] or ["No claims in sweep.yaml."]
    lines += ["", overall_line(results), "", "## Plots", ""]
    lines += [f"- {key.replace('_', ' ')}: [png]({path.relative_to(data.study_dir).as_posix()})"
              for key, path in plots.items()]
    lines += [f"- {key.replace('_', ' ')}: skipped ({why})" for key, why in skipped.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ csv, tex

def results_csv(data: AblationData, rows: list[ArmRow]) -> str:
    """One line per arm; mean/std/n per metric (empty cells for no value); floats at full precision."""
    metrics = csv_metrics(data)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arm", "overrides", "seeds", "seeds_completed", "n", "active_params", "total_params",
                     "collapse_events_total", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "n"))])
    for r in rows:
        stats = [v for m in metrics for v in (r.stats[m].mean, r.stats[m].std, r.stats[m].n)]
        writer.writerow(["" if v is None else v for v in (
            r.arm.name, json.dumps(r.arm.overrides), json.dumps([run.seed for run in r.arm.runs]),
            json.dumps([run.seed for run in r.arm.completed]), len(r.arm.completed), r.active_params,
            r.total_params, r.collapse_events_total, *stats)])
    return out.getvalue()


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def _tex_mean_std(stat: Stat) -> str:
    if stat.mean is None:
        return "--"
    return f"${_num(stat.mean)}" + (rf" \pm {_num(stat.std)}" if stat.std is not None else "") + "$"


def results_tex(data: AblationData, rows: list[ArmRow]) -> str:
    label = re.sub(r"[^A-Za-z0-9:-]+", "-", data.name)
    head = r"Arm & $n$ & Val.\ loss & Val.\ bpb & Tokens/s & Active & Total & Load CV & Dropped & Collapses \\"
    body = [" & ".join([latex_escape(r.arm.name), r.n_label, _tex_mean_std(r.stats["val_loss"]),
                        _tex_mean_std(r.stats["val_bpb"]), si(r.stats["tokens_per_s"].mean), si(r.active_params),
                        si(r.total_params), _tex_mean_std(r.stats["final_load_cv"]),
                        _tex_mean_std(r.stats["final_dropped_frac"]),
                        "--" if r.collapse_events_total is None else str(r.collapse_events_total)]) + r" \\"
            for r in rows]
    return "\n".join([
        f"% {latex_escape(data.name)}: written by moe_lab.ablation_report from the run logs; "
        r"needs \usepackage{booktabs}",
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{{latex_escape(data.name)}: mean $\pm$ sample std over the completed seeds "
        r"($n$ = completed / expected).}",
        rf"\label{{tab:{label}}}", r"\begin{tabular}{lrrrrrrrrr}", r"\toprule", head, r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"


# ------------------------------------------------------------------------------------------ plots

def val_curves(data: AblationData) -> dict[str, list[dict[int, float]]]:
    """{arm: one val/loss {step: value} curve per seed that logged it}; arms without any are left out."""
    from moe_lab.tb_logs import read_scalars

    curves = {}
    for arm in data.arms:
        runs = [read_scalars(r.run_dir, "val/loss") for r in arm.runs if r.run_dir is not None]
        if runs := [r for r in runs if r]:
            curves[arm.name] = runs
    return curves


def _moe_layers(run: SeedRun) -> list[int]:
    layers = run.metrics.get("moe_layers")
    if isinstance(layers, list):
        return [int(i) for i in layers]
    n_layers = _get(run.config, "model.n_layers")
    return list(range(n_layers)) if isinstance(n_layers, int) else []  # probed: absent tags read empty


def layer_load_cv(data: AblationData) -> dict[str, dict[int, list[float]]]:
    """{arm: {layer: the last logged moe/layer{i}/load_cv of each completed seed}}; {} for a dense arm."""
    from moe_lab.tb_logs import read_scalars

    out: dict[str, dict[int, list[float]]] = {}
    for arm in data.arms:
        per_layer: dict[int, list[float]] = {}
        for run in arm.completed:
            for layer in _moe_layers(run):
                curve = read_scalars(run.run_dir, f"moe/layer{layer}/load_cv")
                if curve:
                    per_layer.setdefault(layer, []).append(curve[max(curve)])
        out[arm.name] = dict(sorted(per_layer.items()))
    return out


def write_plots(data: AblationData) -> tuple[dict[str, Path], dict[str, str]]:
    from moe_lab.viz import curves_with_band, grouped_bars, save_figure

    plots_dir = data.study_dir / PLOTS
    written, skipped = {}, {}
    curves = val_curves(data)
    loads = layer_load_cv(data)
    figures = {
        "val_curves": (lambda: curves_with_band(curves, "validation loss",
                                                f"{data.name}: val/loss, mean over seeds, min-max band"),
                       "no run has logged val/loss yet" if not curves else ""),
        "load_balance": (lambda: grouped_bars({arm: {f"layer {i}": v for i, v in layers.items()}
                                               for arm, layers in loads.items()},
                                              "final load CV (lower is more balanced)",
                                              f"{data.name}: load CV per MoE layer, mean ± std over seeds",
                                              empty_note="no MoE layers\n(or no completed seed)"),
                         "no completed run has logged moe/layer*/load_cv" if not any(loads.values()) else ""),
    }
    for key, (make, why_not) in figures.items():
        if why_not:
            skipped[key] = why_not
            continue
        written[key] = save_figure(make(), plots_dir / f"{key}.png")
    return written, skipped


# ------------------------------------------------------------------------------------------ entry point

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
            print(f"- {v.line()}")
        print(overall_line(results).replace("**", ""), flush=True)  # before the plots, which take seconds
    plots, skipped = write_plots(data)
    paths = {"results_md": data.study_dir / "results.md", "results_csv": data.study_dir / "results.csv",
             "results_tex": data.study_dir / "results.tex"}
    write_text_atomic(paths["results_csv"], results_csv(data, rows))
    write_text_atomic(paths["results_tex"], results_tex(data, rows))
    write_text_atomic(paths["results_md"], results_markdown(data, rows, results, plots, skipped))
    return {**paths, **plots}
