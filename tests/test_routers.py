"""Each router against a hand-worked example (plain-Python math as the reference)."""

import math

import pytest
import torch

from moe_lab.model.routers import ROUTER_REGISTRY

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0, 0.2, -0.5]  # 8 experts


def router_with_logits(name: str, logits_rows: list[list[float]], top_k: int, **kw):
    """A router whose logits for one-hot input row t are exactly logits_rows[t]."""
    n_tokens, n_experts = len(logits_rows), len(logits_rows[0])
    router = ROUTER_REGISTRY[name](n_tokens, n_experts, top_k, **kw)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor(logits_rows).t())
    return router, torch.eye(n_tokens)


def assignments(routing):
    return [
        (int(t), int(e), float(w))
        for t, e, w in zip(routing.token_idx, routing.expert_idx, routing.weight.detach(), strict=True)
    ]


def test_topk_mixtral_renormalised_top2():
    router, x = router_with_logits("topk", [LOGITS], top_k=2, renormalize=True)
    got = assignments(router(x, None))
    # Top-2 logits are 3.0 (expert 5) and 2.0 (expert 0): weights e^3/(e^3+e^2) and e^2/(e^3+e^2).
    w5 = 1.0 / (1.0 + math.exp(-1.0))
    assert [(t, e) for t, e, _ in got] == [(0, 5), (0, 0)]
    assert got[0][2] == pytest.approx(w5, abs=1e-6)
    assert got[1][2] == pytest.approx(1.0 - w5, abs=1e-6)


def test_topk_switch_raw_probability_top1():
    router, x = router_with_logits("topk", [LOGITS], top_k=1, renormalize=False)
    routing = router(x, None)
    z = sum(math.exp(v) for v in LOGITS)
    assert assignments(routing) == [(0, 5, pytest.approx(math.exp(3.0) / z, abs=1e-6))]
    expected_probs = [math.exp(v) / z for v in LOGITS]
    assert routing.probs[0].tolist() == pytest.approx(expected_probs, abs=1e-6)


def test_topk_slot_major_priority_order():
    rows = [LOGITS, list(reversed(LOGITS))]
    router, x = router_with_logits("topk", rows, top_k=2)
    got = [(t, e) for t, e, _ in assignments(router(x, None))]
    # Every token's first choice comes before any second choice (GShard's dropping priority).
    assert got == [(0, 5), (1, 2), (0, 0), (1, 7)]


def test_topk_jitter_only_in_training():
    router, x = router_with_logits("topk", [LOGITS], top_k=2, router_jitter=0.5)
    router.eval()
    a = router(x * 1.0, None).logits
    assert torch.equal(a, torch.tensor([LOGITS]))
    router.train()
    torch.manual_seed(0)
    b = router(x, None).logits
    assert not torch.equal(a, b)
    ratio = b[a != 0] / a[a != 0]
    assert ((ratio >= 0.5) & (ratio <= 1.5)).all()  # x scaled by U(1 - eps, 1 + eps)


def test_noisy_topk_eval_is_clean_topk_and_train_adds_softplus_noise():
    router, x = router_with_logits("noisy_topk", [LOGITS], top_k=2)
    with torch.no_grad():
        router.noise.weight.fill_(0.7)  # softplus(0.7) is the noise std for the one-hot input
    router.eval()
    assert [(e) for _, e, _ in assignments(router(x, None))] == [5, 0]
    router.train()
    torch.manual_seed(123)
    routing = router(x, None)
    torch.manual_seed(123)
    noise = torch.randn(1, 8)[0].tolist()
    std = math.log1p(math.exp(0.7))
    noisy = [logit + n * std for logit, n in zip(LOGITS, noise, strict=True)]
    top = sorted(range(8), key=lambda i: -noisy[i])[:2]
    denom = sum(math.exp(noisy[i]) for i in top)
    got = assignments(routing)
    assert [e for _, e, _ in got] == top
    assert [w for _, _, w in got] == pytest.approx([math.exp(noisy[i]) / denom for i in top], abs=1e-5)
    assert routing.logits[0].tolist() == pytest.approx(LOGITS)  # z-loss sees the clean logits


def test_sigmoid_bias_selects_with_bias_but_weights_without():
    router, x = router_with_logits("sigmoid_bias", [LOGITS], top_k=2, renormalize=True)
    with torch.no_grad():
        router.selection_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0]))
    sig = [1.0 / (1.0 + math.exp(-v)) for v in LOGITS]
    # With bias: expert 5 scores sig(3)-1 = -0.047, so experts 0 (0.881) and 1 (0.731) win.
    got = assignments(router(x, None))
    assert [e for _, e, _ in got] == [0, 1]
    total = sig[0] + sig[1]
    assert [w for _, _, w in got] == pytest.approx([sig[0] / total, sig[1] / total], abs=1e-6)


