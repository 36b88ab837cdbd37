"""The sweep command line, shared by `python -m moe_lab.sweep` and `python -m moe_lab.ablate` (each entry
point passes its file loader and its report): `SWEEP.yaml [key=value ...] [--dry-run] [--workers N]`.

Re-running the same command resumes the study; several processes (or --workers) share it.
SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop the running trials at their next step boundary (passed on to
--workers), checkpoints saved and the trials waiting to be resumed first; the exit code is 128 + the signal.
Results: <output_dir>/<study>/ summary.md, trials.csv, plots/, and one run directory per trial and
seed under trials/ (`tensorboard --logdir <output_dir>/<study>` compares them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time

from moe_lab import signals
from moe_lab.artifacts.atomic import check_writable_dir
from moe_lab.artifacts.study_dir import STUDY_INFO
from moe_lab.cli import filter_known_harmless_warnings, run_main
from moe_lab.config.budget import step_tokens, training_flops, training_flops_per_token
from moe_lab.errors import Interrupted, MoELabError, signal_name
from moe_lab.model.accounting import count_model
from moe_lab.study.finished import finished_seeds as study_finished_seeds
from moe_lab.study.labels import trial_label
from moe_lab.study.storage import load_stored_study, masked_url
from moe_lab.sweep.config import Sweep


def seeds_claimed_separately(sweep: Sweep) -> bool:
    """Whether workers share a configuration's seeds (moe_lab.sweep.runner): a grid's unit of work is one
    (configuration, seed); a sampled configuration's seeds run one after another on the worker that drew it."""
    return sweep.cfg.sampler == "grid"


def planned_configurations(sweep: Sweep) -> list[dict]:
    if sweep.cfg.sampler == "grid":
        return sweep.grid()
    return [{} for _ in range(sweep.n_trials())]  # sampled later: estimate with the base experiment


def configuration_flops(sweep: Sweep) -> list[float]:
    """Training FLOPs (3x forward) of one seed of each planned configuration, by config id (a grid index, or a
    sampled trial's slot): the share of the plan a trial that ends early takes off the console's ETA."""
    return [training_flops(sweep.experiment(params)[0]) for params in planned_configurations(sweep)]


def plan_flops(sweep: Sweep) -> float:
    """Training FLOPs (3x forward, all seeds) of the planned configurations: what the console's ETA counts."""
    return sum(configuration_flops(sweep)) * len(sweep.cfg.seeds)


def finished_seeds(sweep: Sweep) -> dict[int, set[int]] | None:
    """Config id -> the seeds of it that a study already on disk finished (completed or pruned); a
    configuration that ended has them all (None: no study yet)."""
    if not (sweep.study_dir / STUDY_INFO).is_file():
        return None
    study = load_stored_study(sweep.study_dir, sweep.name, sweep.storage_url)
    return study_finished_seeds(study.get_trials(deepcopy=False), sweep.cfg.seeds)


def worker_threads(workers: int) -> int:
    """Torch threads of each worker, as cli() and spawn_workers set them."""
    import torch

    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch.get_num_threads()


