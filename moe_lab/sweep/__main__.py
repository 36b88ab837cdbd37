"""Optuna sweeps: `python -m moe_lab.sweep SWEEP.yaml [key=value ...] [--dry-run] [--workers N]`.

Re-running the same command resumes the study; several processes (or --workers) share it.
Results: <output_dir>/<study>/ summary.md, trials.csv, plots/, and one run directory per trial and
seed under trials/ (`tensorboard --logdir <output_dir>/<study>` compares them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from moe_lab.errors import MoELabError
from moe_lab.model.accounting import count_model
from moe_lab.sweep.config import Sweep, load_sweep, trial_label

# Effective training throughput of the 2-core dev machine on the shipped sweeps (FLOPs counted as
# 3x forward), from `python -m moe_lab.bench train`; used only for --dry-run's time estimate.
DEFAULT_GFLOPS = 100.0


def planned_configurations(sweep: Sweep) -> list[dict]:
    if sweep.cfg.sampler == "grid":
        return sweep.grid()
    return [{} for _ in range(sweep.n_trials())]  # sampled later: estimate with the base experiment


def plan(sweep: Sweep):
    """(params, config, matched width, counts, training FLOPs over all seeds) per planned configuration."""
    from moe_lab.sweep.runner import Objective

    objective = Objective(sweep)
    for params in planned_configurations(sweep):
        cfg, matched = objective.experiment(params, sweep.study_dir / "trials" / "dry-run", sweep.cfg.seeds[0])
        counts = count_model(cfg.model, cfg.data.block_size)
        tokens = cfg.trainer.max_steps * cfg.data.batch_size * cfg.data.block_size
        yield params, cfg, matched, counts, 3 * counts.total_flops_per_token * tokens * len(sweep.cfg.seeds)


def dry_run(sweep: Sweep, gflops: float) -> None:
    total_flops, rows = 0.0, []
    for i, (params, cfg, matched, counts, flops) in enumerate(plan(sweep)):
        total_flops += flops
        width = f" expert_hidden={matched.expert_hidden}" if matched else ""
        rows.append(f"  {i:>3}  {trial_label(params) if params else '(sampled)':<40} active "
                    f"{counts.total_active_params / 1e6:6.2f}M  total {counts.total_params / 1e6:6.2f}M"
                    f"  {flops / 1e12:7.2f} TFLOP{width}")
    print(f"study {sweep.name}: {sweep.cfg.sampler} sampler, {len(rows)} configurations x "
          f"{len(sweep.cfg.seeds)} seeds, objective {sweep.cfg.objective.metric} ({sweep.cfg.objective.direction}), "
          f"compute matching: {sweep.cfg.compute_matching}")
    print("\n".join(rows))
    hours = total_flops / (gflops * 1e9) / 3600
    print(f"estimated cost: {total_flops / 1e12:.1f} TFLOP, about {hours * 60:.0f} min at {gflops:.0f} GFLOP/s "
          f"(one worker); storage {sweep.storage_url}")


def spawn_workers(module: str, argv: list[str], n: int) -> list[subprocess.Popen]:
    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    # MOE_LAB_SWEEP_CONSOLE: the parent's console reports these workers' trials; they print nothing.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MOE_LAB_SWEEP_THREADS": str(threads),
           "MOE_LAB_SWEEP_CONSOLE": "parent"}
    cmd = [sys.executable, "-m", module, *argv, "--worker-only"]
    return [subprocess.Popen(cmd, env=env) for _ in range(n)]


def _sweep_report(study_dir) -> None:
    from moe_lab.report import report_study

    for path in report_study(study_dir).values():
        print(f"  wrote {path}")


def quiet_console() -> None:
    """Only what a researcher needs on the sweep console: the known-harmless warnings are silenced by
    their exact message, Optuna's per-study info lines are dropped; every other warning still shows."""
    import optuna

    from moe_lab.runtime import filter_known_harmless_warnings

    filter_known_harmless_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, prog="python -m moe_lab.sweep", doc=__doc__, loader=load_sweep, reporter=_sweep_report)


def cli(argv, prog: str, doc: str, loader, reporter) -> int:
    """The command line shared by sweeps and ablations (they differ in file format and report)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = prog.split()[-1]
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep or ablation YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep file")
    parser.add_argument("--dry-run", action="store_true", help="print the planned trials and cost, run nothing")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run again the configurations whose trials all failed (after fixing the cause)")
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--assume-gflops", type=float, default=DEFAULT_GFLOPS, help="for --dry-run's estimate")
    args = parser.parse_args(argv)
    try:
        sweep = loader(args.sweep, args.overrides)
        if args.workers < 1:
            raise MoELabError("--workers: must be >= 1")
        if args.dry_run:
            dry_run(sweep, args.assume_gflops)
            return 0
        from moe_lab.sweep.runner import open_study, run_worker

        if os.environ.get("MOE_LAB_SWEEP_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["MOE_LAB_SWEEP_THREADS"]))
        quiet_console()
        if args.worker_only:
            quiet = os.environ.get("MOE_LAB_SWEEP_CONSOLE") == "parent"
            run_worker(sweep, log=(lambda msg: None) if quiet else
                       (lambda msg: print(f"[worker {os.getpid()}] {msg}", flush=True)))
            return 0
        start = time.time()
        print(f"study {sweep.name} in {sweep.study_dir} ({sweep.storage_url}); each run's Lightning output "
              f"goes to its train.log", flush=True)
        study = open_study(sweep, retry=args.retry_failed)  # before any worker starts claiming
        extra = spawn_workers(module, [args.sweep, *args.overrides], args.workers - 1) if args.workers > 1 else []
        if extra:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
        from moe_lab.sweep.console import SweepConsole

        with SweepConsole(sweep, study, planned_flops=sum(p[-1] for p in plan(sweep))):
            run_worker(sweep, log=lambda msg: None)
        failed_workers = sum(p.wait() != 0 for p in extra)
        print(f"sweep finished in {time.time() - start:.0f} s", flush=True)
        reporter(sweep.study_dir)
        return 1 if failed_workers else 0
    except MoELabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
