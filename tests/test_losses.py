"""Load-balancing loss, z-loss and loss-free bias balancing against their formulas."""

import math

import pytest
import torch

from moe_lab.model.losses import load_balancing_loss, router_z_loss
from moe_lab.model.moe import MoELayer
from moe_lab.model.routers import ROUTER_REGISTRY
from tests.helpers import tiny_config


def token_choice_lists(choice: list[list[int]]):
    """choice[t] = experts picked by token t -> slot-major token/expert index tensors."""
    T, k = len(choice), len(choice[0])
    token_idx = torch.arange(T).repeat(k)
    expert_idx = torch.tensor([choice[t][s] for s in range(k) for t in range(T)])
    return token_idx, expert_idx


def test_aux_loss_is_one_at_perfect_balance():
    E = 4
    probs = torch.full((8, E), 1.0 / E)
    token_idx, expert_idx = token_choice_lists([[t % E, (t + 1) % E] for t in range(8)])
    assert load_balancing_loss(probs, expert_idx, token_idx, E).item() == pytest.approx(1.0)


def test_aux_loss_matches_formula_on_small_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.2, 0.2, 0.6]])
    choice = [[0], [0], [0], [2]]
    token_idx, expert_idx = token_choice_lists(choice)
    # By hand: f = (3/4, 0, 1/4); P = column means = (0.5, 0.2, 0.3); L = 3 * (0.375 + 0 + 0.075).
    assert load_balancing_loss(probs, expert_idx, token_idx, 3).item() == pytest.approx(3 * 0.45)


def test_aux_loss_grows_with_imbalance():
    E, T = 4, 16
    values = []
    for skew in (0.0, 1.0, 2.0, 4.0):
        logits = torch.zeros(T, E)
        logits[:, 0] = skew
        probs = logits.softmax(-1)
        choice = probs.topk(1).indices if skew else torch.arange(T).remainder(E).view(T, 1)
        token_idx, expert_idx = token_choice_lists(choice.tolist())
        values.append(load_balancing_loss(probs, expert_idx, token_idx, E).item())
    assert values[0] == pytest.approx(1.0)
    assert values == sorted(values) and values[-1] > 3.0  # all tokens on expert 0 -> E * P_0


def test_sequence_scope_averages_per_sequence_losses():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2 * 5, 3, generator=g).softmax(-1)
    choice = torch.randint(0, 3, (10, 2), generator=g)
    token_idx, expert_idx = token_choice_lists(choice.tolist())
    per_seq = []
    for s in range(2):
        sel = (token_idx >= 5 * s) & (token_idx < 5 * (s + 1))
        per_seq.append(load_balancing_loss(probs[5 * s : 5 * (s + 1)], expert_idx[sel], token_idx[sel] - 5 * s, 3))
    got = load_balancing_loss(probs, expert_idx, token_idx, 3, seq_len=5)
    assert got.item() == pytest.approx(sum(per_seq).item() / 2)
    # Batch scope generally differs from the mean of the per-sequence losses.
    assert load_balancing_loss(probs, expert_idx, token_idx, 3).item() != pytest.approx(got.item())


def test_sequence_scope_with_a_sequence_that_got_no_assignment_is_finite():
    """Expert choice can leave a whole sequence unpicked: that sequence adds 0 (not 0/0) to the mean."""
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])
    token_idx, expert_idx = torch.tensor([0, 1]), torch.tensor([0, 1])  # both picks in sequence 0
    # By hand: sequence 0: f = (1/2, 1/2), P = (0.55, 0.45) -> 2 * 0.5 = 1.0; sequence 1 adds 0.
    got = load_balancing_loss(probs, expert_idx, token_idx, 2, seq_len=2)
    assert got.item() == pytest.approx(0.5)


def test_expert_choice_with_sequence_scope_trains_without_nan():
    layer = MoELayer(tiny_config(router="expert_choice", aux_loss_scope="sequence", capacity_factor=0.25))
    x = torch.zeros(4, 8, 32)
    x[0] = torch.randn(8, 32) * 5  # the experts' top tokens all come from sequence 0
    out = layer(x)
    assert torch.isfinite(out.aux_loss)


def test_z_loss_matches_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    by_hand = [math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()]
    assert router_z_loss(logits).item() == pytest.approx(sum(by_hand) / 2)


@pytest.mark.parametrize("router", sorted(ROUTER_REGISTRY))
def test_router_losses_reach_the_router_weights(router):
    layer = MoELayer(tiny_config(router=router))
    out = layer(torch.randn(2, 6, 32))
    (grad_aux,) = torch.autograd.grad(out.aux_loss, layer.router.gate.weight, retain_graph=True)
    (grad_z,) = torch.autograd.grad(out.z_loss, layer.router.gate.weight)
    assert grad_z.abs().sum() > 0
    if not ROUTER_REGISTRY[router].bounded:  # expert choice is balanced by construction: f is uniform
        assert grad_aux.abs().sum() > 0


def test_layer_aux_loss_uses_each_layers_own_routing():
    """The model averages per-layer losses; it never pools all layers' logits together."""
    from moe_lab.model.transformer import MoETransformer

    model = MoETransformer(tiny_config(n_layers=3))
    out = model(torch.randint(0, 64, (2, 8)))
    per_layer = torch.stack([s.aux_loss for s in out.routing.values()])
    assert out.aux_loss.item() == pytest.approx(per_layer.mean().item())
    assert len(out.routing) == 3


def test_sigmoid_bias_updates_reduce_imbalance_on_skewed_input():
    torch.manual_seed(0)
    E, D = 8, 16
    router = ROUTER_REGISTRY["sigmoid_bias"](D, E, 2, bias_update_speed=0.02)
    with torch.no_grad():
        router.gate.weight.normal_()
        router.gate.weight[0] += 1.5  # experts 0 and 1 are favoured by every token
        router.gate.weight[1] += 1.0
    x = torch.randn(512, D).abs()  # skewed: positive inputs push every token to experts 0/1

    def load_cv():
        counts = torch.bincount(router(x, None).expert_idx, minlength=E).float()
        return (counts.std(unbiased=False) / counts.mean()).item(), counts

    before, _ = load_cv()
    for _ in range(200):
        _, counts = load_cv()
        router.update_bias(counts)
    after, _ = load_cv()
    assert before > 1.0
    assert after < 0.25 * before
