"""What a sweep will cost before it runs: time from a few timed steps of each configuration's model on
this machine (cached), disk from the parameter counts.

The step times are measured, not derived from FLOPs: an assumed 100 GFLOP/s made "about 6 min" take
18-37 min on the 2-core dev machine. They are cached per machine, torch version, thread count and
model shape in `$XDG_CACHE_HOME/moe_lab/step_times.json` (default ~/.cache/moe_lab/), so a second
dry run is instant. A measurement taken while other processes keep the cores busy is used but not
cached: a dry run next to a running sweep once cached step times 2x too slow for good. "Busy" is the
CPU time other processes used during the timing (Linux /proc/stat), not the load average, which also
counts this dry run's own timing of the previous configuration for a minute after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Per run, besides its steps: start-up (data, tokenizer, logger), text samples, checkpoint writes and
# the final report's share. Measured 10-20 s per run on the 2-core dev machine; an estimate, not a fit.
RUN_OVERHEAD_S = 15.0
# Five untimed steps first: the first steps of a fresh model are slow (allocator, first grouped_mm calls);
# with two, the topk demo's steps were timed at 0.47 s where a run takes 0.33-0.38 s.
TIMED_STEPS, WARMUP_STEPS = 5, 5
# Bumped when the measurement changes, so older cached times are measured again (entries before 2 could
# have been timed on a busy machine).
MEASUREMENT_VERSION = 3


@dataclass
class StepTimes:
    train_s: float  # one training step on one micro-batch: forward, backward, clip, AdamW
    eval_s: float  # one validation batch: forward without gradients
    threads: int
    cached: bool = False
    busy: bool = False  # measured while other processes used the cores: too slow, not cached


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "moe_lab" / "step_times.json"


def _key(cfg, threads: int, concurrent: int) -> str:
    described = {
        "model": asdict(cfg.model),
        "batch": cfg.data.batch_size,
        "block": cfg.data.block_size,
        "precision": cfg.trainer.precision,
        "threads": threads,
        "concurrent": concurrent,
        "torch": torch.__version__,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "measurement": MEASUREMENT_VERSION,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]


def measure_step_times(cfg, threads: int, concurrent: int = 1) -> StepTimes:
    """Time the configuration's model on random tokens with `threads` torch threads, as a sweep worker
    runs it (CPU, float32; a GPU run is timed on the GPU when one is there). `concurrent` copies are
    timed at once, as that many workers share this machine's cores and memory: two 1-thread workers on
    the 2-core dev machine each ran 13% slower than one alone (0.376 s vs 0.33 s per step)."""
    from concurrent.futures import ThreadPoolExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # per process: each timing thread below runs its ops on `threads`
    try:
        device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
        n = concurrent if device == "cpu" else 1  # GPU workers get a device each
        torch.manual_seed(0)
        steps = [_steps_of_one_copy(cfg, device) for _ in range(n)]
        with ThreadPoolExecutor(max_workers=n) as pool:  # torch releases the GIL inside its kernels
            timed = list(pool.map(lambda copy: (_timed(copy[0]), _timed(copy[1])), steps))
        return StepTimes(
            train_s=statistics.fmean(t for t, _ in timed), eval_s=statistics.fmean(e for _, e in timed), threads=threads
        )
    finally:
        torch.set_num_threads(previous)


def _steps_of_one_copy(cfg, device: str):
    """(train step, eval step) of a fresh copy of the model, as functions to time."""
    from moe_lab.model import MoETransformer

    model = MoETransformer(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.data.batch_size, cfg.data.block_size), device=device)

    def train_step():
        out = model(x, x)
        loss = out.lm_loss + model.router_loss(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    def eval_step():
        with torch.no_grad():
            model(x, x).lm_loss.item()

    return train_step, eval_step


def _timed(step) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # the median: one slow step on a shared machine is noise


# Cores' worth of other processes' CPU time during the timing that makes it "busy": more than half a core.
BUSY_OTHER_CORES = 0.5


def _machine_cpu_s() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat: every state but idle and
    iowait), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes kept busy while the block ran: the machine's CPU time minus this
    process's own. Unlike the load average, this never counts the dry run's own timing of the previous
    configuration, and it sees load that started during the timing. None where /proc/stat is missing."""

    def __enter__(self):
        self._start = (_machine_cpu_s(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        machine, own, wall = _machine_cpu_s(), time.process_time(), time.perf_counter()
        if machine is None or self._start[0] is None or wall <= self._start[2]:
            self.cores = None
        else:
            others = (machine - self._start[0]) - (own - self._start[1])
            self.cores = max(0.0, others) / (wall - self._start[2])


def machine_busy(threads: int) -> bool:
    """Whether other processes already keep the cores busy: the 1-minute load average leaves fewer
    than `threads` cores (with a core's slack, since a shell or an editor adds a little load)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform: assume quiet
        return False
    return load > (os.cpu_count() or 1) - threads + 1.0


def step_times(cfg, threads: int, concurrent: int = 1, taken: dict | None = None) -> StepTimes:
    """Cached measurement for this machine and model shape, with `concurrent` workers of `threads`
    threads each running at once. `taken`: the measurements of this dry run so far, by model shape; a
    shape already timed (the same model under another learning rate or seed) is not timed again, even
    when its time was not cached (busy machine, read-only home): a busy dry run once timed one model 16 times."""
    path, key = cache_path(), _key(cfg, threads, concurrent)
    taken = {} if taken is None else taken
    if key in taken:
        return taken[key]
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return StepTimes(**{**cache[key], "cached": True})
    busy_before = machine_busy(threads * concurrent)  # where /proc/stat is missing: the load average
    with OtherLoad() as others:
        times = measure_step_times(cfg, threads, concurrent)
    busy = busy_before if others.cores is None else others.cores > BUSY_OTHER_CORES
    if busy:
        taken[key] = StepTimes(times.train_s, times.eval_s, threads, busy=True)
        return taken[key]
    taken[key] = times
    cache[key] = {"train_s": times.train_s, "eval_s": times.eval_s, "threads": threads}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the estimate still stands, it is only measured again next time
    return times


def run_seconds(cfg, times: StepTimes) -> float:
    """One run: its training steps (accumulate_grad_batches micro-batches each, so a little over: the
    optimizer update is timed with each), its validations (trainer.val_batches each, plus the final one
    when max_steps is not a multiple of the cadence), and the fixed overhead."""
    t = cfg.trainer
    n_val = t.max_steps // t.val_every_n_steps + (t.max_steps % t.val_every_n_steps != 0)
    train = t.max_steps * max(1, t.accumulate_grad_batches) * times.train_s
    return train + n_val * (t.val_batches or 50) * times.eval_s + RUN_OVERHEAD_S


def makespan(units: list[float], workers: int) -> float:
    """Wall time of `units` (seconds each, in claim order) on `workers` workers that each take the next
    unit when free."""
    free = [0.0] * workers
    for seconds in units:
        i = free.index(min(free))
        free[i] += seconds
    return max(free) if units else 0.0


def checkpoint_bytes(total_params: int, precision: str) -> int:
    """Bytes of one full trainer checkpoint: the weights and AdamW's two moments (float32, or the
    weights' own width in a *-true precision)."""
    width = 2 if precision in ("bf16-true", "16-true") else (8 if precision == "64-true" else 4)
    return 3 * width * total_params
