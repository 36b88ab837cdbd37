"""Reproduction check: rerun one seed of stored ablation (or sweep) arms and compare with what is stored.

`python -m moe_lab.ablate <file> --verify` trains, for each arm (or `--arms a,b`), seed `--seed` (the
first seed by default) again in a fresh folder `<study>/verify/<time>/`, with the thread count the stored
run recorded, and compares its objective with the stored run's final metrics:

- identical: the same number to the last bit. Expected whenever torch, the thread count, the device and
  the code (git commit, clean) are the same: CPU training here is deterministic.
- within seed noise: not identical but |difference| <= tolerance (default: 2 x the arm's sample std over
  its stored seeds). Acceptable only where the settings differ (other torch, threads, commit, device).
- differs: neither; with identical settings this is a reproducibility bug worth a look.

Nothing stored is modified; the reruns stay in the verify folder for inspection.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from moe_lab.artifacts.run_dir import ENV, METRICS
from moe_lab.artifacts.study_dir import TRIALS, VERIFY, VERIFY_MD
from moe_lab.errors import MoELabError
from moe_lab.study.labels import trial_label
from moe_lab.sweep.config import Sweep


@dataclass
class Verdict:
    arm: str
    seed: int
    stored: float
    rerun: float
    tolerance: float
    setting_differences: list[str]

    @property
    def difference(self) -> float:
        return self.rerun - self.stored

    @property
    def outcome(self) -> str:
        if self.rerun == self.stored:
            return "identical"
        if math.isfinite(self.difference) and abs(self.difference) <= self.tolerance:
            return "within seed noise"
        return "differs"

    @property
    def reproduced(self) -> bool:
        # With identical settings only bit-identity counts: anything else is a determinism bug.
        if not self.setting_differences:
            return self.outcome == "identical"
        return self.outcome != "differs"


def stored_run(sweep: Sweep, params: dict, seed: int) -> Path:
    """The stored run directory of one configuration and seed (trials/t<id>-<label>/seed<seed>)."""
    label = trial_label(params)
    trials = sweep.study_dir / TRIALS  # seed<S>, or seed<S>.retry<N> for a later attempt
    matches = sorted([*trials.glob(f"t*-{label}/seed{seed}"), *trials.glob(f"t*-{label}/seed{seed}.retry*")])
    complete = [m for m in matches if _status(m) == "completed"]
    if not complete:
        raise MoELabError(
            f"--verify: no completed run of {label} seed {seed} under {trials}; "
            f"run the ablation first (same command without --verify)"
        )
    return complete[-1]


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / METRICS).read_text()).get("status")
    except (OSError, ValueError):
        return None


def seed_values(run_dir: Path, metric: str) -> list[float]:
    """The metric of every completed seed of the configuration that run_dir belongs to."""
    values = []
    for seed_dir in sorted(run_dir.parent.glob("seed*")):
        if _status(seed_dir) == "completed":
            value = json.loads((seed_dir / METRICS).read_text()).get(metric)
            if value is not None and math.isfinite(value):
                values.append(float(value))
    return values


def setting_differences(stored_env: dict, rerun_env: dict) -> list[str]:
    """What could make two runs of one config differ numerically, as 'key: stored -> rerun'."""

    def pick(env: dict) -> dict:
        return {
            "torch": env.get("packages", {}).get("torch"),
            "threads": env.get("torch", {}).get("threads"),
            "device": env.get("torch", {}).get("cuda_device") or "cpu",
            "commit": env.get("git", {}).get("commit"),
            "dirty": env.get("git", {}).get("dirty"),
        }

    a, b = pick(stored_env), pick(rerun_env)
    return [f"{key}: {a[key]} -> {b[key]}" for key in a if a[key] != b[key]]


def verify(
    sweep: Sweep, arms: list[str] | None = None, seed: int | None = None, tolerance: float | None = None, log=print
) -> list[Verdict]:
    import torch

    from moe_lab.training.run import run

    if sweep.arms is None:
        raise MoELabError("--verify: only ablation files (with arms) can be verified")
    names = [p["arm"] for p in sweep.grid()]
    for name in arms or []:
        if name not in names:
            raise MoELabError(f"--arms: no arm named {name!r}; arms are {', '.join(names)}")
    seed = sweep.cfg.seeds[0] if seed is None else seed
    if seed not in sweep.cfg.seeds:
        raise MoELabError(f"--seed: {seed} is not one of the ablation's seeds {list(sweep.cfg.seeds)}")
    metric = sweep.cfg.objective.metric
    chosen = [n for n in names if not arms or n in arms]
    stored = {n: stored_run(sweep, {"arm": n}, seed) for n in chosen}  # all found before any training
    out = sweep.study_dir / VERIFY / time.strftime("%Y%m%d-%H%M%S")
    verdicts = []
    for name in chosen:
        stored_dir = stored[name]
        stored_env = json.loads((stored_dir / ENV).read_text())
        stored_value = json.loads((stored_dir / METRICS).read_text())[metric]
        threads = stored_env.get("torch", {}).get("threads")
        if threads:
            torch.set_num_threads(int(threads))  # the stored run's setting: a chance of bit-identity
        cfg, _ = sweep.experiment({"arm": name}, sweep.placement(out / stored_dir.parent.name, seed))
        log(f"verify {name} seed {seed}: training again ({cfg.trainer.max_steps} steps, {threads} threads)")
        # A session of the study's HPARAMS table (its own group), not a second experiment declaration.
        result = run(cfg, quiet=True, session=({"arm": name}, f"verify arm={name}"))
        rerun_env = json.loads((result.run_dir / ENV).read_text())
        values = seed_values(stored_dir, metric)
        tol = tolerance if tolerance is not None else (2 * statistics.stdev(values) if len(values) > 1 else 0.0)
        verdicts.append(
            Verdict(
                name,
                seed,
                float(stored_value),
                float(result.metrics.get(metric, math.nan)),
                tol,
                setting_differences(stored_env, rerun_env),
            )
        )
    write_verdicts(out, metric, verdicts)
    return verdicts


def verdict_table(metric: str, verdicts: list[Verdict]) -> str:
    lines = [
        f"| arm | seed | stored {metric} | rerun | difference | tolerance | outcome | settings that differ |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.arm} | {v.seed} | {v.stored:.6f} | {v.rerun:.6f} | {v.difference:+.2e} | "
            f"{v.tolerance:.2e} | {v.outcome}{'' if v.reproduced else ' (NOT reproduced)'} | "
            f"{'; '.join(v.setting_differences) or 'none'} |"
        )
    return "\n".join(lines)


def write_verdicts(out: Path, metric: str, verdicts: list[Verdict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / VERIFY_MD).write_text(verdict_table(metric, verdicts) + "\n")