def dry_run(sweep: Sweep, workers: int = 1, gflops: float | None = None) -> None:
    from moe_lab.sweep import estimate

    planned = planned_configurations(sweep)
    seeds_done = finished_seeds(sweep)
    done = None if seeds_done is None else {i for i, seeds in seeds_done.items() if seeds >= set(sweep.cfg.seeds)}
    if sweep.cfg.sampler == "grid":  # config id -> seeds still to train
        finished = seeds_done or {}
        left = {i: [s for s in sweep.cfg.seeds if s not in finished.get(i, set())] for i in range(len(planned))}
        todo = {i: seeds for i, seeds in left.items() if seeds}
    else:
        todo = {i: list(sweep.cfg.seeds) for i in range(max(0, len(planned) - len(done or ())))}
    print(
        f"study {sweep.name}: {sweep.cfg.sampler} sampler, {len(planned)} configurations x "
        f"{len(sweep.cfg.seeds)} seed{'s' * (len(sweep.cfg.seeds) > 1)}, objective {sweep.cfg.objective.metric} "
        f"({sweep.cfg.objective.direction}), "
        f"compute matching: {sweep.cfg.compute_matching}"
    )
    if done is not None and not todo:
        print(
            f"study {sweep.name} in {sweep.study_dir} is complete: {len(done)} of {len(planned)} configurations "
            f"finished; running it again only rewrites its report (python -m moe_lab.report {sweep.study_dir})"
        )
        return
    threads = worker_threads(workers)
    concurrent = min(workers, max(1, (os.cpu_count() or 1) // threads))  # workers training at once here
    units, rows, end_bytes, live_bytes, measured, taken = [], [], 0, 0, [], {}

    def times_of(cfg, threads: int, concurrent: int) -> estimate.StepTimes:
        if gflops:  # the old rule of thumb, on request: FLOPs (3x forward) at an assumed rate
            # One micro-batch, as the measured step times are; run_seconds counts the accumulation.
            micro_batch = step_tokens(cfg.data.batch_size, cfg.data.block_size)
            train_s = training_flops_per_token(cfg) * micro_batch / (gflops * 1e9)
            return estimate.StepTimes(train_s=train_s, eval_s=train_s / 3, threads=threads)
        measured.append(estimate.step_times(cfg, threads, concurrent, taken))
        return measured[-1]

    first_s = 0.0  # prerequisite runs: trained before the configurations, one at a time
    if sweep.prerequisites is not None:
        from moe_lab.sweep import prerequisite_runs

        rows, first_s = prerequisite_runs.plan(sweep, times_of)
    for i, params in enumerate(planned):
        cfg, matched = sweep.experiment(params)
        counts = count_model(cfg.model, cfg.data.block_size)
        times = times_of(cfg, threads, concurrent)
        seconds = estimate.run_seconds(cfg, times)
        state = "done" if done is not None and i not in todo else f"{seconds:5.0f} s/run"
        if i in todo and len(todo[i]) < len(sweep.cfg.seeds):
            state += f" ({len(sweep.cfg.seeds) - len(todo[i])} of {len(sweep.cfg.seeds)} seeds done)"
        if i in todo:
            seeds = [seconds] * len(todo[i])
            units += seeds if seeds_claimed_separately(sweep) else [sum(seeds)]
        full = estimate.checkpoint_bytes(counts.total_params, cfg.trainer.precision)
        keep = cfg.trainer.keep_checkpoints
        end_bytes += len(sweep.cfg.seeds) * {"all": 2 * full, "best_weights": full // 3, "none": 0}[keep]
        live_bytes = max(live_bytes, 2 * full)  # a live run: best.ckpt and last.ckpt in full
        width = f" expert_hidden={matched.expert_hidden}" if matched else ""
        rows.append(
            f"  {i:>3}  {trial_label(params) if params else '(sampled)':<28} active "
            f"{counts.total_active_params / 1e6:6.2f}M  total {counts.total_params / 1e6:6.2f}M  "
            f"{state}{width}"
        )
    print("\n".join(rows))
    if done:
        print(f"{len(done)} configurations already finished in {sweep.study_dir}; the estimate is for the rest")
    wall = first_s + estimate.makespan(units, workers)
    how = (
        f"assuming {gflops:g} GFLOP/s"
        if gflops
        else f"step times measured on this machine at {threads} thread{'s' * (threads > 1)} per worker, "
        f"{concurrent} at once"
        + (" (cached in " if all(t.cached for t in measured) else " (now cached in ")
        + f"{estimate.cache_path()}, delete it to measure again); more load on the machine makes it longer"
    )
    if any(t.busy for t in measured):
        how = how.replace(" (now cached in ", " (cached, except those timed while busy, in ")
        how += (
            "; NOTE: other processes kept the cores busy while timing, so this estimate is too long and those"
            " times were not cached: dry-run again on a quiet machine"
        )
    if first_s:
        how += f"; the first {first_s / 60:.0f} min train the prerequisite runs one at a time"
    if stops := sweep.stops_early():
        how += f"; every run to the end: an upper bound, as {stops} may stop some early"
    print(f"estimated time: about {wall / 60:.0f} min with {workers} worker{'s' * (workers > 1)} ({how})")
    print(
        f"estimated disk: {end_bytes / 1e6:.0f} MB of checkpoints at the end (keep_checkpoints="
        f"{sweep.cfg.keep_checkpoints}), up to {workers * live_bytes / 1e6:.0f} MB more while runs are live, "
        f"plus TensorBoard logs; storage {masked_url(sweep.storage_url)}"
    )


def check_workers(sweep: Sweep, workers: int, oversubscribe: bool) -> None:
    """--workers within what the host has: on CPU its cores (more workers than cores share them and finish
    later than fewer would); GPU hosts are checked per device group (device_groups)."""
    if workers < 1:
        raise MoELabError("--workers: must be >= 1")
    cores = os.cpu_count() or 1
    if workers <= cores or oversubscribe or (workers > 1 and visible_gpus(sweep)[0]):
        return
    raise MoELabError(
        f"--workers: {workers} workers on a host with {cores} cores would share them and finish later than "
        f"{cores}; use --workers {cores}, or pass --oversubscribe to run {workers} anyway"
    )


@contextlib.contextmanager
def workers_stopped(processes: list[subprocess.Popen]):
    """When a stop signal ends this process's part (Interrupted), wait for its worker processes: the signal was
    passed on to them (signals.forwarding), and each hands its trial back at its next step boundary."""
    try:
        yield
    except Interrupted:
        for p in processes:
            p.wait()
        raise


def spawn_workers(module: str, argv: list[str], n: int, devices: list[str] | None = None) -> list[subprocess.Popen]:
    """n worker processes. On a GPU host each gets its own device group (CUDA_VISIBLE_DEVICES), so
    Lightning's devices/strategy settings apply within it; on CPU they split the cores."""
    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    # MOE_LAB_SWEEP_CONSOLE: the parent's console reports these workers' trials; they print nothing.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MOE_LAB_SWEEP_THREADS": str(threads),
        "MOE_LAB_SWEEP_CONSOLE": "parent",
    }
    cmd = [sys.executable, "-m", module, *argv, "--worker-only"]
    if devices:
        return [
            subprocess.Popen(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": group, "MOE_LAB_SWEEP_CONSOLE": "parent"})
            for group in devices
        ]
    return [subprocess.Popen(cmd, env=env) for _ in range(n)]


def devices_per_trial(devices: str) -> int:
    """How many accelerators one trial's trainer.devices asks for ("auto" within a group: 1)."""
    devices = devices.replace(" ", "")
    if devices == "auto":
        return 1
    return len(devices.split(",")) if "," in devices else max(1, int(devices))


def device_groups(n_workers: int, per_trial: int, gpu_ids: list[str]) -> list[str] | None:
    """One comma-separated CUDA_VISIBLE_DEVICES value per worker, or None on a host without GPUs."""
    if not gpu_ids or n_workers < 2:
        return None
    if n_workers * per_trial > len(gpu_ids):
        raise MoELabError(
            f"--workers: {n_workers} workers x {per_trial} device(s) per trial (trainer.devices) "
            f"need {n_workers * per_trial} GPUs; this host has {len(gpu_ids)}"
        )
    return [",".join(gpu_ids[i * per_trial : (i + 1) * per_trial]) for i in range(n_workers)]


def visible_gpus(sweep: Sweep) -> tuple[list[str], int]:
    """(the GPU ids this process may use, devices per trial), from the base experiment's trainer."""
    trainer = sweep.base_config.trainer
    if trainer.accelerator not in ("auto", "gpu", "cuda"):
        return [], 1
    import torch

    if not torch.cuda.is_available():
        return [], 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return ids, devices_per_trial(trainer.devices)


def quiet_console() -> None:
    """Only what a researcher needs on the sweep console: the known-harmless warnings are silenced by
    their exact message, Optuna's per-study info lines are dropped; every other warning still shows."""
    import optuna

    filter_known_harmless_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def cli(argv, prog: str, doc: str, loader, reporter, epilog: str = "") -> int:
    """The command line shared by sweeps and ablations (they differ in file format and report; `epilog`:
    more of --help, e.g. the options of an entry point's own modes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = prog.split()[-1]
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, epilog=epilog or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", help="sweep or ablation YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep file")
    parser.add_argument("--dry-run", action="store_true", help="print the planned trials and cost, run nothing")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the configurations whose trials all failed (after fixing the cause)",
    )
    parser.add_argument(
        "--oversubscribe",
        action="store_true",
        help="allow more --workers than this host has cores (on GPU hosts: device groups)",
    )
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--assume-gflops",
        type=float,
        default=None,
        help="--dry-run: estimate from FLOPs at this rate instead of timing steps here",
    )
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options

    def sweep_or_dry_run() -> int:
        sweep = loader(args.sweep, args.overrides)
        check_workers(sweep, args.workers, args.oversubscribe)
        if args.dry_run:
            dry_run(sweep, args.workers, args.assume_gflops)
            return 0
        check_writable_dir(sweep.cfg.output_dir, "output_dir")  # before the study folder is made
        from moe_lab.sweep.runner import open_study, run_worker

        if os.environ.get("MOE_LAB_SWEEP_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["MOE_LAB_SWEEP_THREADS"]))
        quiet_console()
        if args.worker_only:
            quiet = os.environ.get("MOE_LAB_SWEEP_CONSOLE") == "parent"
            run_worker(
                sweep,
                log=(lambda msg: None) if quiet else (lambda msg: print(f"[worker {os.getpid()}] {msg}", flush=True)),
            )
            return 0
        start = time.time()
        study = open_study(sweep, retry=args.retry_failed)  # before any worker starts claiming
        print(
            f"study {sweep.name} in {sweep.study_dir} ({masked_url(sweep.storage_url)}); each run's Lightning "
            f"output goes to its train.log",
            flush=True,
        )
        if sweep.prerequisites is not None:  # before any worker: the arms start from them
            from moe_lab.sweep import prerequisite_runs

            prerequisite_runs.train(sweep, log=lambda msg: print(msg, flush=True))
        gpu_ids, per_trial = visible_gpus(sweep) if args.workers > 1 else ([], 1)
        groups = device_groups(args.workers, per_trial, gpu_ids)
        from moe_lab.sweep.console import SweepConsole

        console = SweepConsole(sweep, study, planned_flops=plan_flops(sweep), config_flops=configuration_flops(sweep))
        if groups:  # every worker a subprocess with its own devices; this one only watches
            extra = spawn_workers(module, [args.sweep, *args.overrides], args.workers, devices=groups)
            print(f"{args.workers} workers on GPUs " + " | ".join(groups), flush=True)
            with signals.forwarding(extra), console, workers_stopped(extra):
                for p in extra:
                    p.wait()
        else:
            extra = spawn_workers(module, [args.sweep, *args.overrides], args.workers - 1) if args.workers > 1 else []
            if extra:
                import torch

                torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
            with signals.forwarding(extra), console, workers_stopped(extra):
                run_worker(sweep, log=lambda msg: None)
        failed_workers = sum(p.wait() != 0 for p in extra)
        print(f"sweep finished in {time.time() - start:.0f} s", flush=True)
        reporter(sweep.study_dir, sweep.storage_url)
        return 1 if failed_workers else 0

    def resume_hint(stop: Interrupted) -> str:
        if args.worker_only and os.environ.get("MOE_LAB_SWEEP_CONSOLE") == "parent":
            return ""  # the parent says it
        return (
            f"interrupted by {signal_name(stop.signum)}: trials in progress wait, with their checkpoints, to be "
            f"resumed; continue the study with\n  {prog} {shlex.join(argv)}"
        )

    return run_main(sweep_or_dry_run, interrupted=resume_hint, stop_signals=True)
