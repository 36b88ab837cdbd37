"""Paper ablations: `python -m moe_lab.ablate experiments/ablations/aux_loss.yaml [--workers N]`.

An ablation is a grid sweep over named arms (each a set of overrides of one base experiment) with
repeated seeds: it runs on the sweep machinery (storage, resume, workers) and then writes
results.md / results.csv / results.tex and plots that say whether the paper's direction held.
Arms may start from prerequisite runs, trained per seed before them and named `@name` in an arm's
values (`prerequisites:`, moe_lab.sweep.prerequisites).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from moe_lab.artifacts.run_dir import CLAIM_METRICS
from moe_lab.artifacts.study_dir import PREREQUISITES
from moe_lab.checks import one_of
from moe_lab.cli import run_main
from moe_lab.errors import ConfigError
from moe_lab.sweep import prerequisite_runs
from moe_lab.sweep.config import Param, Sweep, SweepConfig, check_sweep, read_structured, validate_sweep_config
from moe_lab.sweep.prerequisites import REFERENCE, Prerequisites, named


@dataclass
class ClaimConfig:
    """A direction the paper reports, checked on the per-seed metrics of two arms:
    `less_than`: mean(metric of arm) < mean(metric of other); `at_most`: mean(arm) <= mean(other) + tolerance.
    """

    metric: str = "val_loss"
    arm: str = ""
    less_than: str = ""
    at_most: str = ""
    tolerance: float = 0.0
    note: str = ""


@dataclass
class AblationConfig(SweepConfig):
    paper: str = ""  # the paper and the table / figure the ablation follows
    claim: str = ""  # the finding under test, in words
    arms: dict[str, list[str]] = field(default_factory=dict)
    # Runs of the base (with `overrides`) trained per seed before the arms, in <study>/prerequisites/<name>/
    # seed<S>: name -> overrides. An arm's value `@name` is that run directory for the arm's own seed.
    prerequisites: dict[str, list[str]] = field(default_factory=dict)
    claims: list[ClaimConfig] = field(default_factory=list)
    caveat: str = ""  # printed with the results (e.g. expert choice's causality leak)
    output_dir: str = "ablations_out"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    compute_matching: str = "active"
    collapse_prunes: bool = False  # an ablation records collapse as a result; it does not prune


def load_ablation(path: str | Path, overrides: list[str] = ()) -> Sweep:
    path = Path(path)
    cfg: AblationConfig = read_structured(path, AblationConfig(), overrides)
    if cfg.sampler != "grid":
        raise ConfigError("sampler", "an ablation runs every arm: only the grid sampler applies")
    if cfg.space:
        raise ConfigError("space", "an ablation defines arms, not a search space")
    if len(cfg.arms) < 2:
        raise ConfigError("arms", f"an ablation compares at least two arms, got {len(cfg.arms)}")
    for section in ("arms", "prerequisites"):
        for name in getattr(cfg, section):
            if not name or any(c in name for c in "/ ,="):
                raise ConfigError(f"{section}.{name}", "names are non-empty, without '/', ' ', ',' or '='")
    _check_references(cfg)
    validate_sweep_config(cfg, needs_space=False)
    for i, claim in enumerate(cfg.claims):
        where = f"claims[{i}]"
        one_of(f"{where}.metric", claim.metric, CLAIM_METRICS)
        if bool(claim.less_than) == bool(claim.at_most):
            raise ConfigError(where, "a claim needs exactly one of less_than or at_most")
        for key in ("arm", "less_than", "at_most"):
            value = getattr(claim, key)
            if (value or key == "arm") and value not in cfg.arms:
                raise ConfigError(f"{where}.{key}", f"no arm named {value!r}; arms are {', '.join(cfg.arms)}")
    sweep = Sweep(
        cfg=cfg,
        path=path,
        params=[Param("arm", "categorical", choices=tuple(cfg.arms))],
        arms={name: list(ov) for name, ov in cfg.arms.items()},
    )
    if cfg.prerequisites:
        runs = {name: list(ov) for name, ov in cfg.prerequisites.items()}
        sweep.prerequisites = Prerequisites(runs, (sweep.study_dir / PREREQUISITES).resolve())
        prerequisite_runs.check(sweep)  # first: the arms are validated against the prerequisites as planned
    check_sweep(sweep)
    return sweep


def _check_references(cfg: AblationConfig) -> None:
    """Each `@name` an arm's value holds names a prerequisite, and each prerequisite is named by an arm."""
    known = ", ".join(cfg.prerequisites) or "none"
    used = set()
    for arm, overrides in cfg.arms.items():
        for item in overrides:
            if (name := named(item)) is None:
                continue
            if name not in cfg.prerequisites:
                raise ConfigError(f"arms.{arm}", f"{item}: no prerequisite named {name!r} (prerequisites: {known})")
            used.add(name)
    for name in cfg.prerequisites:
        if name not in used:
            raise ConfigError(f"prerequisites.{name}", f"no arm starts from it (an arm names it as {REFERENCE}{name})")


VERIFY_PROG = "python -m moe_lab.ablate FILE --verify"


def add_verify_options(parser) -> None:
    """The --verify options, on an ArgumentParser or one of its argument groups."""
    parser.add_argument(
        "--verify", action="store_true", required=True, help="rerun one seed of each stored arm: did it reproduce?"
    )
    parser.add_argument("--arms", default="", help="comma-separated arms to rerun (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="the seed to rerun (default: the first)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="allowed |difference| where settings differ (default: 2 x the arm's seed std)",
    )


def verify_help() -> str:
    """The --verify options as a section of the ablation command's --help (they have their own parser)."""
    parser = argparse.ArgumentParser(prog=VERIFY_PROG, usage=argparse.SUPPRESS, add_help=False)
    add_verify_options(parser.add_argument_group(f"verify a finished ablation ({VERIFY_PROG} [options])"))
    return parser.format_help()


def verify_main(argv: list[str]) -> int:
    """`--verify`: rerun one seed of each stored arm and say which numbers reproduced (exit 1 if any
    did not). See moe_lab/sweep/verify.py for what counts as reproduced."""
    from moe_lab.sweep.verify import verdict_table, verify

    parser = argparse.ArgumentParser(prog=VERIFY_PROG)
    parser.add_argument("ablation")
    parser.add_argument("overrides", nargs="*")
    add_verify_options(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options

    def rerun() -> int:
        sweep = load_ablation(args.ablation, args.overrides)
        arms = [a for a in args.arms.split(",") if a] or None
        verdicts = verify(sweep, arms=arms, seed=args.seed, tolerance=args.tolerance)
        print(verdict_table(sweep.cfg.objective.metric, verdicts))
        failed = [v.arm for v in verdicts if not v.reproduced]
        print(
            f"{len(verdicts) - len(failed)} of {len(verdicts)} arms reproduced"
            + (f"; not reproduced: {', '.join(failed)}" if failed else "")
        )
        return 1 if failed else 0

    return run_main(rerun)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verify" in argv:
        return verify_main(argv)
    from moe_lab.sweep.command import cli

    def report(study_dir: Path, storage_url: str) -> None:  # an ablation's report reads its run directories
        from moe_lab.report.ablation_results import write_ablation_report

        write_ablation_report(study_dir, echo=True)

    return cli(
        argv, prog="python -m moe_lab.ablate", doc=__doc__, loader=load_ablation, reporter=report, epilog=verify_help()
    )


if __name__ == "__main__":
    sys.exit(main())
