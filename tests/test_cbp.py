"""The CBP engine against docs/method.md §B, on tiny models built from the package's quantized layers."""
import pytest
import torch
from torch import nn

from qsnn_zoo import load_weights, save_weights
from qsnn_zoo.cbp import CBP, cfs, constraint, constraint_value, next_g, window
from qsnn_zoo.layers.quant import QuantLinear, quantized_modules
from qsnn_zoo.train.checkpoint import seed_everything
from qsnn_zoo.train.loop import StepRule, train_step
from qsnn_zoo.weights import read_state

S = 0.5  # scale: binary levels -0.5, 0.5 (h = 0.5); ternary -0.5, 0, 0.5 (h = 0.25)

# (w, C, dC/dw) at chosen points, worked out by hand from docs/method.md §B.3 for s = 0.5.
CASES = {
    # binary, g = 1 (u = 0): only out-of-range weights are constrained; +2 from q_K = 0.5 upwards
    ("bin", 1): [(-0.9, 0.8, -2), (-0.5, 0, 0), (-0.2, 0, 0), (0.3, 0, 0), (0.5, 0, 2), (0.7, 0.4, 2)],
    # binary, g = 2 (u h = 0.25): triangles within 0.25 of a level, free band |w| < 0.25
    ("bin", 2): [(-0.5, 0, 2), (-0.3, 0.4, 2), (-0.2, 0, 0), (0.2, 0, 0), (0.3, 0.4, -2), (0.45, 0.1, -2)],
    # binary, g = 10 (u h = 0.45): free band |w| < 0.05
    ("bin", 10): [(-0.1, 0.8, 2), (-0.04, 0, 0), (0.04, 0, 0), (0.1, 0.8, -2), (0.6, 0.2, 2)],
    # ternary, g = 2 (u h = 0.125): free bands |w -+ 0.25| < 0.125
    ("ter", 2): [(-0.45, 0.1, 2), (-0.3, 0, 0), (-0.1, 0.2, -2), (0.0, 0, 2), (0.1, 0.2, 2), (0.2, 0, 0), (0.4, 0.2, -2)],
    # ternary, g = 20 (u h = 0.2375): free bands |w -+ 0.25| < 0.0125
    ("ter", 20): [(-0.3, 0.4, 2), (-0.26, 0, 0), (0.24, 0, 0), (0.27, 0.46, -2), (-0.6, 0.2, -2)],
}