def test_sigmoid_bias_unnormalised_weights_are_affinities():
    router, x = router_with_logits("sigmoid_bias", [LOGITS], top_k=2, renormalize=False)
    got = assignments(router(x, None))
    assert [e for _, e, _ in got] == [5, 0]
    assert [w for _, _, w in got] == pytest.approx([1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(-2.0))])


def test_sigmoid_bias_update_rule():
    router, _ = router_with_logits("sigmoid_bias", [LOGITS], top_k=2, bias_update_speed=0.01)
    router.update_bias(torch.tensor([10.0, 0, 0, 0, 0, 30.0, 0, 0]))  # mean load 5
    assert router.selection_bias.tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01, 0.01, -0.01, 0.01, 0.01])


def test_expert_choice_each_expert_takes_its_top_c_tokens():
    rows = [[2.0, 0.0], [1.0, 1.5], [0.0, 0.1], [3.0, -1.0]]  # 4 tokens, 2 experts
    router, x = router_with_logits("expert_choice", rows, top_k=1)
    routing = router(x, capacity=2)
    probs = [[math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))] for a, b in rows]
    expected = []
    for e in range(2):
        best = sorted(range(4), key=lambda t: -probs[t][e])[:2]
        expected += [(t, e, probs[t][e]) for t in best]
    got = assignments(routing)
    assert [(t, e) for t, e, _ in got] == [(t, e) for t, e, _ in expected]
    assert [w for _, _, w in got] == pytest.approx([w for _, _, w in expected], abs=1e-6)


ROUTERS = sorted(ROUTER_REGISTRY)
assert ROUTERS, "no router registered: the registry-driven tests below would pass vacuously"


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_returns_a_well_formed_routing(name):
    """What MoELayer relies on, for any router: indices in range, probabilities per token, gate weights
    in [0, 1]; a token-choice router gives every token top_k distinct experts, a bounded one gives every
    expert exactly `capacity` distinct tokens."""
    T, E, k, cap = 12, 4, 2, 5
    router = ROUTER_REGISTRY[name](16, E, k)
    routing = router(torch.randn(T, 16, generator=torch.Generator().manual_seed(0)), cap)
    assert routing.logits.shape == routing.probs.shape == (T, E)
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(T))
    assert ((routing.weight >= 0) & (routing.weight <= 1)).all()
    assert routing.token_idx.min() >= 0 and routing.token_idx.max() < T
    assert routing.expert_idx.min() >= 0 and routing.expert_idx.max() < E
    pairs = set(zip(routing.token_idx.tolist(), routing.expert_idx.tolist(), strict=True))
    assert len(pairs) == routing.token_idx.numel()  # no (token, expert) pair twice
    per_token = torch.bincount(routing.token_idx, minlength=T)
    per_expert = torch.bincount(routing.expert_idx, minlength=E)
    if router.token_choice:
        assert per_token.tolist() == [k] * T
    if router.bounded:
        assert per_expert.tolist() == [cap] * E


# Two values of each router-specific option: a router that declares an option must behave differently
# under them (it really reads the option).
OPTION_PAIRS = dict(renormalize=(True, False), router_jitter=(0.0, 0.5), bias_update_speed=(0.0, 0.1))


def routing_after_one_update(name: str, **options) -> torch.Tensor:
    """Gate weights and choices in training mode, before and after one bias update (if the router has one)."""
    router, x = router_with_logits(name, [LOGITS, list(reversed(LOGITS)), LOGITS[::2] * 2], top_k=2, **options)
    router.train()
    seen = []
    for _ in range(2):
        torch.manual_seed(0)
        routing = router(x, 2)
        seen += [routing.weight.detach(), routing.expert_idx.float(), routing.logits.detach().flatten()]
        if router.updates_bias:
            router.update_bias(torch.bincount(routing.expert_idx, minlength=8).float())
    return torch.cat(seen)


@pytest.mark.parametrize("name", ROUTERS)
def test_declared_options_change_what_the_router_does(name):
    for key in ROUTER_REGISTRY[name].options:
        a, b = (routing_after_one_update(name, **{key: value}) for value in OPTION_PAIRS[key])
        assert not torch.equal(a, b), f"{name} declares {key} but ignores it"
