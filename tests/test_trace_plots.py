"""The sweep report's specialisation figures from the traces runs wrote during training."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np

from moe_lab.data.tokenizers import ByteTokenizer
from moe_lab.report.trace_plots import last_trace, write_specialisation_plots
from moe_lab.traces.capture import capture_trace
from moe_lab.traces.specialisation import class_expert_shares, specialisation_figure, token_classes
from moe_lab.traces.store import write_trace
from tests.helpers import byte_model

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


def test_a_traced_configuration_gets_its_specialisation_figure_from_its_last_trace(tmp_path):
    ids = list(TEXT.encode())
    for step in (4, 12):  # the later trace is the one drawn
        trace = capture_trace(byte_model(), ids, 32, checkpoint="run", step=step)
        write_trace(trace, tmp_path / "trials/t000-top_k=2/seed0/traces" / f"step_{step}.parquet")
    (tmp_path / "trials/t001-top_k=1/seed0").mkdir(parents=True)  # a run without traces: no figure
    assert last_trace(tmp_path / "trials/t000-top_k=2/seed0").name == "step_12.parquet"
    rows = [
        SimpleNamespace(label="top_k=2", run_dirs=["trials/t000-top_k=2/seed0"]),
        SimpleNamespace(label="top_k=1", run_dirs=["trials/t001-top_k=1/seed0"]),
    ]
    written = write_specialisation_plots(SimpleNamespace(rows=rows, study_dir=tmp_path), tmp_path / "plots")
    assert list(written) == ["specialisation_top_k=2"]
    assert written["specialisation_top_k=2"].read_bytes()[:4] == b"\x89PNG"


def test_classes_without_tokens_are_not_drawn_as_starved():
    trace = capture_trace(byte_model(), list(b"ab cd\nef"), 8, checkpoint="run")  # no digit, no "other"
    classes = token_classes(trace.token_ids, ByteTokenizer().decode)
    shares = class_expert_shares(trace, classes)[0]
    fig = specialisation_figure(shares, classes.names, "layer 0")
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert shown == ["letters", "spaces", "newlines"]
    present = [classes.names.index(name) for name in shown]  # drawn: share x E (1 = uniform), clipped to the scale
    assert np.allclose(fig.axes[0].images[0].get_array(), np.clip(shares[present] * 6, 1 / 8, 8))
    plt.close("all")


def test_the_report_figure_draws_every_layer_as_its_own_tensorboard_image():
    """The report's one-row figure (one panel per MoE layer, one colour bar) shows each layer's data exactly
    as the per-layer image TensorBoard gets (specialisation_figure), on the same fixed scale."""
    from moe_lab.report.trace_plots import layers_side_by_side

    trace = capture_trace(byte_model(), list(TEXT.encode()), 32, checkpoint="run")
    classes = token_classes(trace.token_ids, ByteTokenizer().decode)
    shares_LCE = class_expert_shares(trace, classes)
    fig = layers_side_by_side(trace.layers, shares_LCE, classes.names)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [f"layer {layer}" for layer in trace.layers] and len(panels) == 2
    assert len(fig.axes) == len(panels) + 1  # one shared colour bar
    for row, ax in enumerate(panels):
        alone = specialisation_figure(shares_LCE[row], classes.names, "alone")
        assert np.array_equal(ax.images[0].get_array(), alone.axes[0].images[0].get_array())
        assert [t.get_text() for t in ax.get_yticklabels()] == [t.get_text() for t in alone.axes[0].get_yticklabels()]
        assert ax.images[0].norm.vmin == alone.axes[0].images[0].norm.vmin == 1 / 8
    plt.close("all")
