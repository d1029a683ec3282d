"""The quantized layers: Q(W) forward with the tie rules, identity backward, Q(W) in the compute
dtype, and the inference cache that must never serve a stale Q(W)."""
import pytest
import torch

from qsnn_zoo.layers.quant import QuantConv2d, QuantLinear, quantize, quantize_ste, weight_codes


@pytest.mark.parametrize("mode", ["bin", "ter"])
def test_ste_forward_is_exactly_q_and_backward_is_identity(mode):
    torch.manual_seed(0)
    scale = torch.tensor(0.3)
    w = (torch.randn(1000) * 0.4).requires_grad_()
    q = quantize_ste(w, scale, mode)
    assert torch.equal(q, quantize(w.detach(), scale, mode))
    levels = {-0.3, 0.3} if mode == "bin" else {-0.3, 0.0, 0.3}
    assert set(torch.unique(q.detach()).tolist()) <= {float(torch.tensor(v)) for v in levels}
    upstream = torch.randn(1000)
    q.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_tie_rules():
    scale = torch.tensor(0.5)
    w = torch.tensor([0.0, -0.0, 0.25, -0.25, 0.2500001, -0.2500001])
    assert weight_codes(w, scale, "bin").tolist() == [1, 1, 1, -1, 1, -1]
    assert weight_codes(w, scale, "ter").tolist() == [0, 0, 0, 0, 1, -1]


def test_ste_in_bf16_gives_an_fp32_gradient():
    w = torch.randn(64, requires_grad=True)
    q = quantize_ste(w, w.detach().abs().mean(), "bin", torch.bfloat16)
    assert q.dtype == torch.bfloat16
    assert torch.equal(q, quantize(w.detach(), w.detach().abs().mean(), "bin").to(torch.bfloat16))
    q.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.equal(w.grad, torch.ones(64))


def test_q_is_made_in_the_autocast_dtype():
    layer = QuantLinear(8, 4, quant="ter")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.quantized_weight().dtype == torch.bfloat16
        with torch.no_grad():
            assert layer.quantized_weight().dtype == torch.bfloat16
    assert layer.quantized_weight().dtype == torch.float32


def test_inference_reuses_q_until_the_weights_change():
    torch.manual_seed(1)
    layer = QuantConv2d(3, 4, kernel_size=3, quant="bin")
    with torch.no_grad():
        first = layer.quantized_weight()
        assert layer.quantized_weight() is first  # cached
    optimizer = torch.optim.SGD(layer.parameters(), lr=10.0)
    layer(torch.randn(2, 3, 5, 5)).square().sum().backward()
    optimizer.step()  # in place
    with torch.no_grad():
        after_step = layer.quantized_weight()
        assert after_step is not first
        assert torch.equal(after_step, quantize(layer.weight, layer.scale, "bin"))
        layer.weight.clamp_(-1e-9, 1e-9)
        assert torch.equal(layer.quantized_weight(), quantize(layer.weight, layer.scale, "bin"))
        layer.scale.mul_(3)
        assert torch.equal(layer.quantized_weight(), quantize(layer.weight, layer.scale, "bin"))


def test_inference_cache_follows_load_state_dict_and_replaced_weights():
    a, b = QuantLinear(6, 5, quant="ter"), QuantLinear(6, 5, quant="ter")
    with torch.no_grad():
        stale = a.quantized_weight().clone()
        a.load_state_dict(b.state_dict())
        assert torch.equal(a.quantized_weight(), b.quantized_weight())
        assert not torch.equal(a.quantized_weight(), stale)
        a.weight = torch.nn.Parameter(torch.randn(5, 6))
        assert torch.equal(a.quantized_weight(), quantize(a.weight, a.scale, "ter"))


def test_training_forward_is_never_cached_and_reaches_the_latent_weights():
    layer = QuantLinear(6, 3, quant="bin")
    q1, q2 = layer.quantized_weight(), layer.quantized_weight()
    assert q1 is not q2 and q1.requires_grad
    layer(torch.randn(4, 6)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
