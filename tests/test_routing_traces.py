"""Routing traces (moe_lab.traces): captured choices against the routers' own logits, consistency against
hand-derived and naive per-token counts, the parquet round trip, specialisation against a naive loop,
fp32 vs bf16, the training callback in a short real run and `python -m moe_lab.inspect --trace/--compare`."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moe_lab.config import load_config
from moe_lab.errors import ConfigError
from moe_lab.inspect import main
from moe_lab.interop.checkpoint import save_pretrained
from moe_lab.model import MoETransformer
from moe_lab.report.tb_scalars import read_scalars
from moe_lab.traces.capture import capture_trace
from moe_lab.traces.compare import compare_traces
from moe_lab.traces.numerics import numerics_checks
from moe_lab.traces.specialisation import TEXT_CLASSES, class_expert_shares, token_classes
from moe_lab.traces.store import read_trace, write_trace
from moe_lab.traces.trace import NO_EXPERT, TraceError
from moe_lab.training.run import run
from tests.helpers import byte_model
from tests.test_train import tiny

REPO = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer 1601 slings!\n" * 3
IDS = list(TEXT.encode())  # byte tokens
CONTEXT = 32  # 3 windows of 32 and a shorter last one: the window loop is exercised


def trace_of(model, ids=IDS, context=CONTEXT):
    return capture_trace(model, ids, context, checkpoint="tiny", tokenizer="byte")


def router_records(model, layer: int) -> list:
    """What layer `layer`'s router received and returned on each forward, read by a hook of the test's own."""
    records = []
    model.blocks[layer].ffn.router.register_forward_hook(lambda mod, args, out: records.append((args[0], out)))
    return records


# ------------------------------------------------------------------------------ capture


def test_token_choice_trace_is_the_top_k_of_the_router_logits_token_by_token():
    model = byte_model()
    records = router_records(model, 0)
    trace = trace_of(model)
    gate_ED = model.blocks[0].ffn.router.gate.weight.double()
    t = 0
    for x_TD, _ in records:  # one record per window
        for x_D in x_TD.double():
            probs_E = (gate_ED @ x_D).softmax(-1)
            ranked = sorted(range(6), key=lambda e: -probs_E[e].item())[:2]
            assert trace.experts[0, t].tolist() == ranked, t
            expected_gates = [probs_E[e].item() / (probs_E[ranked[0]] + probs_E[ranked[1]]).item() for e in ranked]
            np.testing.assert_allclose(trace.gates[0, t], expected_gates, rtol=1e-4)
            t += 1
    assert t == len(IDS) and trace.experts.shape == (2, len(IDS), 2)


def test_expert_choice_trace_is_the_set_of_experts_that_picked_each_token():
    model = byte_model(router="expert_choice")
    records = router_records(model, 2)
    trace = trace_of(model)
    start = 0
    for x_TD, routing in records:
        chosen: dict[int, list[tuple[float, int]]] = {}
        for t, e, w in zip(
            routing.token_idx.tolist(), routing.expert_idx.tolist(), routing.weight.tolist(), strict=True
        ):
            chosen.setdefault(t, []).append((w, e))
        for t in range(x_TD.shape[0]):
            row = trace.experts[1, start + t].tolist()
            expected = [e for _, e in sorted(chosen.get(t, []), reverse=True)]  # highest affinity first
            assert row == expected + [NO_EXPERT] * (len(row) - len(expected)), start + t
        start += x_TD.shape[0]
    assert not trace.meta.token_choice and (trace.gates[trace.experts == NO_EXPERT] == 0).all()
    assert (trace.experts == NO_EXPERT).any()  # some token picked by fewer experts than another: padded


# ------------------------------------------------------------------------------ compare


def test_a_checkpoint_is_fully_consistent_with_itself(tmp_path):
    model = byte_model()
    write_trace(trace_of(model), tmp_path / "a.parquet")
    result = compare_traces(read_trace(tmp_path / "a.parquet"), trace_of(model))
    assert result.overall == 1.0 and result.overall_top1 == 1.0
    assert result.consistency.tolist() == [1.0, 1.0] and result.n_tokens == len(IDS)


def naive_consistency(a, b) -> tuple[list[float], list[float]]:
    """Per layer, token by token: same set of experts? same first choice?"""
    same_set, same_first = [], []
    for row in range(len(a.layers)):
        sets = [set(a.experts[row, t]) - {NO_EXPERT} == set(b.experts[row, t]) - {NO_EXPERT} for t in range(a.n_tokens)]
        firsts = [a.experts[row, t, 0] == b.experts[row, t, 0] for t in range(a.n_tokens)]
        same_set.append(sum(sets) / a.n_tokens)
        same_first.append(sum(firsts) / a.n_tokens)
    return same_set, same_first


def test_consistency_after_swapping_two_experts_rows_of_the_first_router():
    """Swapping gate rows p and q in the first MoE layer swaps the two experts' logits for every token: a
    token's set changes exactly when it holds one of them, its first choice exactly when that is p or q.
    Layer 0's router input comes before the swap's effect, so these counts are exact; the later layer is
    checked against a naive per-token count."""
    model = byte_model()
    before = trace_of(model)
    p, q = 1, 4
    with torch.no_grad():
        gate = model.blocks[0].ffn.router.gate.weight
        gate[[p, q]] = gate[[q, p]].clone()
    after = trace_of(model)
    result = compare_traces(before, after)

    holds = [len({p, q} & set(before.experts[0, t].tolist())) for t in range(len(IDS))]
    changed = sum(1 for h in holds if h == 1)
    first_moved = sum(1 for t in range(len(IDS)) if before.experts[0, t, 0] in (p, q))
    assert 0 < changed < len(IDS)  # the example does test something
    assert result.consistency[0] == pytest.approx(1 - changed / len(IDS), abs=0)
    assert result.top1_agreement[0] == pytest.approx(1 - first_moved / len(IDS), abs=0)
    same_set, same_first = naive_consistency(before, after)
    np.testing.assert_array_equal(result.consistency, same_set)
    np.testing.assert_array_equal(result.top1_agreement, same_first)
    assert result.overall == pytest.approx(np.mean(same_set))


def test_traces_over_different_tokens_are_refused():
    model = byte_model()
    with pytest.raises(TraceError, match="different tokens"):
        compare_traces(trace_of(model), trace_of(model, IDS[:-1]))
    with pytest.raises(TraceError, match="different tokens"):
        compare_traces(trace_of(model), trace_of(model, IDS[1:] + IDS[:1]))
    with pytest.raises(TraceError, match="windows of 32 and 16"):
        compare_traces(trace_of(model), trace_of(model, context=16))


# ------------------------------------------------------------------------------ store


@pytest.mark.parametrize("router", ["topk", "expert_choice"])
def test_parquet_round_trip(tmp_path, router):
    import pyarrow.parquet as pq

    trace = trace_of(byte_model(router=router))
    write_trace(trace, tmp_path / "t.parquet")
    back = read_trace(tmp_path / "t.parquet")
    assert back.layers == trace.layers and back.meta == trace.meta
    for name in ("token_ids", "experts", "gates"):
        np.testing.assert_array_equal(getattr(back, name), getattr(trace, name))
        assert getattr(back, name).dtype == getattr(trace, name).dtype
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert str(schema.field("experts").type) == "list<element: int16>"
    assert str(schema.field("gates").type) == "list<element: float>"
    assert [f.name for f in schema] == ["layer", "position", "token_id", "experts", "gates"]


def test_unreadable_trace_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(TraceError, match="not a readable parquet file"):
        read_trace(tmp_path / "junk.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(TraceError, match="not a routing trace"):
        read_trace(tmp_path / "other.parquet")


# ------------------------------------------------------------------------------ specialisation


def naive_byte_class(b: int) -> str:
    c = chr(b) if b < 128 else ""
    if c in ("\n", "\r") and c:
        return "newlines"
    if c.isspace():
        return "spaces"
    if c.isalpha():
        return "letters"
    if c.isdigit():
        return "digits"
    if c and c in string.punctuation:
        return "punctuation"
    return "other"


def test_specialisation_matrix_against_a_naive_loop():
    from moe_lab.data.tokenizers import ByteTokenizer

    ids = IDS + [0xC3, 0xA9, 9]  # "é" as two bytes (other, other) and a tab (spaces)
    trace = trace_of(byte_model(), ids)
    classes = token_classes(trace.token_ids, ByteTokenizer().decode)
    shares = class_expert_shares(trace, classes)
    assert classes.names == list(TEXT_CLASSES)
    counts = np.zeros((2, len(TEXT_CLASSES), 6))
    for row in range(2):
        for t, b in enumerate(ids):
            assert classes.names[classes.index[t]] == naive_byte_class(b), b
            for e in trace.experts[row, t]:
                counts[row, TEXT_CLASSES.index(naive_byte_class(b)), e] += 1
    totals = counts.sum(-1, keepdims=True)
    np.testing.assert_allclose(shares, counts / np.maximum(totals, 1))
    assert set(np.flatnonzero(totals[0, :, 0])) == {0, 1, 2, 3, 4, 5}  # every class occurs


def test_classes_by_token_id_without_a_tokenizer():
    ids = np.array([5, 7, 5, 9, 5, 7] + list(range(20, 40)))
    classes = token_classes(ids)
    assert classes.names[:2] == ["id 5", "id 7"] and classes.names[-1] == "other ids" and len(classes.names) == 16
    assert [classes.names[c] for c in classes.index[:4]] == ["id 5", "id 7", "id 5", "id 9"]


# ------------------------------------------------------------------------------ numerics


def test_fp32_vs_bf16_autocast_runs_and_gives_a_share():
    model = byte_model()
    (check,) = numerics_checks(model, IDS, CONTEXT, "tiny", with_compile=False)
    assert 0.0 <= check.consistency.overall <= 1.0 and 0.0 <= check.consistency.overall_top1 <= 1.0
    assert check.consistency.layers == [0, 2] and "bfloat16" in check.label


# ------------------------------------------------------------------------------ training callback


def test_trace_option_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="monitor.trace_every_n_steps"):
        load_config(REPO / "experiments/shakespeare_moe.yaml", ["monitor.trace_every_n_steps=-1"])


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_the_callback_writes_traces_and_logs_their_consistency(tmp_path, data_cache):
    overrides = tiny(
        tmp_path,
        data_cache,
        "trainer.max_steps=6",
        "trainer.val_every_n_steps=2",
        "trainer.val_batches=1",
        "optim.warmup_steps=1",
        "monitor.heatmap_every_n_steps=0",
        "monitor.sample_tokens=0",
        "monitor.trace_every_n_steps=4",  # validations at 2, 4, 6: only step 4 passes a multiple of 4
    )
    result = run(load_config(REPO / "experiments/shakespeare_moe.yaml", overrides), quiet=True)
    traces = sorted((result.run_dir / "traces").glob("*.parquet"))
    assert [p.name for p in traces] == ["step_4.parquet"]

    # Every 2 steps, in two parts: the resumed part compares its first trace with the last one on disk.
    overrides[-1] = "monitor.trace_every_n_steps=2"
    overrides[overrides.index("trainer.max_steps=6")] = "trainer.max_steps=4"
    overrides[0] = f"output_dir={tmp_path / 'resumed'}"
    d = run(load_config(REPO / "experiments/shakespeare_moe.yaml", overrides), quiet=True).run_dir
    resumed = overrides + ["trainer.max_steps=6", "trainer.resume=auto"]
    assert run(load_config(REPO / "experiments/shakespeare_moe.yaml", resumed), quiet=True).run_dir == d
    assert sorted(p.name for p in (d / "traces").glob("*.parquet")) == [f"step_{s}.parquet" for s in (2, 4, 6)]
    t2, t4, t6 = (read_trace(d / "traces" / f"step_{s}.parquet") for s in (2, 4, 6))
    assert (t2.meta.step, t6.meta.step) == (2, 6) and t6.meta.tokenizer == "byte"
    assert t2.n_tokens == 4 * 32 and t2.meta.context == 32  # the first validation batch, one window per row
    np.testing.assert_array_equal(t2.token_ids, t6.token_ids)
    # TensorBoard: at each validation's plotted step (global_step - 1), the consistency with the previous trace.
    for step, (a, b) in {3: (t2, t4), 5: (t4, t6)}.items():
        expected = compare_traces(a, b)
        for row, layer in enumerate(expected.layers):
            curve = read_scalars(d, f"moe/layer{layer}/routing_consistency")
            assert curve[step] == pytest.approx(expected.consistency[row])
        assert read_scalars(d, "moe/routing_consistency_mean")[step] == pytest.approx(expected.overall)
        assert read_scalars(d, "moe/top1_agreement_mean")[step] == pytest.approx(expected.overall_top1)
    assert 1 not in read_scalars(d, "moe/routing_consistency_mean")  # the first trace has nothing to compare with
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["final_routing_consistency"] == pytest.approx(compare_traces(t4, t6).overall)
    images = set()
    for events in d.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert {"moe/layer0/specialisation", "moe/layer1/specialisation"} <= images


# ------------------------------------------------------------------------------ CLI


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def consistency_rows(out: str) -> dict[str, tuple[float, float]]:
    start = out.index("layer  consistency")
    rows = [line.split() for line in out[start:].splitlines()[1:]]
    return {r[0]: (float(r[1]), float(r[2])) for r in rows if len(r) == 3 and r[0] in ("0", "2", "all")}


def test_cli_trace_and_compare_end_to_end(tmp_path, capsys):
    model = byte_model()
    save_pretrained(tmp_path / "a", model.cfg, model.state_dict())
    with torch.no_grad():
        gate = model.blocks[0].ffn.router.gate.weight
        gate[[1, 4]] = gate[[4, 1]].clone()
    save_pretrained(tmp_path / "b", model.cfg, model.state_dict())
    text = tmp_path / "text.txt"
    text.write_text(TEXT)

    code, out, err = cli(
        capsys, tmp_path / "a", "--trace", tmp_path / "a.parquet", "--text", text, "--logdir", tmp_path / "logs"
    )
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert {"routing/specialisation/layer_0", "routing/specialisation/layer_2"} <= set(events.Tags()["images"])
    trace = read_trace(tmp_path / "a.parquet")
    assert trace.n_tokens == len(IDS) and trace.meta.checkpoint == str(tmp_path / "a")
    assert "expert specialisation by token class" in out and "letters" in out

    code, out, err = cli(capsys, tmp_path / "a", "--compare", tmp_path / "a.parquet")
    assert code == 0, err
    assert consistency_rows(out)["all"] == (1.0, 1.0)

    # A checkpoint against a trace, and a trace against a checkpoint: the numbers of compare_traces.
    expected = compare_traces(trace, trace_of(byte_model_from(tmp_path / "b")))
    for argv in (
        [tmp_path / "b", "--compare", tmp_path / "a.parquet"],
        [tmp_path / "a.parquet", "--compare", tmp_path / "b"],
    ):
        code, out, err = cli(capsys, *argv)
        assert code == 0, err
        rows = consistency_rows(out)
        assert rows["0"][0] == pytest.approx(expected.consistency[0], abs=5e-5)
        assert rows["all"][0] == pytest.approx(expected.overall, abs=5e-5)
        assert rows["0"][0] < 1.0

    code, out, err = cli(capsys, tmp_path / "a", "--trace", tmp_path / "short.parquet", "--max-tokens", 50)
    assert code == 0, err
    code, out, err = cli(capsys, tmp_path / "short.parquet", "--compare", tmp_path / "a.parquet")
    assert code == 2 and err.startswith("error: the traces are over different tokens") and len(err.splitlines()) == 1


def byte_model_from(path: Path) -> MoETransformer:
    from moe_lab.interop.checkpoint import build_pretrained

    return build_pretrained(path).eval()


def test_cli_bad_paths_exit_2_with_one_line(tmp_path):
    for argv in (
        [tmp_path / "missing", "--trace", tmp_path / "t.parquet"],
        [tmp_path / "missing.parquet", "--compare", tmp_path / "other.parquet"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "moe_lab.inspect", *map(str, argv)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
