"""Sparse upcycling (moe_lab.model.upcycle): an MoE started from a dense model computes the dense model
where the gates make it so (float64 logits against the dense model's), the split of the dense FFN over
fine-grained experts, Drop-Upcycling's re-initialised units, copy_noise's noise level, one-line errors
for shapes that cannot be mapped, and the train CLI from a dense run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_lab.config import load_config
from moe_lab.config.resume_rules import may_change
from moe_lab.errors import ConfigError
from moe_lab.interop.checkpoint import save_pretrained
from moe_lab.model import ModelConfig, MoEConfig, MoETransformer
from moe_lab.model.upcycle import upcycle_state_dict
from tests.helpers import randomise, write_tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
DIMS = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32)


def model_config(activation: str = "swiglu", model: dict | None = None, **moe) -> ModelConfig:
    return ModelConfig(**{**DIMS, "activation": activation, **(model or {})}, moe=MoEConfig(**moe))


def dense_model(activation: str = "swiglu", seed: int = 0) -> MoETransformer:
    """A 'trained' dense model: every weight random and far from its init, so nothing matches by chance."""
    model = MoETransformer(model_config(activation, placement="none"))
    randomise(model, seed=seed, std=0.3)
    return model


def upcycled(dense: MoETransformer, cfg: ModelConfig, method: str = "copy", seed: int = 0, **options):
    """The MoE of `cfg` upcycled from `dense`, its routers first drawn wide (std 1) so routing is uneven."""
    moe = MoETransformer(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if ".router." in name:
                p.copy_(torch.randn(p.shape, generator=g))
    state = upcycle_state_dict(
        dense.cfg,
        dense.state_dict(),
        cfg,
        moe.state_dict(),
        method,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    moe.load_state_dict(state, strict=True)
    return moe


def logits(model: MoETransformer, idx: torch.Tensor) -> torch.Tensor:
    return model.double().eval()(idx).logits


TOKENS = torch.randint(0, DIMS["vocab_size"], (3, 24), generator=torch.Generator().manual_seed(0))

# Configurations where the upcycled MoE must be the dense model: the routed experts are copies of one
# slice of the dense FFN (the whole FFN, or what the shared experts leave) and each token's gate weights
# sum to 1 (renormalised top-k, or a softmax over all experts; expert choice with top_k = n_experts takes
# every token in every expert).
IDENTITY = {
    "copy_topk_all": dict(n_experts=4, top_k=4),
    "copy_top2_renormalised": dict(n_experts=4, top_k=2),
    "copy_sigmoid_bias_renormalised": dict(n_experts=4, top_k=2, router="sigmoid_bias", renormalize=True),
    "copy_noisy_topk_eval": dict(n_experts=4, top_k=4, router="noisy_topk"),
    "copy_expert_choice_all": dict(n_experts=4, top_k=4, router="expert_choice"),
    "copy_granularity_2_every_other_layer": dict(
        n_experts=4, top_k=1, granularity=2, expert_hidden=96, placement="every_n", every_n=2
    ),
    "split_shared_half_routed_half": dict(n_experts=4, top_k=2, expert_hidden=24, n_shared_experts=1),
    "split_granularity_2_one_shared": dict(n_experts=4, top_k=1, granularity=2, n_shared_experts=1),
}


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("case", list(IDENTITY))
def test_upcycled_moe_reproduces_the_dense_logits_where_its_gates_sum_to_one_per_slice(case, activation):
    dense = dense_model(activation)
    moe = upcycled(dense, model_config(activation, **IDENTITY[case]))
    assert moe.moe_layers  # an MoE, not the dense model again
    torch.testing.assert_close(logits(moe, TOKENS), logits(dense, TOKENS), rtol=0, atol=1e-6)


def test_routers_and_moe_only_tensors_keep_their_fresh_initialisation_everything_else_is_the_dense_model():
    dense = dense_model()
    cfg = model_config(
        n_experts=4, top_k=2, expert_hidden=24, router="noisy_topk", n_shared_experts=1, shared_expert_gate=True
    )
    moe = MoETransformer(cfg)
    before = {k: v.clone() for k, v in moe.state_dict().items()}
    state = upcycle_state_dict(dense.cfg, dense.state_dict(), cfg, moe.state_dict(), "copy")
    kept = sorted(k for k in state if ".router." in k or ".shared_gate." in k)
    own = ("router.gate.weight", "router.noise.weight", "shared_gate.weight")
    assert kept == sorted(f"blocks.{i}.ffn.{name}" for i in (0, 1) for name in own)
    for name in kept:
        assert torch.equal(state[name], before[name]), name
    for name, tensor in dense.state_dict().items():
        if ".ffn." not in name:
            assert torch.equal(state[name], tensor), name


# -- the split of the dense FFN over experts narrower than it (no identity through a router: see below)


def layer_pair(cfg: ModelConfig, activation: str = "swiglu"):
    """(the dense FFN, the upcycled MoE layer) of layer 0, in float64, and an input [1, T, D]."""
    dense = dense_model(activation)
    moe = upcycled(dense, cfg)
    x = torch.randn(1, 20, DIMS["d_model"], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return dense.double().blocks[0].ffn, moe.double().eval().blocks[0].ffn, x


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_one_expert_per_slice_with_gate_weight_one_sums_to_the_dense_ffn(activation):
    """Four experts of width d_ff / 4 hold the four quarter slices: with weight 1 each they are the dense FFN.
    No router gives every expert weight 1 (softmax and renormalised gates sum to 1, sigmoid gates stay below
    1), so the dispatch is called with the weights set by hand."""
    ffn, layer, x = layer_pair(model_config(activation, n_experts=4, top_k=4, expert_hidden=12), activation)
    x_TD = x[0]
    T = x_TD.shape[0]
    tokens, experts = torch.arange(T).repeat(4), torch.arange(4).repeat_interleave(T)
    out = layer.experts(x_TD, tokens, experts, torch.ones(4 * T, dtype=torch.float64), None).out
    torch.testing.assert_close(out, ffn(x_TD), rtol=0, atol=1e-10)


def test_split_experts_under_uniform_gates_give_one_slice_count_th_of_the_dense_ffn():
    """Eight experts over S = 4 quarter slices (two copies each), all selected, router zeroed: each gate is
    exactly 1/8, each slice gets 2/8, so the layer computes the dense FFN / 4: the mechanism that keeps a
    split upcycle from reproducing the dense model through a router whose gates sum to 1."""
    ffn, layer, x = layer_pair(model_config(n_experts=8, top_k=8, expert_hidden=12))
    with torch.no_grad():
        layer.router.gate.weight.zero_()
    torch.testing.assert_close(4 * layer(x).y, ffn(x), rtol=0, atol=1e-10)


def test_switch_top1_raw_gate_scales_the_copied_ffn_by_the_gate():
    """Top-1 with the raw gate value (Switch) is p * dense FFN, not the dense FFN: the identity needs the
    gates to sum to 1."""
    ffn, layer, x = layer_pair(model_config(n_experts=4, top_k=1))
    p_T = layer.router(x[0], None).weight  # top-1: one assignment per token, in token order
    torch.testing.assert_close(layer(x).y[0], p_T[:, None].double() * ffn(x[0]), rtol=0, atol=1e-10)


# -- drop and copy_noise


def expert_units(dense: MoETransformer, moe: MoETransformer, layer: int, n_slices: int):
    """Per expert, [H] whether each hidden unit is the dense unit it copies (gate, up and down all equal) and
    whether it was redrawn entirely (all three differ everywhere), SwiGLU."""
    w_in, w_out = moe.blocks[layer].ffn.experts.w_in, moe.blocks[layer].ffn.experts.w_out
    E, _, H = w_out.shape
    gate_FD, up_FD = dense.blocks[layer].ffn.w_in.weight.chunk(2)
    down_DF = dense.blocks[layer].ffn.w_out.weight
    for e in range(E):
        units = slice((e % n_slices) * H, (e % n_slices + 1) * H)
        pairs = [(w_in[e, :H], gate_FD[units]), (w_in[e, H:], up_FD[units]), (w_out[e].t(), down_DF[:, units].t())]
        same_H = torch.stack([(a == b).all(-1) for a, b in pairs]).all(0)
        redrawn_H = torch.stack([(a != b).all(-1) for a, b in pairs]).all(0)
        yield same_H, redrawn_H


@pytest.mark.parametrize(("ratio", "expert_hidden"), [(0.3, 24), (0.5, 12), (1.0, 24)])
def test_drop_redraws_round_ratio_h_units_of_each_expert_independently_and_copies_the_rest(ratio, expert_hidden):
    dense = dense_model()
    cfg = model_config(n_experts=8, top_k=2, expert_hidden=expert_hidden)
    moe = upcycled(dense, cfg, "drop", drop_ratio=ratio)
    n_slices = DIMS["d_ff"] // expert_hidden
    masks = []
    for layer in (0, 1):
        for same_H, redrawn_H in expert_units(dense, moe, layer, n_slices):
            assert int(redrawn_H.sum()) == round(ratio * expert_hidden)
            assert bool((same_H ^ redrawn_H).all())  # every unit is a copy or wholly new
            masks.append(tuple(redrawn_H.tolist()))
    assert ratio == 1.0 or len(set(masks)) > 1  # each expert draws its own units


def test_drop_redraws_from_the_mean_and_std_of_each_dense_matrix():
    """Drop-Upcycling sec. 3: new units come from N(mean, std) of the original matrix (here gate, up and down
    each given a different mean and std)."""
    dense = dense_model()
    with torch.no_grad():
        for block in dense.blocks:
            gate, up = block.ffn.w_in.weight.chunk(2)
            gate.normal_(0.5, 0.2), up.normal_(-0.3, 0.1), block.ffn.w_out.weight.normal_(0.2, 0.4)
    moe = upcycled(dense, model_config(n_experts=8, top_k=2), "drop", drop_ratio=1.0)
    for block, moe_block in zip(dense.blocks, moe.blocks, strict=True):
        w_in, w_out = moe_block.ffn.experts.w_in, moe_block.ffn.experts.w_out
        H = w_out.shape[-1]
        gate, up = block.ffn.w_in.weight.chunk(2)
        for new, old in ((w_in[:, :H], gate), (w_in[:, H:], up), (w_out, block.ffn.w_out.weight)):
            assert abs(new.mean() - old.mean()) < 0.05 * old.std()
            assert abs(new.std() / old.std() - 1) < 0.05


def test_copy_noise_perturbs_each_routed_expert_by_the_noise_level_and_nothing_else():
    dense = dense_model()
    cfg = model_config(n_experts=4, top_k=2, expert_hidden=24, n_shared_experts=1)
    exact = upcycled(dense, cfg, "copy")
    noisy = upcycled(dense, cfg, "copy_noise", noise_std=0.05)
    for name, tensor in exact.state_dict().items():
        if ".experts." not in name:
            assert torch.equal(noisy.state_dict()[name], tensor), name  # shared experts stay exact copies
    for layer, block in enumerate(dense.blocks):
        gate, up = block.ffn.w_in.weight.chunk(2)
        H = 24
        before, after = exact.blocks[layer].ffn.experts, noisy.blocks[layer].ffn.experts
        for part, std in ((slice(0, H), gate.std()), (slice(H, 2 * H), up.std())):
            relative = (after.w_in[:, part] - before.w_in[:, part]).std() / std
            assert 0.04 < relative < 0.06
        relative = (after.w_out - before.w_out).std() / block.ffn.w_out.weight.std()
        assert 0.04 < relative < 0.06
        assert not torch.equal(after.w_in[0], after.w_in[2])  # experts 0 and 2 copy one slice, differently


def test_a_bf16_dense_model_upcycles_into_the_moes_own_dtype():
    dense = dense_model().to(torch.bfloat16)
    moe = upcycled(dense, model_config(n_experts=4, top_k=4), "drop", drop_ratio=0.25)
    assert all(t.dtype == torch.float32 for t in moe.state_dict().values())
    H = DIMS["d_ff"]
    same = (moe.blocks[0].ffn.experts.w_in[0, :H] == dense.blocks[0].ffn.w_in.weight[:H].float()).all(-1)
    assert int(same.sum()) == H - round(0.25 * H)


def test_the_same_seed_gives_the_same_experts():
    dense, cfg = dense_model(), model_config(n_experts=4, top_k=2)
    a, b = (upcycled(dense, cfg, "drop", drop_ratio=0.5) for _ in range(2))
    assert all(torch.equal(t, b.state_dict()[name]) for name, t in a.state_dict().items())


# -- shapes that cannot be mapped: one line naming the key


@pytest.mark.parametrize(
    ("model", "moe", "key"),
    [
        ({"d_model": 64}, {}, "model.d_model"),
        ({"n_layers": 3}, {}, "model.n_layers"),
        ({"vocab_size": 65}, {}, "model.vocab_size"),
        ({"n_kv_heads": 2}, {}, "model.n_kv_heads"),
        ({"activation": "gelu"}, {}, "model.activation"),
        ({"norm": "layernorm"}, {}, "model.norm"),
        ({}, {"expert_hidden": 20}, "model.moe.expert_hidden"),
        ({"d_ff": 64}, {}, "model.d_ff"),  # experts wider than the dense FFN
        ({"d_ff": 96}, {"expert_hidden": 48, "placement": "every_n"}, "model.d_ff"),  # its dense layer differs
        ({}, {"n_shared_experts": 1, "shared_expert_hidden": 48}, "model.moe.shared_expert_hidden"),
        ({}, {"n_shared_experts": 2}, "model.moe.n_shared_experts"),  # 2 x 48 shared: nothing left to route
    ],
)
def test_shapes_that_cannot_be_mapped_are_one_line_naming_the_key(model, moe, key):
    dense = dense_model()
    cfg = model_config(model=model, **{"n_experts": 4, "top_k": 2, **moe})
    with pytest.raises(ConfigError) as err:
        upcycle_state_dict(dense.cfg, dense.state_dict(), cfg, MoETransformer(cfg).state_dict(), "copy")
    assert err.value.key == key and "\n" not in str(err.value)


def test_an_moe_source_is_refused_naming_upcycle_source():
    source = MoETransformer(model_config(n_experts=4, top_k=2))
    cfg = model_config(n_experts=8, top_k=2)
    with pytest.raises(ConfigError) as err:
        upcycle_state_dict(source.cfg, source.state_dict(), cfg, MoETransformer(cfg).state_dict(), "copy")
    assert err.value.key == "upcycle.source" and "dense" in str(err.value)


# -- the config section


@pytest.fixture
def pretrained_dense(tmp_path) -> Path:
    dense = dense_model()
    return save_pretrained(tmp_path / "dense", dense.cfg, dense.state_dict())


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["upcycle.method=clone", "upcycle.source={dense}"], "upcycle.method"),
        (["upcycle.method=copy"], "upcycle.source"),
        (["upcycle.method=copy", "upcycle.source=/no/such/dense"], "upcycle.source"),
        (["upcycle.method=drop", "upcycle.source={dense}", "upcycle.drop_ratio=0"], "upcycle.drop_ratio"),
        (["upcycle.method=drop", "upcycle.source={dense}", "upcycle.drop_ratio=1.5"], "upcycle.drop_ratio"),
        (["upcycle.method=copy_noise", "upcycle.source={dense}", "upcycle.noise_std=-0.1"], "upcycle.noise_std"),
        (["upcycle.method=copy_noise", "upcycle.source={dense}", "upcycle.noise_std=inf"], "upcycle.noise_std"),
        (["upcycle.method=copy", "upcycle.source={dense}", "upcycle.noise_std=0.1"], "upcycle.noise_std"),
        (["upcycle.method=copy_noise", "upcycle.source={dense}", "upcycle.drop_ratio=0.3"], "upcycle.drop_ratio"),
        (["upcycle.source={dense}"], "upcycle.source"),  # method '' (off) reads no source
        (["upcycle.method=copy", "upcycle.source={dense}", "model.moe.placement=none"], "model.moe.placement"),
        (["upcycle.method=copy", "upcycle.source={dense}", "model_init={dense}", "data.block_size=32"], "model_init"),
    ],
)
def test_upcycle_config_rules_name_the_key(overrides, key, pretrained_dense):
    with pytest.raises(ConfigError) as err:
        load_config(None, [o.format(dense=pretrained_dense) for o in overrides])
    assert err.value.key == key and "\n" not in str(err.value)


def test_a_valid_upcycle_section_loads_and_may_change_on_resume(pretrained_dense):
    cfg = load_config(None, ["upcycle.method=drop", f"upcycle.source={pretrained_dense}", "upcycle.drop_ratio=0.25"])
    assert (cfg.upcycle.method, cfg.upcycle.drop_ratio) == ("drop", 0.25)
    assert all(may_change(f"upcycle.{key}") for key in ("method", "source", "noise_std", "drop_ratio"))


# -- end to end: the train CLI from a dense run directory


def train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "moe_lab.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, data_cache):
    """A tiny dense model trained for 2 steps (d_ff 64): its run directory and experiment file."""
    base = tmp_path_factory.mktemp("upcycle_e2e")
    exp = write_tiny_experiment(base / "tiny.yaml", data_cache, steps=2)
    done = train([str(exp), f"output_dir={base / 'runs'}", "name=dense", "model.moe.placement=none"], base)
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "runs" / "dense" / "version_0", exp


def test_train_upcycles_an_moe_from_a_dense_run_directory(dense_run, tmp_path):
    run_dir, exp = dense_run
    args = [str(exp), f"output_dir={tmp_path / 'runs'}", "name=moe", "upcycle.method=copy", f"upcycle.source={run_dir}"]
    done = train([*args, "optim.lr=1e-12", "optim.weight_decay=0"], tmp_path)  # steps that change nothing
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimizer state is not carried over" in done.stdout
    moe_dir = tmp_path / "runs" / "moe" / "version_0"
    recorded = load_config(moe_dir / "config.yaml")
    assert (recorded.upcycle.method, recorded.upcycle.source) == ("copy", str(run_dir))
    assert "upcycle:\n  method: copy\n" in (moe_dir / "config.yaml").read_text()
    # The MoE's experts (width 32) hold the dense FFN's two halves: expert j the half j mod 2.
    dense = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    moe = torch.load(moe_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    gate, up = dense["model.blocks.0.ffn.w_in.weight"].chunk(2)
    for j in range(4):
        half = slice((j % 2) * 32, (j % 2 + 1) * 32)
        expected = torch.cat([gate[half], up[half]])
        torch.testing.assert_close(moe["model.blocks.0.ffn.experts.w_in"][j], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(moe["model.embed.weight"], dense["model.embed.weight"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("source", "extra", "starts"),
    [
        ("{tmp}/no_such_run", [], "error: upcycle.source: no such file or directory"),
        ("{tmp}", [], "error: upcycle.source: "),  # exists, holds no model
        ("{run}", ["model.d_model=64"], "error: model.d_model: 64 here, 32 in the dense model"),
    ],
)
def test_train_with_a_bad_source_exits_2_in_one_line_and_writes_nothing(dense_run, tmp_path, source, extra, starts):
    run_dir, exp = dense_run
    source = source.format(tmp=tmp_path, run=run_dir)
    args = [str(exp), f"output_dir={tmp_path / 'runs'}", "name=moe", "upcycle.method=copy", f"upcycle.source={source}"]
    done = train([*args, *extra], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(starts), done.stderr
    assert not (tmp_path / "runs").exists()