@pytest.mark.parametrize("mode,g", sorted(CASES))
def test_constraint_values_and_gradients_match_spec(mode, g):
    ws, values, grads = zip(*CASES[(mode, g)])
    w = torch.tensor(ws, dtype=torch.float64, requires_grad=True)
    c = constraint(w, torch.tensor(S, dtype=torch.float64), mode, g)
    c.sum().backward()
    torch.testing.assert_close(c.detach(), torch.tensor(values, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.grad, torch.tensor(grads, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["bin", "ter"])
def test_constraint_without_window_is_twice_the_distance_to_the_nearest_level(mode):
    levels = torch.tensor([-S, S] if mode == "bin" else [-S, 0.0, S], dtype=torch.float64)
    w = torch.linspace(-1.2, 1.2, 2001, dtype=torch.float64)
    distance = (w[:, None] - levels[None]).abs().min(1).values
    torch.testing.assert_close(constraint_value(w, torch.tensor(S, dtype=torch.float64), mode, 1.0), 2 * distance)


def test_constraint_gives_no_gradient_to_the_scale():
    scale = torch.tensor(S, requires_grad=True)
    w = torch.tensor([0.3, -0.9], requires_grad=True)
    constraint(w, scale, "bin", 3).sum().backward()
    assert scale.grad is None and w.grad is not None


def test_g_schedule_and_window():
    g, seen = 1, [1]
    while g < 30:
        g = next_g(g)
        seen.append(g)
    assert seen == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30]
    assert window(1) == 0 and window(20) == pytest.approx(0.95)


class TinyNet(nn.Module):
    """Two quantized layers between fp32 input and output layers, as the zoo's networks have."""

    def __init__(self, quant="bin", hidden=16):
        super().__init__()
        self.inp = nn.Linear(4, hidden)
        self.q1 = QuantLinear(hidden, hidden, quant=quant)
        self.q2 = QuantLinear(hidden, hidden, quant=quant)
        self.out = nn.Linear(hidden, 3)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        x = torch.relu(self.q1(x))
        x = torch.relu(self.q2(x))
        return self.out(x)


def _make_cbp(model, lr=0.05, lambda_lr=0.01, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return optimizer, CBP(model, optimizer, lambda_lr, **kwargs)


def test_g_lr_drop_once_at_20_and_multipliers_never_decrease():
    seed_everything(0)
    model = TinyNet()
    optimizer, cbp = _make_cbp(model)
    cbp.start()
    gs, lrs = [cbp.g], [optimizer.param_groups[0]["lr"]]
    previous = {k: v.detach().clone() for k, v in cbp.multipliers.items()}
    for _ in range(11):
        with torch.no_grad():  # move the weights so that C changes between updates
            for _, layer in quantized_modules(model):
                layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        assert cbp.end_epoch(lagsum=1e11)  # not below the previous (1e10 after an update): g advances
        gs.append(cbp.g)
        lrs.append(optimizer.param_groups[0]["lr"])
        for name, lam in cbp.multipliers.items():
            assert torch.all(lam >= previous[name]), "a multiplier decreased"
            previous[name] = lam.detach().clone()
    assert gs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30]
    assert lrs == pytest.approx([0.05] * 10 + [0.005, 0.005])


def test_g_advances_on_a_larger_lagrangian_or_after_period_max_epochs():
    model = TinyNet()
    _, cbp = _make_cbp(model, period_max=3)
    assert cbp.end_epoch(10.0) is False  # below 1e10: a decrease
    assert cbp.end_epoch(9.0) is False
    assert cbp.end_epoch(8.0) is True  # period reaches P_max = 3
    assert (cbp.g, cbp.period, cbp.lagsum_prev) == (2, 0, 1e10)
    assert cbp.end_epoch(7.0) is False
    assert cbp.end_epoch(7.5) is True  # larger than the previous epoch's
    assert cbp.g == 3


def test_no_lr_drop_when_the_pipeline_has_none():
    model = TinyNet()
    optimizer, cbp = _make_cbp(model, drop_lr_at_g20=False)
    for _ in range(11):
        cbp.end_epoch(1e11)
    assert cbp.g == 30 and optimizer.param_groups[0]["lr"] == 0.05


def test_initial_update_raises_only_out_of_range_multipliers():
    model = TinyNet()
    _, cbp = _make_cbp(model, lambda_lr=1e-3)
    cbp.start()
    for name, layer in quantized_modules(model):
        outside = layer.weight.detach().abs() > layer.scale
        lam = cbp.multipliers[name].detach()
        assert outside.any() and (~outside).any()
        torch.testing.assert_close(lam[outside], torch.full_like(lam[outside], 1e-3), rtol=1e-3, atol=0)
        assert torch.all(lam[~outside] == 0)


def _task(n=256):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _train(model, cbp, optimizer, epochs, x, y, rule, batch=32):
    for _ in range(epochs):
        lagsum = 0.0
        for i in range(0, len(x), batch):
            lagrangian, _, _ = train_step(model, model, x[i : i + batch], y[i : i + batch], optimizer, rule, cbp)
            lagsum += float(lagrangian)
        cbp.end_epoch(lagsum)


@pytest.mark.parametrize("quant", ["bin", "ter"])
def test_cbp_quantizes_a_small_network_and_exports_exact_levels(quant, tmp_path):
    seed_everything(0)
    x, y = _task(128)
    model = TinyNet(quant)
    fp32 = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):  # fp32 pre-training of the latent weights
        fp32.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        fp32.step()
    for _, layer in quantized_modules(model):
        layer.init_scale_()  # s = mean|W| of the pretrained weights (docs/method.md §B.1)
    start_cfs = cfs(model)
    optimizer, cbp = _make_cbp(model, lr=0.01, lambda_lr=0.2, period_max=2)
    cbp.start()
    _train(model, cbp, optimizer, 60, x, y, StepRule(loss="ce", grad_clip="value"), batch=64)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    stats = cbp.stats()
    assert stats["cfs"] < 0.1 * start_cfs, (start_cfs, stats)
    assert stats["g"] >= 20
    assert accuracy > 0.95 and loss < 0.2
    path = save_weights(model, tmp_path / "tiny.safetensors", model_name="tiny")
    state, _ = read_state(path)
    for name, layer in quantized_modules(model):
        values = torch.unique(state[f"{name}.weight"])
        levels = {"bin": [-1, 1], "ter": [-1, 0, 1]}[quant]
        expected = torch.tensor(levels, dtype=torch.float32) * state[f"{name}.scale"]
        assert set(values.tolist()) <= set(expected.tolist())
    again = TinyNet(quant)
    load_weights(again, path, expected_name="tiny")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_state_dict_round_trip_resumes_exactly():
    """Training split by a save/restore of every state gives the uninterrupted run's weights."""
    from qsnn_zoo.train.checkpoint import rng_state, set_rng_state

    x, y = _task(128)
    rule = StepRule(loss="ce", grad_clip="value")

    def fresh():
        seed_everything(5)
        model = TinyNet("ter")
        model.q1.register_forward_hook(lambda m, i, o: nn.functional.dropout(o, 0.2, training=True))
        optimizer, cbp = _make_cbp(model, period_max=2)
        return model, optimizer, cbp

    model, optimizer, cbp = fresh()
    cbp.start()
    _train(model, cbp, optimizer, 6, x, y, rule)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, cbp = fresh()
    cbp.start()
    _train(model, cbp, optimizer, 3, x, y, rule)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "cbp": cbp.state_dict(), "rng": rng_state()}
    torch.manual_seed(123)  # a new process starts from another random state
    model, optimizer, cbp = fresh()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    cbp.load_state_dict(saved["cbp"])
    set_rng_state(saved["rng"])
    _train(model, cbp, optimizer, 3, x, y, rule)
    for key, value in uninterrupted.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_cbp_refuses_a_model_without_quantized_layers():
    with pytest.raises(ValueError, match="no quantized layers"):
        CBP(nn.Linear(2, 2), None, 1e-3)
