"""Scalar curves read back from the TensorBoard event files of a run directory.

A run directory can hold several `events.out.tfevents.*` files: Lightning opens a new one each time a
run is resumed into the same directory, and the resumed run logs again the steps after its checkpoint.
`read_scalars` merges them in the order they were written, so a later file's value for a step replaces
an earlier one: the curve is the one the finished run actually followed.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from moe_lab.artifacts.metrics import layer_tag

EVENTS_GLOB = "events.out.tfevents.*"
CSV_METRICS = "metrics.csv"  # lightning.pytorch.loggers.CSVLogger's file in the run directory


def event_files(run_dir: str | Path) -> list[Path]:
    """The event files directly in `run_dir`, oldest first (by the creation time in their name)."""
    return sorted(Path(run_dir).glob(EVENTS_GLOB), key=_written_order)


def _written_order(path: Path) -> tuple:
    # The writers name a file events.out.tfevents.<unix seconds>.<host>.<pid>.<n>. Files of one second
    # are ordered by the wall time of their first record (the file-version event), then by name.
    parts = path.name.split(".")
    seconds = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    first = next(iter(EventFileLoader(str(path)).Load()), None)
    return seconds, first.wall_time if first is not None else 0.0, path.name


def read_scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """{step: value} of scalar `tag` over all event files of `run_dir`, later files winning.

    A run logged without TensorBoard (`trainer.loggers` without it) is read from the CSV logger's
    metrics.csv instead. A directory without either (a run that failed before logging) gives {}. A file
    still being written is read up to its last complete record.
    """
    paths = event_files(run_dir)
    if not paths:
        return _csv_scalars(Path(run_dir) / CSV_METRICS, tag)
    # A report asks one run for many tags (val/loss, every layer's load CV): parse its files once. The
    # files' sizes and times are part of the cache key, so a file still being written is read again.
    signature = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return dict(_all_scalars(signature).get(tag, {}))


def last_per_layer(runs: Iterable[tuple[str | Path, Iterable[int]]], name: str) -> dict[int, list[float]]:
    """{MoE layer: the last logged `moe/layer{i}/<name>` of each run that logged it}, layers in order.
    `runs`: (run directory, its MoE layers) pairs, e.g. the seeds of one configuration or of one arm."""
    per_layer: dict[int, list[float]] = {}
    for run_dir, layers in runs:
        for layer in layers:
            if curve := read_scalars(run_dir, layer_tag(layer, name)):
                per_layer.setdefault(int(layer), []).append(curve[max(curve)])
    return dict(sorted(per_layer.items()))


@functools.lru_cache(maxsize=32)
def _all_scalars(signature: tuple) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the files named by `signature`, later files winning."""
    curves: dict[str, dict[int, float]] = {}
    for path, _, _ in signature:
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name not in ("scalars", ""):
                    continue  # an image, text or histogram summary: only scalars are read here
                curves.setdefault(value.tag, {})[int(event.step)] = _scalar(value)
    return {tag: dict(sorted(curve.items())) for tag, curve in curves.items()}


def _csv_scalars(path: Path, tag: str) -> dict[int, float]:
    """{step: value} of column `tag` in Lightning's CSVLogger file (one row per logging call, empty cells
    for the metrics that call did not log)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return dict(
            sorted(
                (int(row["step"]), float(row[tag]))
                for row in csv.DictReader(f)
                if row.get(tag) not in (None, "") and row.get("step") not in (None, "")
            )
        )


def _scalar(value) -> float:
    # EventFileLoader migrates the legacy `simple_value` (what SummaryWriter.add_scalar writes) to a
    # rank-0 tensor; keep the legacy field as a fallback for files read by other loaders.
    if value.HasField("tensor"):
        return float(tensor_util.make_ndarray(value.tensor).item())
    return float(value.simple_value)
