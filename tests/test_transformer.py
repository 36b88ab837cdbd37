"""Whole-model behaviour: causality, dense equivalence, placement, sampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from moe_lab.model.config import ModelConfig, MoEConfig
from moe_lab.model.ffn import DenseFFN
from moe_lab.model.moe import MoELayer
from moe_lab.model.routers import ROUTER_REGISTRY
from moe_lab.model.transformer import MoETransformer
from tests.helpers import randomise, tiny_config


def perturb_future(model, t_changed=5, seq=12, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.cfg.vocab_size, (batch, seq), generator=g)
    changed = idx.clone()
    changed[:, t_changed:] = (changed[:, t_changed:] + 1) % model.cfg.vocab_size
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    return a[:, :t_changed], b[:, :t_changed]


TOKEN_CHOICE = sorted(name for name, cls in ROUTER_REGISTRY.items() if cls.token_choice)
OTHER_CHOICE = sorted(name for name, cls in ROUTER_REGISTRY.items() if not cls.token_choice)
assert TOKEN_CHOICE, "no token-choice router registered: the tests below would pass vacuously"


@pytest.mark.parametrize("router", TOKEN_CHOICE)
def test_token_choice_is_causal(router):
    model = MoETransformer(tiny_config(router=router, n_kv_heads=2)).double().eval()
    randomise(model)
    before, after = perturb_future(model)
    torch.testing.assert_close(before, after, rtol=0, atol=1e-12)


@pytest.mark.parametrize("router", OTHER_CHOICE)
def test_expert_choice_leaks_the_future(router):
    """Documented caveat (Zhou et al. 2022 in a causal LM): an expert picks its top-C tokens among
    the whole batch, so changing later tokens changes which earlier tokens get processed."""
    model = MoETransformer(tiny_config(router=router)).double().eval()
    randomise(model, std=1.0)
    leaked = 0
    for seed in range(5):
        before, after = perturb_future(model, seed=seed)
        leaked += not torch.allclose(before, after, atol=1e-12)
    assert leaked > 0


def reference_dense_logits(model: MoETransformer, idx: torch.Tensor) -> torch.Tensor:
    """A plain re-implementation of a Llama-style dense transformer from the state dict:
    explicit masked softmax attention and RoPE applied pair by pair (i, i + d/2)."""
    cfg, sd = model.cfg, model.state_dict()
    B, S = idx.shape
    H, hd = cfg.n_heads, cfg.d_model // cfg.n_heads

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(v):  # v [B, H, S, hd]
        out = v.clone()
        half = hd // 2
        for pos in range(S):
            for i in range(half):
                angle = pos / cfg.rope_theta ** (2 * i / hd)
                c, s = math.cos(angle), math.sin(angle)
                a, b = v[:, :, pos, i], v[:, :, pos, i + half]
                out[:, :, pos, i] = a * c - b * s
                out[:, :, pos, i + half] = b * c + a * s
        return out

    x = sd["embed.weight"][idx]
    mask = torch.full((S, S), float("-inf"), dtype=x.dtype).triu(1)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        h = rms(x, sd[p + "attn_norm.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}_proj.weight"]).view(B, S, H, hd).transpose(1, 2) for n in "qkv")
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(hd) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, S, -1)
        x = x + F.linear(y, sd[p + "attn.o_proj.weight"])
        h = rms(x, sd[p + "ffn_norm.weight"])
        gate, up = F.linear(h, sd[p + "ffn.w_in.weight"]).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, sd[p + "ffn.w_out.weight"])
    return F.linear(rms(x, sd["norm.weight"]), sd["embed.weight"])


def test_model_without_moe_layers_equals_reference_dense_transformer():
    cfg = ModelConfig(
        vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=40, max_seq_len=16, moe=MoEConfig(placement="none")
    )
    model = MoETransformer(cfg).double().eval()
    randomise(model, std=0.2)
    idx = torch.randint(0, 50, (2, 9))
    out = model(idx)
    # float64: agreement to ~1e-9 (summation order varies with threads); a wrong RoPE pairing or norm
    # placement differs by ~1e-1.
    torch.testing.assert_close(out.logits, reference_dense_logits(model, idx), rtol=1e-7, atol=1e-8)
    assert out.routing == {} and out.aux_loss.item() == 0.0


@pytest.mark.parametrize(
    "placement,extra,expected",
    [
        ("all", {}, [0, 1, 2, 3, 4, 5]),
        ("none", {}, []),
        ("every_n", {"every_n": 2}, [1, 3, 5]),
        ("every_n", {"every_n": 3}, [2, 5]),
        ("last_half", {}, [3, 4, 5]),
        ("first_k_dense", {"first_k_dense": 1}, [1, 2, 3, 4, 5]),
        ("list", {"layers": [4, 0]}, [0, 4]),
    ],
)
def test_placement_puts_moe_layers_exactly_where_asked(placement, extra, expected):
    model = MoETransformer(tiny_config(n_layers=6, placement=placement, **extra))
    moe_blocks = [i for i, b in enumerate(model.blocks) if isinstance(b.ffn, MoELayer)]
    dense_blocks = [i for i, b in enumerate(model.blocks) if isinstance(b.ffn, DenseFFN)]
    assert moe_blocks == expected
    assert dense_blocks == [i for i in range(6) if i not in expected]
    out = model(torch.randint(0, 64, (1, 4)))
    assert sorted(out.routing) == expected


def test_tied_embeddings_share_one_tensor_and_untied_do_not():
    tied = MoETransformer(tiny_config(tie_embeddings=True))
    untied = MoETransformer(tiny_config(tie_embeddings=False))
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.lm_head.weight is not untied.embed.weight


def test_layernorm_and_gelu_variants_run_and_train():
    torch.manual_seed(0)
    model = MoETransformer(tiny_config(norm="layernorm", activation="gelu"))
    idx = torch.randint(0, 64, (2, 8))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(5):
        optimiser.zero_grad()
        out = model(idx, idx)
        (out.lm_loss + model.router_loss(out)).backward()
        if step == 0:  # every weight, the norms' and the experts' included, is reached by the loss
            for name, p in model.named_parameters():
                assert p.grad is not None and p.grad.isfinite().all() and p.grad.abs().sum() > 0, name
        optimiser.step()
        losses.append(out.lm_loss.item())
    assert losses[-1] < losses[0]


def test_generate_greedy_matches_manual_argmax_loop():
    model = MoETransformer(tiny_config()).eval()
    randomise(model, std=0.5)
    prompt = torch.randint(0, 64, (2, 3))
    got = model.generate(prompt, 6, temperature=0)
    idx = prompt
    for _ in range(6):
        nxt = model(idx).logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], 1)
    assert torch.equal(got, idx)
    assert torch.equal(model.generate(prompt, 6, temperature=1.0, sample_top_k=1), idx)  # top-1 is greedy


def test_generate_samples_only_from_top_k():
    model = MoETransformer(tiny_config()).eval()
    randomise(model, std=0.5)
    prompt = torch.randint(0, 64, (64, 3))
    allowed = model(prompt).logits[:, -1].topk(3).indices
    sampled = model.generate(prompt, 1, temperature=2.0, sample_top_k=3, generator=torch.Generator().manual_seed(0))[
        :, -1
    ]
    assert (sampled.unsqueeze(1) == allowed).any(1).all()


def test_update_router_biases_moves_only_sigmoid_bias_routers():
    model = MoETransformer(tiny_config(router="sigmoid_bias", bias_update_speed=0.5))
    counts = {i: torch.tensor([4.0, 0.0, 0.0, 0.0]) for i in model.moe_layers}
    model.update_router_biases(counts)
    for i in model.moe_layers:
        assert model.blocks[i].ffn.router.selection_bias.tolist() == [-0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("router", sorted(ROUTER_REGISTRY))
def test_a_bias_update_changes_nothing_in_a_router_without_one(router):
    model = MoETransformer(tiny_config(router=router))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    model.update_router_biases({i: torch.tensor([4.0, 0.0, 0.0, 0.0]) for i in model.moe_layers})
    changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
    if ROUTER_REGISTRY[router].updates_bias:
        assert changed and all(".ffn.router." in name for name in changed)
    else:
        assert not changed


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_router_losses_are_added_per_moe_layer_or_averaged(reduction):
    """Switch/ST-MoE add coef * loss for every MoE layer ("sum"); "mean" divides by the MoE layer count.
    Reference: each layer's own aux and z loss (its routing stats), weighted and added by hand."""
    model = MoETransformer(
        tiny_config(n_layers=3, aux_loss_coef=0.01, z_loss_coef=0.002, router_loss_reduction=reduction)
    )
    randomise(model)
    out = model(torch.randint(0, 64, (2, 8)))
    layers = list(out.routing.values())
    assert len(layers) == 3
    by_hand = sum(0.01 * s.aux_loss.item() + 0.002 * s.z_loss.item() for s in layers)
    expected = by_hand if reduction == "sum" else by_hand / 3
    assert model.router_loss(out).item() == pytest.approx(expected, rel=1e-6)
