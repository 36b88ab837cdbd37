"""HF transformers interop: tiny random models of each architecture, built from their config classes
(nothing downloaded), against their moe_lab conversion. The reference is transformers' own eager
implementation; expert choices are read from its routers, ours from moe_lab's."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from moe_lab.errors import ConfigError  # noqa: E402
from moe_lab.interop import hf as interop  # noqa: E402
from moe_lab.interop.checkpoint import CheckpointError, build_pretrained, save_pretrained  # noqa: E402
from moe_lab.model import MoETransformer  # noqa: E402
from tests.helpers import randomise, tiny_config  # noqa: E402

VOCAB = 96
TRUNK = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    num_experts_per_tok=2,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    attn_implementation="eager",
)
# Each covers a different corner: GQA and untied head (Mixtral), norm_topk_prob false (OLMoE), a dense
# layer between MoE layers, q/k/v biases and a gated shared expert (Qwen2-MoE), heads wider than
# hidden / n_heads, every-other-layer MoE and a tied head (Qwen3-MoE).
HF_MODELS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(intermediate_size=48, num_local_experts=4)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(intermediate_size=48, num_experts=8, norm_topk_prob=False)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_hidden_layers=3,
            mlp_only_layers=[1],
            intermediate_size=56,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=8,
            qkv_bias=True,
            norm_topk_prob=False,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            num_hidden_layers=4,
            decoder_sparse_step=2,
            head_dim=16,
            intermediate_size=56,
            moe_intermediate_size=24,
            num_experts=8,
            norm_topk_prob=True,
            tie_word_embeddings=True,
        ),
    ),
}
ARCHS = list(HF_MODELS)


def hf_config(arch: str, **overrides):
    config_class, _, fields = HF_MODELS[arch]
    return getattr(transformers, config_class)(**{**TRUNK, **fields, **overrides})


def build_hf(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(transformers, HF_MODELS[arch][1])(hf_config(arch))
    randomise(model, seed=seed, std=0.2)  # uneven routing, non-unit norm weights, non-zero biases
    return model.eval()


def tokens(seed: int = 1, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def record_outputs(modules) -> list:
    seen = []
    for m in modules:
        m.register_forward_hook(lambda mod, args, out: seen.append(out))
    return seen


def converted(hf_model) -> MoETransformer:
    cfg, state_dict = interop.from_hf_model(hf_model)
    model = MoETransformer(cfg).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------------------ numerics vs transformers


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_expert_choices_match_transformers(arch):
    hf = build_hf(arch)
    model = converted(hf)
    hf_routers = [layer.mlp.gate for layer in hf.model.layers if hasattr(layer.mlp, "experts")]
    hf_choices = record_outputs(hf_routers)  # (router_logits, top-k weights, top-k indices) per layer
    our_choices = record_outputs(block.ffn.router for i, block in enumerate(model.blocks) if i in model.moe_layers)
    idx = tokens()
    with torch.no_grad():
        ref = hf(idx, output_router_logits=True)
        out = model(idx)
    assert max_rel_diff(out.logits, ref.logits) < 1e-5
    assert len(ref.router_logits) == len(hf_choices) == len(our_choices) == len(model.moe_layers) > 0
    k = model.cfg.moe.top_k
    for hf_logits, (_, hf_weight, hf_idx), ours in zip(ref.router_logits, hf_choices, our_choices, strict=True):
        torch.testing.assert_close(ours.logits, hf_logits.float(), rtol=1e-5, atol=1e-6)
        T = hf_idx.shape[0]
        # moe_lab lists assignments slot-major: every token's 1st choice, then every 2nd.
        assert torch.equal(ours.expert_idx.view(k, T).t(), hf_idx)
        torch.testing.assert_close(ours.weight.view(k, T).t(), hf_weight.float(), rtol=1e-5, atol=1e-7)
        assert hf_idx.unique().numel() > k  # the routing is not trivially the same few experts


# One MoE layer, so transformers' pooling over layers and moe_lab's mean over layers coincide.
ONE_MOE_LAYER = {
    "mixtral": dict(num_hidden_layers=1),
    "olmoe": dict(num_hidden_layers=1),
    "qwen2_moe": dict(num_hidden_layers=1, mlp_only_layers=[]),
    "qwen3_moe": dict(num_hidden_layers=1, decoder_sparse_step=1),
}


def hf_balancing_term(hf, idx) -> torch.Tensor:
    """router_aux_loss_coef x transformers' load_balancing_loss_func, as its ForCausalLM adds it."""
    with torch.no_grad():
        ref = hf(idx, output_router_logits=True)
    func = sys.modules[type(hf).__module__].load_balancing_loss_func
    aux = func(
        ref.router_logits,
        hf.config.num_local_experts if hf.config.model_type == "mixtral" else hf.config.num_experts,
        hf.config.num_experts_per_tok,
    )
    torch.testing.assert_close(aux, ref.aux_loss)
    return hf.config.router_aux_loss_coef * aux


