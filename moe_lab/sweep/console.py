"""The sweep console: one live view of the whole study, whichever worker runs which trial.

It reads only what the workers write anyway: the Optuna storage (trial states) and each running seed's
progress.json (moe_lab.callbacks.progress_file). On a terminal it is a `rich` table redrawn every second: one
row per running trial (configuration, seed, step/total, last train/val loss, tokens/s) under a line of
counts of trials (done, pruned, failed, running, waiting, and interrupted: waiting to be resumed after a stop
signal ended their worker; a grid's trial is one configuration and seed),
elapsed time and an ETA. Elsewhere (CI, nohup, a pipe)
it prints plain lines: one per trial that starts or ends, and a status line every `plain_every_s`.

ETA: the planned training FLOPs (the dry run's count, 3x forward per token) left, divided by the FLOP/s
trained since the console started. A trial that ended takes its whole share of the plan off what is left,
whatever it trained: a pruned or failed one stops early, a reused run or a duplicate (moe_lab.sweep.objective)
trains nothing, and neither adds to the rate. With a pruner (or the collapse detector) on, the ETA is an upper
bound, and says so: more trials may stop early. Lines wider than the terminal cut the configuration's label short.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import TrialState

from moe_lab.artifacts.run_dir import PROGRESS
from moe_lab.artifacts.run_index import REUSED
from moe_lab.artifacts.study_dir import (
    TRIAL_DUPLICATE_OF,
    TRIAL_ERROR,
    TRIAL_INTERRUPTED,
    TRIAL_LABEL,
    TRIAL_OBJECTIVE_MEAN,
    TRIAL_PRUNE_REASON,
    TRIALS,
    trial_unit,
)

LABEL_MIN = 12  # a label is never cut shorter than this: a line that wraps beats one that names nothing
ENDED = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@dataclass
class Snapshot:
    counts: Counter  # done / pruned / failed / running / waiting / interrupted, by unit (latest trial of each)
    running: list[dict]  # one per running trial: label, seed, progress.json fields
    events: list[str]  # trials that started or ended since the previous snapshot
    elapsed_s: float
    eta_s: float | None
    done_flops: float = 0.0  # trained while the study ran (reused runs not counted)
    planned_flops: float = 0.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _fitted(head: str, label: str, tail: str, width: int | None) -> str:
    """head + label + tail, the label cut short (...) where the line would be wider than `width`: a wrapped line
    in an 80-column terminal is harder to read than a short label (the trial's started line has it in full)."""
    room = len(label) if width is None else max(LABEL_MIN, width - len(head) - len(tail))
    return head + (label if len(label) <= room else label[: room - 1] + "…") + tail


class SweepConsole:
    """Watch `study` (an optuna.Study) of `sweep` from a background thread while the workers train.
    `planned_flops`: the dry run's cost of the whole sweep (all configurations and seeds); `config_flops`: one
    seed's share of it for each configuration, by config id (moe_lab.sweep.command.configuration_flops)."""

    def __init__(
        self,
        sweep,
        study,
        planned_flops: float,
        stream=None,
        live: bool | None = None,
        refresh_s: float = 1.0,
        plain_every_s: float = 30.0,
        config_flops: Sequence[float] = (),
    ):
        self.sweep, self.study, self.planned_flops, self.config_flops = sweep, study, planned_flops, config_flops
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
                progress = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now: read it next time
            run = path.parent
            out.append({"seed": run.name.removeprefix("seed"), "reused": (run / REUSED).is_file(), **progress})
        return out

    def _planned(self, config_id: int, seed: int | None) -> float:
        """The plan's FLOPs for one unit: a seed of a configuration, or all its seeds (0 where unknown)."""
        if not 0 <= config_id < len(self.config_flops):
            return 0.0
        return self.config_flops[config_id] * (1 if seed is not None else len(self.sweep.cfg.seeds))

    def snapshot(self) -> Snapshot:
        trials = self.study.get_trials(deepcopy=False)
        latest = {}
        for t in sorted(trials, key=lambda t: t.number):
            latest[trial_unit(t)] = t
        counts = Counter()
        running, events, done_flops, accounted = [], [], 0.0, 0.0
        for (config_id, seed), t in latest.items():
            state = ENDED.get(t.state, "running" if t.state == TrialState.RUNNING else "waiting")
            if state == "waiting" and t.user_attrs.get(TRIAL_INTERRUPTED):
                state = "interrupted"
            counts[state] += 1
            label = t.user_attrs.get(TRIAL_LABEL) or "?"
            unit = label if seed is None else f"{label} seed {seed}"
            seeds = self._progress(t)
            flops = [p.get("step", 0) * p.get("flops_per_step", 0.0) for p in seeds]
            done_flops += sum(f for f, p in zip(flops, seeds, strict=True) if not p["reused"])
            ended = state in ENDED.values()  # its share of the plan is spent, however much of it was trained
            accounted += max(sum(flops), self._planned(config_id, seed)) if ended else sum(flops)
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
                    if state == "done":
                        twin = t.user_attrs.get(TRIAL_DUPLICATE_OF)
                        why = "" if twin is None else f"same parameters as trial {twin}"
                    if state == "interrupted":
                        why = f"{t.user_attrs[TRIAL_INTERRUPTED]}; resumes from its checkpoint when the sweep reruns"
                    events.append(
                        f"trial {t.number} {state}: {unit}"
                        + (f", {self.sweep.cfg.objective.metric} = {value:.4f}" if value is not None else "")
                        + (f" ({why})" if why else "")
                    )
                self._seen[t.number] = state
        counts["waiting"] += max(0, self.sweep.n_trials() - len(latest))  # not yet sampled (non-grid)
        elapsed = time.time() - self._start
        if self._flops_at_start is None:
            self._flops_at_start = done_flops
        self._primed = True  # trials seen from now on ended while the console watched
        measured = (done_flops - self._flops_at_start) / elapsed if elapsed > 0 else 0.0
        left = max(0.0, self.planned_flops - accounted)
        eta = left / measured if measured > 0 else None
        if not counts["running"] and not counts["waiting"]:
            eta = 0.0
        return Snapshot(counts, running, events, elapsed, eta, done_flops, self.planned_flops)

    # ---- drawing

    def status_line(self, snap: Snapshot) -> str:
        c = snap.counts
        return (
            f"{c['done']} done, {c['pruned']} pruned, {c['failed']} failed, {c['running']} running, "
            f"{c['waiting']} waiting" + (f", {c['interrupted']} interrupted" if c["interrupted"] else "") + "; "
            f"elapsed {_duration(snap.elapsed_s)}, ETA {_duration(snap.eta_s)}"
            + (" (upper bound)" if snap.eta_s and self.sweep.stops_early() else "")
        )

    @staticmethod
    def trial_line(row: dict, width: int | None = None) -> str:
        """One running trial, its label cut short where the line would be wider than `width` columns."""
        head = f"  trial {row['trial']} "
        if "step" not in row:  # no progress.json yet: building the model and data
            seed = f" seed {row['seed']}" if "seed" in row else ""
            return _fitted(head, row["label"], f"{seed}: starting", width)
        return _fitted(
            head,
            row["label"],
            f" seed {row.get('seed', '?')}: step {row.get('step', 0)}/{row.get('max_steps', '?')}, "
            f"train loss {_num(row.get('train_loss'), '{:.4f}')}, val loss {_num(row.get('val_loss'), '{:.4f}')}, "
            f"{_num(row.get('tokens_per_s'), '{:.0f}')} tok/s",
            width,
        )

    def _table(self, snap: Snapshot, width: int | None = None):
        from rich.table import Table

        table = Table(title=f"sweep {self.sweep.name}: {self.status_line(snap)}", title_justify="left", expand=False)
        names = ("trial", "configuration", "seed", "step", "train loss", "val loss", "tok/s")
        rows = [
            (
                str(row["trial"]),
                row["label"],
                str(row.get("seed", "?")),
                f"{row.get('step', 0)}/{row.get('max_steps', '?')}",
                _num(row.get("train_loss"), "{:.4f}"),
                _num(row.get("val_loss"), "{:.4f}"),
                _num(row.get("tokens_per_s"), "{:.0f}"),
            )
            for row in snap.running
        ]
        # Wider than `width`: the configuration gets what the numbers leave (each column takes 3 more for its
        # padding and border), cut short, instead of every column wrapping.
        widths = [max(map(len, column)) for column in zip(names, *rows, strict=True)]  # header and cells
        numbers = sum(widths) - widths[names.index("configuration")]
        label_width = None if width is None else max(LABEL_MIN, width - numbers - 3 * len(names) - 1)
        for name in names:
            justify, most = ("left", label_width) if name == "configuration" else ("right", None)
            table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", max_width=most)
        for cells in rows:
            table.add_row(*cells)
        return table

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        first = self._table(self.snapshot(), console.width)
        with Live(first, console=console, refresh_per_second=4, transient=False) as live:
            while not self._stop.wait(self.refresh_s):
                snap = self.snapshot()
                for event in snap.events:
                    console.print(event)
                live.update(self._table(snap, console.width))
            snap = self.snapshot()
            for event in snap.events:
                console.print(event)
            live.update(self._table(snap, console.width))

    def _run_plain(self) -> None:
        last_status, last_counts = 0.0, None
        while True:
            stopping = self._stop.wait(self.refresh_s)
            snap = self.snapshot()
            lines = list(snap.events)
            due = time.monotonic() - last_status >= self.plain_every_s
            if snap.events or due or (stopping and snap.counts != last_counts):
                lines.append(self.status_line(snap))
                width = shutil.get_terminal_size().columns
                lines += [self.trial_line(row, width) for row in snap.running]
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
