"""The sweep console: one live view of the whole study, whichever worker runs which trial.

It reads only what the workers write anyway: the Optuna storage (trial states) and each running seed's
progress.json (moe_lab.callbacks.progress_file). On a terminal it is a `rich` table redrawn every second: one
row per running trial (configuration, seed, step/total, last train/val loss, tokens/s) under a line of
counts of trials (done, pruned, failed, running, waiting; a grid's trial is one configuration and seed),
elapsed time and an ETA. Elsewhere (CI, nohup, a pipe)
it prints plain lines: one per trial that starts or ends, and a status line every `plain_every_s`.

ETA: the planned training FLOPs (the dry run's count, 3x forward per token) left, divided by the FLOP/s
measured since the console started.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

from optuna.trial import TrialState

from moe_lab.artifacts.run_dir import PROGRESS
from moe_lab.artifacts.study_dir import (
    TRIAL_ERROR,
    TRIAL_LABEL,
    TRIAL_OBJECTIVE_MEAN,
    TRIAL_PRUNE_REASON,
    TRIALS,
    trial_unit,
)

ENDED = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@dataclass
class Snapshot:
    counts: Counter  # done / pruned / failed / running / waiting, by unit of work (latest trial of each)
    running: list[dict]  # one per running trial: label, seed, progress.json fields
    events: list[str]  # trials that started or ended since the previous snapshot
    elapsed_s: float
    eta_s: float | None
    done_flops: float = 0.0
    planned_flops: float = 0.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


class SweepConsole:
    """Watch `study` (an optuna.Study) of `sweep` from a background thread while the workers train.
    `planned_flops`: the dry run's cost of the whole sweep (all configurations and seeds)."""

    def __init__(
        self,
        sweep,
        study,
        planned_flops: float,
        stream=None,
        live: bool | None = None,
        refresh_s: float = 1.0,
        plain_every_s: float = 30.0,
    ):
        self.sweep, self.study, self.planned_flops = sweep, study, planned_flops
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.refresh_s, self.plain_every_s = refresh_s, plain_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.time()
        self._seen: dict[int, str] = {}  # trial number -> last state reported
        self._flops_at_start: float | None = None
        self._primed = False  # a first snapshot has been taken

    # ---- reading

    def _progress(self, trial) -> list[dict]:
        label, (config_id, seed) = trial.user_attrs.get(TRIAL_LABEL), trial_unit(trial)
        if label is None:
            return []
        trial_dir = self.sweep.study_dir / TRIALS / f"t{config_id:03d}-{label}"
        # A (configuration, seed) trial's own runs only: seedS and its retries seedS.retryN.
        patterns = ["seed*"] if seed is None else [f"seed{seed}", f"seed{seed}.retry*"]
        out = []
        for path in sorted(p for pattern in patterns for p in trial_dir.glob(f"{pattern}/{PROGRESS}")):
            try:
                out.append({"seed": path.parent.name.removeprefix("seed"), **json.loads(path.read_text())})
            except (OSError, ValueError):
                continue  # being replaced right now: read it next time
        return out

    def snapshot(self) -> Snapshot:
        trials = self.study.get_trials(deepcopy=False)
        latest = {}
        for t in sorted(trials, key=lambda t: t.number):
            latest[trial_unit(t)] = t
        counts = Counter()
        running, events, done_flops = [], [], 0.0
        for (_, seed), t in latest.items():
            state = ENDED.get(t.state, "running" if t.state == TrialState.RUNNING else "waiting")
            counts[state] += 1
            label = t.user_attrs.get(TRIAL_LABEL) or "?"
            unit = label if seed is None else f"{label} seed {seed}"
            seeds = self._progress(t)
            done_flops += sum(p.get("step", 0) * p.get("flops_per_step", 0.0) for p in seeds)
            if state == "running":
                current = [p for p in seeds if p.get("status") == "running"] or seeds[-1:]
                unit_seed = {} if seed is None else {"seed": seed}  # known before its progress.json exists
                running.append({"trial": t.number, "label": label, **unit_seed, **(current[-1] if current else {})})
            if self._seen.get(t.number) != state and state != "waiting":
                # A trial shorter than one refresh goes from waiting to ended between two snapshots:
                # it still gets its "started" line (not one that had ended before the console began).
                if state == "running" or (self._seen.get(t.number) is None and self._primed):
                    events.append(f"trial {t.number} started: {unit}")
                if state != "running":
                    value = t.value if t.value is not None else t.user_attrs.get(TRIAL_OBJECTIVE_MEAN)
                    why = t.user_attrs.get(TRIAL_ERROR) or t.user_attrs.get(TRIAL_PRUNE_REASON) or ""
                    events.append(
                        f"trial {t.number} {state}: {unit}"
                        + (f", {self.sweep.cfg.objective.metric} = {value:.4f}" if value is not None else "")
                        + (f" ({why})" if why and state != "done" else "")
                    )
                self._seen[t.number] = state
        counts["waiting"] += max(0, self.sweep.n_trials() - len(latest))  # not yet sampled (non-grid)
        elapsed = time.time() - self._start
        if self._flops_at_start is None:
            self._flops_at_start = done_flops
        self._primed = True  # trials seen from now on ended while the console watched
        measured = (done_flops - self._flops_at_start) / elapsed if elapsed > 0 else 0.0
        left = max(0.0, self.planned_flops - done_flops)
        eta = left / measured if measured > 0 else None
        if not counts["running"] and not counts["waiting"]:
            eta = 0.0
        return Snapshot(counts, running, events, elapsed, eta, done_flops, self.planned_flops)

    # ---- drawing

    def status_line(self, snap: Snapshot) -> str:
        c = snap.counts
        return (
            f"{c['done']} done, {c['pruned']} pruned, {c['failed']} failed, {c['running']} running, "
            f"{c['waiting']} waiting; elapsed {_duration(snap.elapsed_s)}, ETA {_duration(snap.eta_s)}"
        )

    @staticmethod
    def trial_line(row: dict) -> str:
        if "step" not in row:  # no progress.json yet: building the model and data
            seed = f" seed {row['seed']}" if "seed" in row else ""
            return f"  trial {row['trial']} {row['label']}{seed}: starting"
        return (
            f"  trial {row['trial']} {row['label']} seed {row.get('seed', '?')}: step "
            f"{row.get('step', 0)}/{row.get('max_steps', '?')}, train loss {_num(row.get('train_loss'), '{:.4f}')}, "
            f"val loss {_num(row.get('val_loss'), '{:.4f}')}, {_num(row.get('tokens_per_s'), '{:.0f}')} tok/s"
        )

    def _table(self, snap: Snapshot):
        from rich.table import Table

        table = Table(title=f"sweep {self.sweep.name}: {self.status_line(snap)}", title_justify="left", expand=False)
        for name, justify in (
            ("trial", "right"),
            ("configuration", "left"),
            ("seed", "right"),
            ("step", "right"),
            ("train loss", "right"),
            ("val loss", "right"),
            ("tok/s", "right"),
        ):
            table.add_column(name, justify=justify)
        for row in snap.running:
            table.add_row(
                str(row["trial"]),
                row["label"],
                str(row.get("seed", "?")),
                f"{row.get('step', 0)}/{row.get('max_steps', '?')}",
                _num(row.get("train_loss"), "{:.4f}"),
                _num(row.get("val_loss"), "{:.4f}"),
                _num(row.get("tokens_per_s"), "{:.0f}"),
            )
        return table

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        with Live(self._table(self.snapshot()), console=console, refresh_per_second=4, transient=False) as live:
            while not self._stop.wait(self.refresh_s):
                snap = self.snapshot()
                for event in snap.events:
                    console.print(event)
                live.update(self._table(snap))
            snap = self.snapshot()
            for event in snap.events:
                console.print(event)
            live.update(self._table(snap))

    def _run_plain(self) -> None:
        last_status, last_counts = 0.0, None
        while True:
            stopping = self._stop.wait(self.refresh_s)
            snap = self.snapshot()
            lines = list(snap.events)
            due = time.monotonic() - last_status >= self.plain_every_s
            if snap.events or due or (stopping and snap.counts != last_counts):
                lines.append(self.status_line(snap))
                lines += [self.trial_line(row) for row in snap.running]
                last_status, last_counts = time.monotonic(), snap.counts
            if lines:
                print("\n".join(lines), file=self.stream, flush=True)
            if stopping:
                return

    # ---- lifecycle

    def __enter__(self) -> SweepConsole:
        self._thread = threading.Thread(
            target=self._run_live if self.live else self._run_plain, name="sweep-console", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
