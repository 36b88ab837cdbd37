"""Bad model configs raise one clear ConfigError naming the key, before any tensor is built."""

import pytest
import torch

from moe_lab.errors import ConfigError
from moe_lab.model.config import validate_model_config
from moe_lab.model.routers import ROUTER_REGISTRY
from moe_lab.model.transformer import MoETransformer
from tests.helpers import tiny_config

BAD = [
    (dict(top_k=5, n_experts=4), "model.moe.top_k", "model.moe.n_experts"),
    (dict(d_model=30, n_heads=4), "model.d_model", "model.n_heads"),
    (dict(router="hash"), "model.moe.router", "expert_choice"),
    (dict(aux_loss_coef=-0.1), "model.moe.aux_loss_coef", ">= 0"),
    (dict(z_loss_coef=-1.0), "model.moe.z_loss_coef", ">= 0"),
    (dict(placement="list", layers=[0, 2]), "model.moe.layers", "n_layers"),
    (dict(placement="list", layers=[]), "model.moe.layers", "at least one"),
    (dict(placement="list", layers=[1, 1]), "model.moe.layers", "duplicate"),
    (dict(placement="diagonal"), "model.moe.placement", "every_n"),
    (dict(placement="first_k_dense", first_k_dense=2), "model.moe.first_k_dense", "n_layers"),
    (dict(granularity=5), "model.moe.granularity", "divisible"),
    (dict(n_kv_heads=3), "model.n_kv_heads", "model.n_heads"),
    (dict(activation="tanh"), "model.activation", "swiglu"),
    (dict(norm="batchnorm"), "model.norm", "rmsnorm"),
    (dict(capacity_factor=-1.0), "model.moe.capacity_factor", ">= 0"),
    (dict(aux_loss_scope="micro"), "model.moe.aux_loss_scope", "sequence"),
    (dict(router_jitter=1.5), "model.moe.router_jitter", "< 1"),
    (dict(n_experts=0), "model.moe.n_experts", ">= 1"),
    (dict(qk_norm="layer"), "model.qk_norm", "head"),
    (dict(head_dim=-2), "model.head_dim", ">= 0"),
    (dict(head_dim=7), "model.head_dim", "even"),
    (dict(shared_expert_gate=True), "model.moe.shared_expert_gate", "model.moe.n_shared_experts"),
]


@pytest.mark.parametrize("overrides,key,mentions", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_config_names_the_key_before_building_tensors(overrides, key, mentions, monkeypatch):
    def no_tensors(*a, **k):
        raise AssertionError("a tensor was built before validation")

    monkeypatch.setattr(torch.nn.Embedding, "__init__", no_tensors)
    with pytest.raises(ConfigError) as err:
        MoETransformer(tiny_config(**overrides))
    message = str(err.value)
    assert err.value.key == key
    assert message.startswith(key) and mentions in message
    assert "\n" not in message


def test_dense_model_ignores_moe_only_keys():
    model = MoETransformer(tiny_config(placement="none", top_k=9))  # top_k unused without experts
    assert model.moe_layers == []


def test_explicit_head_dim_frees_d_model_from_n_heads():
    model = MoETransformer(tiny_config(d_model=30, n_heads=4, head_dim=8, n_kv_heads=2))
    assert model.blocks[0].attn.q_proj.weight.shape == (32, 30)
    assert model.blocks[0].attn.k_proj.weight.shape == (16, 30)


# A valid value other than the schema default for every router-specific key: each router must either
# read the key (the model builds) or refuse it by name (validation), never ignore it silently.
ROUTER_OPTION_VALUES = dict(renormalize=False, router_jitter=0.1, bias_update_speed=0.01)


@pytest.mark.parametrize("router", sorted(ROUTER_REGISTRY))
@pytest.mark.parametrize("key", sorted(ROUTER_OPTION_VALUES))
def test_a_router_refuses_the_options_it_ignores(router, key):
    cfg = tiny_config(router=router, **{key: ROUTER_OPTION_VALUES[key]})
    if key in ROUTER_REGISTRY[router].options:
        validate_model_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate_model_config(cfg)
    assert err.value.key == f"model.moe.{key}" and router in str(err.value)


@pytest.mark.parametrize("router", sorted(ROUTER_REGISTRY))
def test_router_jitter_is_refused_by_every_router_but_topk(router):
    """The bug: jitter is applied by the topk router only and was silently ignored elsewhere."""
    cfg = tiny_config(router=router, router_jitter=0.1)
    if router == "topk":
        validate_model_config(cfg)
    else:
        with pytest.raises(ConfigError, match="model.moe.router_jitter"):
            validate_model_config(cfg)


def test_every_router_specific_key_has_a_test_value():
    declared = {key for cls in ROUTER_REGISTRY.values() for key in cls.options}
    assert declared and declared <= set(ROUTER_OPTION_VALUES)


def test_options_are_not_checked_on_a_dense_model():
    validate_model_config(tiny_config(placement="none", router="expert_choice", router_jitter=0.1))
