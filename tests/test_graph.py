"""GraphedTrainStep's bookkeeping on the CPU: when it warms up, captures, replays, captures again and
falls back to eager steps, and that its steps train exactly as the eager steps do.

CUDA graphs need a GPU, so a stand-in capture is used here: like a real one it runs nothing when
capturing and hands back static output tensors that each replay overwrites. The real capture is
checked against the eager step on the GPU by scripts/benchmark.py (check_graph_step)."""
import torch
from torch import nn

from qsnn_zoo.cbp import CBP
from qsnn_zoo.layers.quant import QuantLinear, quantize
from qsnn_zoo.train.graph import GraphedTrainStep
from qsnn_zoo.train.loop import StepRule, train_step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.q = QuantLinear(16, 16, quant="ter")
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.q(torch.relu(self.inp(x)))))


def stand_in_capture(fn):
    """Captures nothing; each replay runs ``fn`` and writes its results into the static outputs."""
    outputs = (torch.zeros(()), torch.zeros(()), torch.zeros((), dtype=torch.long))

    def replay():
        for static, value in zip(outputs, fn()):
            static.copy_(value)

    return replay, outputs


def make(seed=0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cbp = CBP(model, optimizer, lambda_lr=0.01, period_max=2)
    cbp.start()
    return model, optimizer, cbp


def batches(n_full=8, batch=16):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n_full * batch + 5, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]  # last one partial


def run_epochs(model, cbp, step, epochs=3):
    outputs = []
    for _ in range(epochs):
        for images, labels in batches():
            lagrangian, loss, correct = step(images, labels)
            outputs.append((float(lagrangian), float(loss), int(correct)))
        assert cbp.end_epoch(float("inf"))  # a larger Lagrangian: g advances every epoch
    return outputs


def test_graphed_steps_train_as_eager_steps_and_capture_again_when_u_or_lr_change():
    rule = StepRule(loss="ce", grad_clip="value")
    model, optimizer, cbp = make()
    eager = run_epochs(model, cbp, lambda x, y: train_step(model, model, x, y, optimizer, rule, cbp))
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, cbp = make()
    step = GraphedTrainStep(model, model, optimizer, rule, cbp, warmup_steps=2, capture=stand_in_capture,
                            warm_up=lambda fn: fn())
    graphed = run_epochs(model, cbp, step)
    assert graphed == eager
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key
    # 3 epochs x 9 batches: 2 warm-up steps, 1 partial batch per epoch eager, one capture per epoch
    # (u changes after every epoch), the rest replayed.
    assert step.captures == 3
    assert step.eager_steps == 2 + 3
    assert step.replays == 27 - 5


def test_a_learning_rate_change_captures_again():
    rule = StepRule(loss="ce", grad_clip="value")
    model, optimizer, cbp = make()
    step = GraphedTrainStep(model, model, optimizer, rule, cbp, warmup_steps=0, capture=stand_in_capture,
                            warm_up=lambda fn: fn())
    images, labels = batches()[0]
    step(images, labels)
    step(images, labels)
    assert step.captures == 1 and step.replays == 2
    for group in optimizer.param_groups:
        group["lr"] *= 0.1
    step(images, labels)
    assert step.captures == 2 and step.replays == 3


def test_replay_reads_the_new_batch_not_the_captured_one():
    rule = StepRule(loss="ce", grad_clip="none")
    model, optimizer, cbp = make()
    step = GraphedTrainStep(model, model, optimizer, rule, cbp, warmup_steps=0, capture=stand_in_capture,
                            warm_up=lambda fn: fn())
    first, second = batches()[:2]
    step(*first)
    _, loss, _ = step(*second)
    twin_model, twin_optimizer, twin_cbp = make()
    train_step(twin_model, twin_model, *first, twin_optimizer, rule, twin_cbp)
    _, twin_loss, _ = train_step(twin_model, twin_model, *second, twin_optimizer, rule, twin_cbp)
    assert float(loss) == float(twin_loss)
    for key, value in twin_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_adam_groups_are_made_capturable():
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    GraphedTrainStep(model, model, optimizer, StepRule(loss="ce"), capture=stand_in_capture)
    assert all(group["capturable"] for group in optimizer.param_groups)


def test_inference_after_replays_sees_the_new_weights():
    """A replay updates the weights without autograd seeing it (no version bump of its own); the
    quantized layers' inference Q(W), keyed on versions, must still follow (a stale Q(W) made the
    test accuracy logged during a --cuda-graph run that of the first epoch's weights)."""
    model, optimizer, cbp = make()

    def behind_autograds_back(fn):
        def replay():  # what a CUDA graph does: new values in the same memory, versions untouched
            for p in model.parameters():
                p.data.mul_(-1.0)
        return replay, (torch.zeros(()), torch.zeros(()), torch.zeros((), dtype=torch.long))

    step = GraphedTrainStep(model, model, optimizer, StepRule(loss="ce"), cbp, warmup_steps=0,
                            capture=behind_autograds_back, warm_up=lambda fn: fn())
    images, labels = batches()[0]
    with torch.no_grad():
        before = model.q.quantized_weight().clone()
    step(images, labels)
    with torch.no_grad():
        assert torch.equal(model.q.quantized_weight(), quantize(model.q.weight, model.q.scale, "ter"))
        assert torch.equal(model.q.quantized_weight(), -before)
