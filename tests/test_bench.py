"""The benchmark's contenders compute what they claim, and its JSON line agrees with its timings."""

import json

import torch

from moe_lab import bench
from moe_lab.model.moe import MoELayer
from moe_lab.model.naive import expert_mlp
from tests.helpers import randomise, tiny_config


def test_experts_only_floor_runs_every_copy_through_its_expert():
    """The floor's output, recomputed row by row: copy r of the k*T copies goes to expert r // (A/E)
    (the first A % E experts take one extra row), weighted 1/k, summed over the k copies of a token."""
    cfg = tiny_config(n_experts=3, top_k=2)
    layer = MoELayer(cfg).double()
    randomise(layer)
    floor = bench.ExpertsOnly(layer)
    x = torch.randn(1, 7, cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = floor(x)
    flat = x.view(-1, cfg.d_model)
    copies = flat.repeat(2, 1)  # 14 rows over 3 experts: 5, 5, 4
    bounds = [0, 5, 10, 14]
    expected = torch.zeros_like(flat)
    for e in range(3):
        rows = range(bounds[e], bounds[e + 1])
        y = expert_mlp(copies[list(rows)], layer.experts, e)
        for r, yr in zip(rows, y, strict=True):
            expected[r % 7] += 0.5 * yr
    torch.testing.assert_close(out.view(-1, cfg.d_model), expected, rtol=1e-12, atol=1e-12)


def test_moe_json_ratios_are_the_timings(monkeypatch, capsys):
    small = bench.MoESize("tiny", d_model=32, n_experts=4, top_k=2, expert_hidden=16, tokens=64)
    monkeypatch.setattr(bench, "MOE_SIZES", (small,))
    assert bench.main(["moe", "--repeats", "2", "--json", "--default-allocator"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tiny"]
    ms = row["ms"]
    pairs = {
        "moe_over_dense_iso": ("moe", "dense_iso"),
        "naive_over_moe": ("naive_loop", "moe"),
        "experts_only_over_dense_iso": ("experts_only", "dense_iso"),
        "naive_over_experts_only": ("naive_loop", "experts_only"),
    }
    for key, (num, den) in pairs.items():
        ratio = ms[num] / ms[den]
        # ratios are rounded to 3 decimals and ms to microseconds: allow exactly that much
        tol = 5e-4 + ratio * (5e-4 / ms[num] + 5e-4 / ms[den]) + 1e-9
        assert abs(row[key] - ratio) <= tol, key


def test_ep_mode_counts_the_rows_that_leave_each_rank(monkeypatch, capsys):
    """The all-to-all bytes against a count by hand: rank r's assignments to the other rank's experts go
    out (states, gate weights, then their outputs' gradients), the other rank's to r's experts come in."""
    small = bench.MoESize("tiny", d_model=32, n_experts=4, top_k=2, expert_hidden=16)
    monkeypatch.setattr(bench, "MOE_SIZES", (small,))
    assert bench.main(["ep", "--ep-sizes", "2", "--tokens", "64", "--repeats", "1", "--json", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < rows["ep2"]["dispatch_share"] < 1

    torch.manual_seed(0)
    layer = MoELayer(bench.layer_config(small))
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    owner = [e // 2 for e in range(4)]  # 2 experts per rank
    leaving = []  # per rank: assignments of its tokens to the other rank's experts
    for rank in range(2):
        x = torch.randn(64, 32, generator=torch.Generator().manual_seed(100 + rank))
        experts = layer.router(x, None).expert_idx.tolist()
        leaving.append(sum(owner[e] != rank for e in experts))
    row_bytes = 2 * 32 * 4 + 4  # a state out and a gradient back (fp32), and a gate weight
    per_rank = [row_bytes * (leaving[r] + leaving[1 - r]) + 4 * 8 for r in range(2)]
    assert rows["ep2"]["a2a_bytes_per_rank"] == round(sum(per_rank) / 2)
