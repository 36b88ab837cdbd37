"""moe_lab model directories and trainer checkpoints: exact round trips, one-line errors naming the
file, tensor or key at fault."""

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from moe_lab.errors import ConfigError
from moe_lab.interop.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    build_pretrained,
    load_lightning_checkpoint,
    load_pretrained,
    save_pretrained,
)
from moe_lab.model import MoETransformer
from tests.helpers import randomise, tiny_config


def trained_model(**overrides) -> MoETransformer:
    model = MoETransformer(tiny_config(**overrides)).eval()
    randomise(model)
    return model


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("tied", [True, False])
def test_pretrained_directory_round_trip_is_exact(tied, tmp_path):
    model = trained_model(
        tie_embeddings=tied, qk_norm="head", n_shared_experts=1, shared_expert_gate=True, router="sigmoid_bias"
    )  # new options and a persistent buffer survive too
    save_pretrained(tmp_path, model.cfg, model.state_dict())
    on_disk = load_file(tmp_path / WEIGHTS_FILE)
    assert ("lm_head.weight" in on_disk) is not tied  # a tied embedding is stored once
    cfg, state_dict = load_pretrained(tmp_path)
    assert cfg == model.cfg
    assert_same_tensors(state_dict, model.state_dict())
    rebuilt = build_pretrained(tmp_path).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(rebuilt(idx).logits, model(idx).logits)
    if tied:
        assert rebuilt.lm_head.weight is rebuilt.embed.weight


def test_config_file_is_the_omegaconf_yaml_of_the_config(tmp_path):
    model = trained_model(head_dim=16, attention_bias=True)
    save_pretrained(tmp_path, model.cfg, model.state_dict())
    written = OmegaConf.load(tmp_path / CONFIG_FILE)
    assert OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(type(model.cfg)), written)) == model.cfg
    assert written.head_dim == 16 and written.attention_bias is True


def test_missing_directory_names_the_config_file(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope' / CONFIG_FILE}: not found"):
        load_pretrained(tmp_path / "nope")


def test_missing_or_misshapen_tensor_is_named(tmp_path):
    model = trained_model()
    save_pretrained(tmp_path, model.cfg, model.state_dict())
    weights = load_file(tmp_path / WEIGHTS_FILE)
    del weights["blocks.1.ffn.router.gate.weight"]
    save_file(weights, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="'blocks.1.ffn.router.gate.weight' is missing"):
        build_pretrained(tmp_path)
    weights["blocks.1.ffn.router.gate.weight"] = torch.zeros(3, 32)
    save_file(weights, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"'blocks.1.ffn.router.gate.weight' has shape \[3, 32\], .* \[4, 32\]"):
        build_pretrained(tmp_path)


@pytest.mark.parametrize(
    "edit,key",
    [
        ({"n_layer": 3}, "model.n_layer"),  # unknown key
        ({"moe": {"top_k": 9}}, "model.moe.top_k"),  # invalid value
        ({"qk_norm": "rms"}, "model.qk_norm"),
    ],
)
def test_bad_config_file_names_the_key(edit, key, tmp_path):
    model = trained_model()
    save_pretrained(tmp_path, model.cfg, model.state_dict())
    config = OmegaConf.merge(OmegaConf.load(tmp_path / CONFIG_FILE), edit)
    (tmp_path / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    with pytest.raises(ConfigError) as err:
        load_pretrained(tmp_path)
    assert err.value.key == key and "\n" not in str(err.value)


def lightning_checkpoint(model: MoETransformer) -> dict:
    """What the trainer's checkpoint holds, built by hand: prefixed state dict, plain-dict hparams."""
    return {
        "epoch": 1,
        "global_step": 10,
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()} | {"ema.step": torch.tensor(3)},
        "hyper_parameters": {
            "config": {"model": OmegaConf.to_container(OmegaConf.structured(model.cfg)), "optim": {"lr": 1e-3}}
        },
    }


def test_lightning_checkpoint_gives_config_and_model_state(tmp_path):
    model = trained_model(n_kv_heads=2)
    torch.save(lightning_checkpoint(model), tmp_path / "last.ckpt")
    cfg, state_dict = load_lightning_checkpoint(tmp_path / "last.ckpt")
    assert cfg == model.cfg
    assert_same_tensors(state_dict, model.state_dict())


class NotData:  # anything torch.load(weights_only=True) refuses to rebuild
    pass


def test_lightning_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    ckpt = lightning_checkpoint(trained_model())
    ckpt["hyper_parameters"]["extra"] = NotData()
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_lightning_checkpoint(tmp_path / "odd.ckpt")


def test_lightning_checkpoint_without_model_config_is_named(tmp_path):
    ckpt = lightning_checkpoint(trained_model())
    del ckpt["hyper_parameters"]["config"]["model"]
    torch.save(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="hyper_parameters.config.model"):
        load_lightning_checkpoint(tmp_path / "x.ckpt")
