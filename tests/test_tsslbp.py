"""TSSL-BP: the neuron's custom backward against values worked out by hand from docs/method.md §C.4, the
kernel loss of C.3 and the shared dropout of C.1. Constants: tau_m = 5, tau_s = 3, threshold 1, alpha 0.2, T = 3."""
import math

import pytest
import torch

from qsnn_zoo.layers.neurons import TSSLNeuron
from qsnn_zoo.models.alexnet import SharedDropout
from qsnn_zoo.train.losses import desired_spikes, tssl_kernel_loss

# Two neurons. Neuron A gets currents 1.5, 0.5, 1.2:
#   t0: u~ = 1.5 -> spike, du = 1.5, a = 1/3;   t1: u~ = 0.5, no spike, du = 0.5, a = 2/9;
#   t2: u~ = 0.8 * 0.5 + 1.2 = 1.6 -> spike, du = -0.5/5 + 1.2 = 1.1, a = 4/27 + 1/3.
# Neuron B gets 0.3, 0.2, 0.1 and never spikes: u~ = 0.3, 0.44, 0.452, a = 0 (< 1/12: fallback).
CURRENTS = [[1.5, 0.3], [0.5, 0.2], [1.2, 0.1]]
DELTA = [0.3, -0.2, 0.5]  # dL/da_t, the same for both neurons
# G_t = sum_k kappa_k delta_{t+k}, kappa = 1/3, 2/9, 4/27:
G = [0.3 / 3 - 0.2 * 2 / 9 + 0.5 * 4 / 27, -0.2 / 3 + 0.5 * 2 / 9, 0.5 / 3]


def _sigmoid_derivative(u_tilde):
    z = min(max((1 - u_tilde) / 0.2, -8), 8)
    return math.exp(z) / (0.2 * (1 + math.exp(z)) ** 2)


# Neuron A, backwards in time (rho_t = -1/du_t):
#   t2: g = |rho_2| G_2 = G_2 / 1.1; carried Theta = g (spike)
#   t1: no spike: g = (1 - 1/5) Theta; Theta <- 0.8 Theta
#   t0: spike: g = |rho_0| G_0 + (1/5) u~_0 |rho_0| Theta = (2/3) G_0 + 0.2 * 1.5 * (2/3) * 0.8 * G_2 / 1.1
EXPECTED_A = [2 / 3 * G[0] + 0.2 * 1.5 * 2 / 3 * 0.8 * G[2] / 1.1, 0.8 * G[2] / 1.1, G[2] / 1.1]
# Neuron B: the fallback G_t * f(u~_t) at every step.
EXPECTED_B = [G[0] * _sigmoid_derivative(0.3), G[1] * _sigmoid_derivative(0.44), G[2] * _sigmoid_derivative(0.452)]


def test_tssl_backward_matches_hand_computed_values():
    neuron = TSSLNeuron(tau_m=5.0, tau_s=3.0, threshold=1.0, alpha=0.2)
    current = torch.tensor(CURRENTS, dtype=torch.float64).view(3, 1, 2).requires_grad_(True)
    psp = neuron(current)
    torch.testing.assert_close(psp[:, 0, 0], torch.tensor([1 / 3, 2 / 9, 4 / 27 + 1 / 3], dtype=torch.float64))
    assert torch.all(psp[:, 0, 1] == 0)
    delta = torch.tensor(DELTA, dtype=torch.float64).view(3, 1, 1).expand(3, 1, 2)
    psp.backward(delta)
    torch.testing.assert_close(current.grad[:, 0, 0], torch.tensor(EXPECTED_A, dtype=torch.float64))
    torch.testing.assert_close(current.grad[:, 0, 1], torch.tensor(EXPECTED_B, dtype=torch.float64))


def test_gradients_reach_the_weights_through_a_tiny_layer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3, bias=False)
    neuron = TSSLNeuron()
    x = torch.rand(5, 2, 4) * 2
    psp = neuron(torch.stack([layer(x_t) for x_t in x]))
    tssl_kernel_loss(psp, torch.tensor([0, 2]), tau_s=3.0).backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_kernel_loss_target_and_sum():
    assert desired_spikes(5).tolist() == [0, 1, 1, 1, 1]
    assert desired_spikes(10).tolist() == [0, 1] * 5
    T, K = 5, 3
    target = torch.tensor([0, 1 / 3, 5 / 9, 19 / 27, 65 / 81])
    psp = torch.zeros(T, 2, K)
    # zero output: loss = 1/2 * sum of squared targets of the two label neurons
    torch.testing.assert_close(tssl_kernel_loss(psp, torch.tensor([1, 2]), 3.0), (target**2).sum())
    psp[:, 0, 1] = target
    torch.testing.assert_close(tssl_kernel_loss(psp, torch.tensor([1, 2]), 3.0), 0.5 * (target**2).sum())


@pytest.mark.parametrize("p, dtype", [(0.2, torch.bfloat16), (0.2, torch.float32), (0.3, torch.bfloat16)])
def test_shared_dropout_masks_sample_channel_and_row_and_keeps_the_scale(p, dtype):
    """docs/method.md §C.1: one mask value per (sample, channel, row), shared over columns and time,
    kept values scaled by 1/(1-p); the scale rides on the mask where the dtype holds it exactly
    (p = 0.2), otherwise the input is multiplied and divided as written, within one rounding alike."""
    dropout = SharedDropout(p).train()
    x = (torch.rand(3, 64, 8, 6, 5, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype).requires_grad_()
    torch.manual_seed(1)
    y = dropout(x)
    torch.manual_seed(1)
    keep = torch.empty(1, 64, 8, 6, 1, dtype=dtype).bernoulli_(1 - p)
    expected = x.detach() * keep / (1 - p)
    torch.testing.assert_close(y, expected, rtol=2 ** -7 if dtype == torch.bfloat16 else 1e-6, atol=0)
    dropped = y == 0
    assert torch.equal(dropped, dropped[:1, :, :, :, :1].expand_as(dropped)), "one mask per sample, channel, row"
    assert abs(float((~dropped).float().mean()) - (1 - p)) < 0.05
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, (keep / (1 - p)).expand_as(x).to(dtype), rtol=2 ** -7, atol=0)
    assert torch.equal(dropout.eval()(x), x)
