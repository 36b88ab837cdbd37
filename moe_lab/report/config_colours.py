"""One colour per configuration of a sweep, the same in TensorBoard, every plot and report.html.

TensorBoard's link (moe_lab.report.tb_link) colours runs by a regex group: the seed runs of one
configuration (trials/<config>/seed<i>) share a colour. TensorBoard hands its palette out to the groups
in the order its run list holds them, and that list is sorted by each run's start time (the wall time of
its first event), not by name. So the plots take the colours in the same order: a configuration's colour
is the palette entry of the rank of its earliest seed run's start, which stays fixed once a sweep has run,
whatever the ranking of the results.
"""

from __future__ import annotations

from pathlib import Path

from moe_lab.report.sweep_study import ConfigRow, StudyData

# TensorBoard 2.x's default run palette (its "Defalt" colorPalette, light theme), in its order.
TENSORBOARD_PALETTE = ("#425066", "#12b5cb", "#e52592", "#f9ab00", "#9334e6", "#7cb342", "#e8710a")


def config_dir(row: ConfigRow) -> str | None:
    """The folder under trials/ holding a configuration's seed runs (None before any run started)."""
    return Path(row.run_dirs[0]).parent.name if row.run_dirs else None


def run_start_time(run_dir: Path) -> float:
    """What TensorBoard sorts its runs by: the wall time of the run's first event (inf when it has none)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first = float("inf")
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        try:
            event = next(iter(EventFileLoader(str(path)).Load()), None)
        except Exception:  # noqa: BLE001 - a damaged file only loses its place in the order
            event = None
        if event is not None:
            first = min(first, event.wall_time)
    return first


def config_colours(data: StudyData) -> dict[str, str]:
    """{configuration label: hex colour}, in TensorBoard's order of the configurations (see the module
    docstring); configurations without a run yet come last, in the table's order."""
    started = {}
    for row in data.rows:
        times = [run_start_time(data.study_dir / d) for d in row.run_dirs]
        started[row.label] = (min(times, default=float("inf")), config_dir(row) or "")
    ordered = sorted(data.rows, key=lambda r: started[r.label])
    return {row.label: TENSORBOARD_PALETTE[i % len(TENSORBOARD_PALETTE)] for i, row in enumerate(ordered)}
