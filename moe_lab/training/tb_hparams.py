"""What TensorBoard's HPARAMS and custom-scalars views show, declared with the plugins' own protos.

TensorBoard lets one run per log directory declare the experiment (which hyperparameters and metrics
the HPARAMS table has); every run then writes a session (its hyperparameter values and a group name)
and its final metrics as scalars. Without a declaration the plugin lists every hyperparameter any run
logged, alphabetically: the ~90 config keys, with the swept one lost among them. So:

- a sweep or ablation declares, at the root of its study directory, the swept keys as hyperparameters
  and the objective first among the metrics, plus a custom-scalars layout that puts
  the comparison the study exists for (val loss, load CV, dropped fraction, router entropy of all
  trials) on shared charts (`write_study_layout`);
- a single `train` run declares itself, with a few headline keys (`HEADLINE_HPARAMS`);
- every run writes its session, grouped by configuration (the seeds of one configuration form one
  row of the HPARAMS table, their metrics averaged; so the seed is no column), and its final metrics
  as `final/<metric>` scalars (`final_tag`; `write_session`), at the step of its last validation.

The full config stays in config.yaml and, as one text entry per run, under the `config` tag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moe_lab.artifacts.metrics import (
    DROPPED_FRAC_MEAN,
    LOAD_CV_MEAN,
    TRAIN_LM_LOSS,
    VAL_LOSS,
    final_tag,
    layer_tag,
    metric_named,
)
from moe_lab.artifacts.run_dir import HPARAM_METRICS, OBJECTIVE_METRICS

# HPARAM_METRICS (RunMetrics field names) are shown as `final_tag(name)` columns: the objective first, then
# the vocabulary's leading ones (Metric.lead), then the others (ordered_metrics).
# A single run's HPARAMS columns: what distinguishes one MoE run from another at a glance.
HEADLINE_HPARAMS = (
    "model.moe.n_experts",
    "model.moe.top_k",
    "model.moe.router",
    "model.d_model",
    "model.n_layers",
    "optim.lr",
    "trainer.max_steps",
    "seed",
)
# The study comparison charts: (title, tag regex); TensorBoard draws every run matching a regex on one chart.
COMPARISON_CHARTS = (
    ("val loss", VAL_LOSS),
    ("load CV (mean over layers)", LOAD_CV_MEAN),
    ("dropped fraction (mean over layers)", DROPPED_FRAC_MEAN),
    ("router entropy / ln E, per layer", layer_tag(r"\d+", "entropy_norm")),
    ("train LM loss", TRAIN_LM_LOSS),
)


def _hparam_type(values: list[Any]):
    from tensorboard.plugins.hparams import api_pb2

    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _tb_value(value: Any) -> Any:
    """A value the hparams plugin accepts (bool, number, string); None and others as their text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _plugin_summary(tag: str, **plugin_data):
    """A Summary holding one HParamsPluginData message: what the plugin's own `summary.*_pb` helpers
    build, without the TensorFlow they import."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**plugin_data))
    return Summary(value=[Summary.Value(tag=tag, metadata=content, tensor=metadata.NULL_TENSOR)])


def experiment_summary(hparams: dict[str, list[Any]], metrics: list[str], swept: tuple[str, ...] = ()):
    """The plugin's experiment declaration: `hparams` {key: the values it takes}, in this order;
    `metrics` (RunMetrics field names) as `final_tag(name)` columns, in this order. The plugin lists hyperparameters
    whose `differs` flag is set first, so the swept keys are flagged and nothing else is."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    infos = [
        api_pb2.HParamInfo(
            name=key, type=api_pb2.DATA_TYPE_STRING if key in swept else _hparam_type(values), differs=key in swept
        )
        for key, values in hparams.items()
    ]
    metric_infos = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=final_tag(m)), display_name=metric_named(m).title)
        for m in metrics
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    return _plugin_summary(metadata.EXPERIMENT_TAG, experiment=experiment)


def as_categories(params: dict[str, Any]) -> dict[str, str]:
    """A study's swept values as the HPARAMS table shows them: categories (top_k `2`, not `2.0000`), so
    its filter lists the values a sweep tried instead of a numeric range."""
    return {key: str(value) for key, value in params.items()}


def ordered_metrics(objective: str | None) -> list[str]:
    """HPARAM_METRICS with the objective first, then the leading ones (Metric.lead), each group in the
    vocabulary's order."""
    rest = sorted((m for m in HPARAM_METRICS if m != objective), key=lambda m: not metric_named(m).lead)
    return [m for m in (objective,) if m] + rest


def _writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def write_study_layout(study_dir: Path, swept: dict[str, list[Any]], objective: str) -> None:
    """Declare the study's HPARAMS table and comparison charts once, at the root of `study_dir` (the log
    directory `tensorboard --logdir <study_dir>` reads). Written again only when missing."""
    study_dir = Path(study_dir)
    if any(study_dir.glob("events.out.tfevents.*")):
        return
    from torch.utils.tensorboard.summary import custom_scalars

    writer = _writer(study_dir)
    try:
        file_writer = writer._get_file_writer()
        file_writer.add_summary(experiment_summary(swept, ordered_metrics(objective), tuple(swept)))
        # The layout summary of torch's helper: {category: {chart: ["Multiline", [tag regexes]]}}.
        layout = {f"{study_dir.name}: all trials": {title: ["Multiline", [tag]] for title, tag in COMPARISON_CHARTS}}
        file_writer.add_summary(custom_scalars(layout))
    finally:
        writer.close()


def write_session(writer, hparams: dict[str, Any], group: str, metrics: dict, step: int, failed: bool) -> None:
    """One run's session in the HPARAMS table: its hyperparameter values, its group (the configuration
    its seeds share) and its final metrics, with `writer` a torch SummaryWriter of the run directory."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for key, value in hparams.items():
        value = _tb_value(value)
        field = (
            "bool_value"
            if isinstance(value, bool)
            else "number_value"
            if isinstance(value, (int, float))
            else "string_value"
        )
        setattr(start.hparams[key], field, value)
    file_writer = writer._get_file_writer()
    file_writer.add_summary(_plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
    # The objective metrics too: a study may declare one that is no HPARAMS column otherwise (tokens/s).
    for key in dict.fromkeys(HPARAM_METRICS + OBJECTIVE_METRICS):
        if isinstance(metrics.get(key), (int, float)):
            writer.add_scalar(final_tag(key), float(metrics[key]), step)
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
    )
    file_writer.add_summary(_plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))
    writer.flush()
