"""The layout of one sweep or ablation study directory (`<output_dir>/<study>/`): the file names the
sweep writes and the reports read."""

from __future__ import annotations

STUDY_INFO = "study_info.json"  # what the report needs to open the study: storage URL, base, seeds
SWEEP_COPY = "sweep.yaml"  # the sweep file as run
TRIALS = "trials"  # one directory per configuration: trials/tNNN-<label>/seedS/