def moe_lab_balancing_term(model, idx) -> torch.Tensor:
    with torch.no_grad():
        return model.cfg.moe.aux_loss_coef * model(idx).aux_loss


@pytest.mark.parametrize("top_k", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_converted_aux_loss_coef_gives_transformers_balancing_term(arch, top_k):
    """transformers counts all k assignments per token (its loss is k at balance), moe_lab normalises
    to 1.0: the converted coefficient is k times the HF one, so the weighted terms are equal."""
    torch.manual_seed(0)
    config = hf_config(arch, **ONE_MOE_LAYER[arch], num_experts_per_tok=top_k, router_aux_loss_coef=0.02)
    hf = getattr(transformers, HF_MODELS[arch][1])(config)
    randomise(hf, std=0.2)
    hf.eval()
    model = converted(hf)
    idx = tokens()
    term = hf_balancing_term(hf, idx)
    torch.testing.assert_close(moe_lab_balancing_term(model, idx), term, rtol=1e-5, atol=0)
    assert model.cfg.moe.aux_loss_coef == pytest.approx(0.02 * top_k)
    # Exported back: the HF coefficient again, and the same term computed by transformers.
    back = interop.to_hf_model(model.cfg, model.state_dict())
    assert back.config.router_aux_loss_coef == pytest.approx(0.02)
    torch.testing.assert_close(hf_balancing_term(back, idx), term, rtol=1e-5, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_with_several_moe_layers_the_term_is_the_mean_of_transformers_per_layer_terms(arch):
    """transformers pools the tokens of all layers before multiplying f by P; moe_lab averages the
    per-layer losses. The two differ by the covariance over layers of f_i and P_i, so the documented
    equality is per layer: moe_lab's term is the mean of transformers' term applied to each layer."""
    hf = build_hf(arch)
    model = converted(hf)
    idx = tokens()
    with torch.no_grad():
        router_logits = hf(idx, output_router_logits=True).router_logits
    assert len(router_logits) == len(model.moe_layers) >= 2
    func = sys.modules[type(hf).__module__].load_balancing_loss_func
    n_experts = model.cfg.moe.n_experts
    per_layer = [func((logits,), n_experts, hf.config.num_experts_per_tok) for logits in router_logits]
    expected = hf.config.router_aux_loss_coef * torch.stack(per_layer).mean()
    torch.testing.assert_close(moe_lab_balancing_term(model, idx), expected, rtol=1e-5, atol=0)


def test_export_divides_the_coefficient_by_top_k_and_converts_the_layer_sum():
    cfg = tiny_config(top_k=2, aux_loss_coef=0.01, router_loss_reduction="mean")
    assert interop.to_hf_config(cfg).router_aux_loss_coef == pytest.approx(0.005)
    # Summed over 2 MoE layers, the coefficient weighs twice what transformers' pooled term does.
    cfg = tiny_config(top_k=2, aux_loss_coef=0.01, router_loss_reduction="sum")
    assert interop.to_hf_config(cfg).router_aux_loss_coef == pytest.approx(0.01)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_is_identical(arch):
    hf = build_hf(arch)
    cfg, state_dict = interop.from_hf_model(hf)
    assert_same_tensors(state_dict, MoETransformer(cfg).state_dict() | state_dict)  # every moe_lab key
    hf_config_back, hf_state_dict = interop.to_hf(cfg, state_dict)
    assert hf_config_back.model_type == arch
    assert_same_tensors(hf_state_dict, hf.state_dict())
    rebuilt = interop.to_hf_model(cfg, state_dict)
    assert type(rebuilt) is type(hf)
    assert_same_tensors(rebuilt.state_dict(), hf.state_dict())
    cfg_again, state_dict_again = interop.from_hf_model(rebuilt)
    assert cfg_again == cfg
    assert_same_tensors(state_dict_again, state_dict)


NATIVE = {  # moe_lab configs never seen by transformers, exported and compared the other way round
    "mixtral": dict(n_kv_heads=2, tie_embeddings=False),
    "olmoe": dict(qk_norm="full", renormalize=False),
    "qwen2_moe": dict(
        n_layers=3,
        placement="every_n",
        n_shared_experts=2,
        shared_expert_gate=True,
        attention_bias=True,
        expert_hidden=24,
        renormalize=False,
    ),
    "qwen3_moe": dict(qk_norm="head", head_dim=16, n_kv_heads=2, placement="first_k_dense", n_layers=3),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_moe_lab_model_computes_the_same_logits(arch):
    model = MoETransformer(tiny_config(**NATIVE[arch])).eval()
    randomise(model, std=0.2)
    hf = interop.to_hf_model(model.cfg, model.state_dict())
    assert hf.config.model_type == arch
    idx = torch.randint(0, model.cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_rel_diff(model(idx).logits, hf(idx).logits) < 1e-5


# ------------------------------------------------------------------------------ files and the CLI


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_converts_a_saved_checkpoint_and_exports_it_back(arch, tmp_path, capsys):
    hf = build_hf(arch)
    hf.save_pretrained(tmp_path / "hf")  # transformers writes the per-expert (pre-5) layout
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # copied along, not parsed
    assert interop.main(["convert", str(tmp_path / "hf"), str(tmp_path / "moe")]) == 0
    assert (tmp_path / "moe" / "tokenizer.json").is_file()
    model = build_pretrained(tmp_path / "moe").eval()
    idx = tokens(seed=2)
    with torch.no_grad():
        ref = hf(idx).logits
        assert max_rel_diff(model(idx).logits, ref) < 1e-5
    assert interop.main(["export", str(tmp_path / "moe"), str(tmp_path / "back")]) == 0
    reloaded = getattr(transformers, HF_MODELS[arch][1]).from_pretrained(tmp_path / "back", local_files_only=True)
    assert_same_tensors(reloaded.state_dict(), hf.state_dict())
    assert (tmp_path / "back" / "tokenizer.json").is_file()


def test_sharded_checkpoint_converts(tmp_path):
    hf = build_hf("qwen2_moe")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    cfg, state_dict = interop.load_hf_dir(tmp_path / "hf")
    assert_same_tensors(state_dict, interop.from_hf_model(hf)[1])


def test_cli_entry_point_reports_a_missing_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "moe_lab.interop.hf", "convert", str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "config.json" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ errors


def convert_error(capsys, hf_dir, out_dir) -> str:
    capsys.readouterr()  # drop save_pretrained's progress bars
    assert interop.main(["convert", str(hf_dir), str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "arch,tensor",
    [
        ("mixtral", "model.layers.1.self_attn.k_proj.weight"),
        ("mixtral", "model.layers.0.block_sparse_moe.experts.2.w3.weight"),
        ("qwen2_moe", "model.layers.2.mlp.shared_expert_gate.weight"),
        ("qwen3_moe", "model.layers.3.self_attn.q_norm.weight"),
    ],
)
def test_missing_tensor_is_named(arch, tensor, tmp_path, capsys):
    build_hf(arch).save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    del weights[tensor]
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    assert repr(tensor) in convert_error(capsys, tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tensor_in_memory_is_named():
    hf = build_hf("olmoe")
    state_dict = hf.state_dict()
    del state_dict["model.layers.0.mlp.experts.down_proj"]
    with pytest.raises(CheckpointError, match="'model.layers.0.mlp.experts.down_proj' is missing"):
        interop.from_hf(hf.config, state_dict)


@pytest.mark.parametrize(
    "arch,field,value",
    [
        ("mixtral", "num_local_experts", 8),  # more experts than the checkpoint holds
        ("mixtral", "hidden_act", "gelu"),
        ("olmoe", "intermediate_size", 40),  # experts narrower than the checkpoint's
        ("olmoe", "clip_qkv", 8.0),
        ("qwen2_moe", "shared_expert_intermediate_size", 32),
        ("qwen2_moe", "use_sliding_window", True),
        ("qwen3_moe", "attention_bias", True),
        ("qwen3_moe", "decoder_sparse_step", 1),  # makes layer 0 an MoE layer, the checkpoint has it dense
        ("qwen3_moe", "tie_word_embeddings", False),  # the checkpoint stores no separate head
    ],
)
def test_mismatched_or_unsupported_config_field_is_named(arch, field, value, tmp_path, capsys):
    build_hf(arch).save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    assert field in convert_error(capsys, tmp_path / "hf", tmp_path / "out")


def test_unsupported_architecture_is_named(tmp_path, capsys):
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4
        )
    )
    with pytest.raises(ConfigError, match="'llama' is not supported; expected one of mixtral, olmoe"):
        interop.from_hf_model(llama)
    llama.save_pretrained(tmp_path / "llama")
    assert "'llama'" in convert_error(capsys, tmp_path / "llama", tmp_path / "out")


@pytest.mark.parametrize(
    "overrides,architecture,key",
    [
        (dict(activation="gelu"), None, "model.activation"),
        (dict(router="sigmoid_bias"), None, "model.moe.router"),
        (dict(renormalize=False), None, "model.moe.renormalize"),
        (dict(placement="every_n"), "mixtral", "model.moe.placement"),
        (dict(n_shared_experts=1), None, "model.moe.shared_expert_gate"),
        (dict(), "olmoe", "model.qk_norm"),
        (dict(qk_norm="full", head_dim=16), None, "model.head_dim"),
    ],
)
def test_unexportable_option_is_named(overrides, architecture, key, tmp_path, capsys):
    model = MoETransformer(tiny_config(**overrides))
    with pytest.raises(ConfigError) as err:
        interop.to_hf_config(model.cfg, architecture)
    assert err.value.key == key
    save_pretrained(tmp_path / "moe", model.cfg, model.state_dict())
    argv = ["export", str(tmp_path / "moe"), str(tmp_path / "hf")] + (
        ["--architecture", architecture] if architecture else []
    )
    capsys.readouterr()
    assert interop.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {key}: ")


@pytest.mark.parametrize("arch", ["olmoe", "qwen2_moe"])
def test_fine_tune_of_a_converted_model_through_the_train_cli(arch, tmp_path, data_cache):
    """A converted HF model is an experiment's starting point (`model_init`): the run takes the
    pretrained architecture, loads its weights and trains on (byte-level) Shakespeare."""
    torch.manual_seed(0)
    model_class = getattr(transformers, HF_MODELS[arch][1])
    hf_model = model_class(hf_config(arch, vocab_size=256, max_position_embeddings=64)).eval()
    hf_dir, ml_dir = tmp_path / "hf", tmp_path / "converted"
    hf_model.save_pretrained(hf_dir)
    interop.convert_hf_dir(hf_dir, ml_dir)
    (tmp_path / "finetune.yaml").write_text(
        f"name: finetune\nmodel_init: {ml_dir}\noutput_dir: {tmp_path / 'runs'}\n"
        f"data: {{block_size: 32, batch_size: 2, cache_dir: {data_cache}}}\n"
        "optim: {lr: 1.0e-12, warmup_steps: 1, weight_decay: 0.0}\n"
        "trainer: {max_steps: 2, val_every_n_steps: 2, val_batches: 1, progress_bar: false}\n"
        "monitor: {sample_tokens: 0, heatmap_every_n_steps: 0}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.train", str(tmp_path / "finetune.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "finetune" / "version_0"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    config_text = (run_dir / "config.yaml").read_text()
    expected = build_pretrained(ml_dir)
    assert f"qk_norm: {expected.cfg.qk_norm}" in config_text and "vocab_size: 256" in config_text
    # At a learning rate of 1e-12 the trained weights are the converted ones: they were loaded.
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(trained[f"model.{name}"], tensor, rtol=0, atol=1e-6, msg=name)
