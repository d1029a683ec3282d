"""Why do the VGG16 CBP children (docs/method.md §E.4) not train? Small CPU measurements of the CBP start.

Usage (from the repository root, DATA the CIFAR-10 npz bundle; one process at a time, one thread):

    python runs/unpublished/vgg16_cbp_diagnosis/diagnose.py start  --data DATA --out DIR/start.json   [--batch 32]
    python runs/unpublished/vgg16_cbp_diagnosis/diagnose.py train  --data DATA --out DIR/run.json [--lr 1e-2] [--T 8]
           [--steps 40] [--batch 32] [--subset 256] [--no-dropout] [--loss-mean-over-t] [--optimizer adamw]
           [--grad-clip value|norm|none] [--quant bin|ter] [--augment]
    python runs/unpublished/vgg16_cbp_diagnosis/diagnose.py alexnet --data DATA --out DIR/alexnet.json [--steps 10]

Every model is built with the code path of ``scripts/quantize_cbp.py``
(``pipelines.load_parent`` + ``pipelines.quantized_child``), the recipe is
``config.recipe_for(name, stage)`` with the overrides given, and every step is
``qsnn_zoo.train.loop.train_step`` with CBP (``cbp.start()`` done first), exactly as ``fit`` runs it.
Only two things are observed from outside: the gradients just before clipping (by wrapping
``loop._clip``) and the latent weights before/after each step. ``--no-dropout`` sets the dropout
modules' p to 0; ``--loss-mean-over-t`` replaces the model's ``decode`` (sum over T) by the mean
over T; neither has a flag in ``quantize_cbp.py`` (they are what-ifs).

Data: the first ``--subset`` training images of the CIFAR-10 npz bundle, fixed, reshuffled each
pass (no augmentation unless ``--augment``: the question is whether the loss can fall at all).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from qsnn_zoo.convert import to_unit_threshold_snn
from qsnn_zoo.data import load_cifar
from qsnn_zoo.layers.quant import quantized_modules
from qsnn_zoo.train import loop
from qsnn_zoo.train.config import RunOptions, apply_overrides, recipe_for
from qsnn_zoo.train.data import Augment, DeviceLoader
from qsnn_zoo.train.distributed import DistInfo
from qsnn_zoo.train.pipelines import Run, load_parent, make_optimizer, quantized_child
from qsnn_zoo.cbp import CBP

ROOT = Path(__file__).resolve().parents[3]

VGG_PARENT = str(ROOT / "checkpoints/vgg16_cifar10_fp32_calib.safetensors")
ALEX_PARENT = str(ROOT / "checkpoints/alexnet_cifar10_fp32_tsslbp.safetensors")


# ---------------------------------------------------------------- building, as quantize_cbp.py does

def make_run(name: str, stage: str, parent: str, data: str, **overrides) -> Run:
    recipe = apply_overrides(recipe_for(name, stage), overrides)
    options = RunOptions(data=data, parent_weights=parent, device="cpu", backend="fast", progress=False)
    return Run(name, recipe, options, torch.device("cpu"), DistInfo())


def build_child(run: Run):
    """(parent, child) exactly as pipelines.cbp_stage builds them (seeded as there)."""
    from qsnn_zoo.train.checkpoint import seed_everything

    seed_everything(run.seed)
    parent = load_parent(run)
    child = quantized_child(run, parent)
    return parent, child


def step_rule(run: Run) -> loop.StepRule:
    r = run.recipe
    return loop.StepRule(loss=r.loss, grad_clip=r.grad_clip, grad_clip_max=r.grad_clip_max, weight_clamp=r.weight_clamp)


def fixed_loader(run: Run, subset: int, batch: int, augment: bool) -> DeviceLoader:
    train = load_cifar(run.options.data, "train", run.entry.dataset).subset(slice(0, subset))
    return DeviceLoader(train.images, train.labels, batch, run.entry.mean, run.entry.std,
                        augment=Augment(run.recipe.augment) if augment else None, shuffle=True, seed=run.seed)


def batches(loader: DeviceLoader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---------------------------------------------------------------- observing one real train_step

class GradTap:
    """Wraps loop._clip to keep every trained parameter's gradient as it is just before clipping."""

    def __init__(self) -> None:
        self.grads = {}
        self._orig = loop._clip

    def __enter__(self):
        def tapped(model, rule):
            self.grads = {id(p): p.grad.detach().clone() for p in model.parameters() if p.grad is not None}
            self._orig(model, rule)
        loop._clip = tapped
        return self

    def __exit__(self, *exc):
        loop._clip = self._orig


def quant_layers(model):
    return quantized_modules(model)


def observed_step(run, model, forward, optimizer, rule, cbp, images, labels, tap, *, record_logits=False):
    """One loop.train_step with per-layer statistics of gradients, updates and code flips."""
    layers = quant_layers(model)
    before = {n: m.weight.detach().clone() for n, m in layers}
    codes_before = {n: m.codes().clone() for n, m in layers}
    logits_box = {}
    if record_logits:
        def keep(mod, inp, out):  # returns None, so the output itself is not replaced
            logits_box["steps"] = out.detach()
        handle = forward.register_forward_hook(keep)
    lag, loss, correct = loop.train_step(forward, model, images, labels, optimizer, rule, cbp)
    if record_logits:
        handle.remove()
    lr = optimizer.param_groups[0]["lr"]
    per_layer = {}
    total_flips = total_n = 0
    for n, m in layers:
        g = tap.grads[id(m.weight)]
        s = float(m.scale)
        dw = (m.weight.detach() - before[n]).abs()
        flips = int((m.codes() != codes_before[n]).sum())
        total_flips += flips
        total_n += m.weight.numel()
        gc = g.clamp(-rule.grad_clip_max, rule.grad_clip_max) if rule.grad_clip == "value" else g
        per_layer[n] = {
            "s": s,
            "grad_mean_abs": float(g.abs().mean()),
            "grad_median_abs": float(g.abs().median()),
            "grad_frac_clipped": float((g.abs() > rule.grad_clip_max).float().mean()) if rule.grad_clip == "value" else None,
            "lr_x_grad_over_s": lr * float(gc.abs().mean()) / s,
            "update_mean_abs_over_s": float(dw.mean()) / s,
            "flip_fraction": flips / m.weight.numel(),
        }
    others = {}
    for name, p in model.named_parameters():
        if id(p) in tap.grads and not any(name == f"{n}.weight" for n, _ in layers):
            others[name] = float(tap.grads[id(p)].abs().mean())
    out = {
        "loss": float(loss), "lagrangian": float(lag), "correct": int(correct), "batch": len(labels),
        "flip_fraction_all": total_flips / total_n, "layers": per_layer, "other_grad_mean_abs": others,
    }
    if record_logits:
        out["steps_output"] = logits_box["steps"]
    return out


def logit_stats(model, steps: torch.Tensor, labels: torch.Tensor) -> dict:
    """Scale of the decoded logits, CE and its gradient w.r.t. the logits and w.r.t. each step's output."""
    scores = model.decode(steps).float().detach().requires_grad_(True)
    ce = F.cross_entropy(scores, labels)
    (g,) = torch.autograd.grad(ce, scores)
    p = scores.softmax(1)
    per_step = steps.float()
    return {
        "T": steps.shape[0],
        "scores_mean_abs": float(scores.abs().mean()),
        "scores_std_over_classes": float(scores.std(1).mean()),
        "scores_max_minus_min": float((scores.max(1).values - scores.min(1).values).mean()),
        "per_step_output_mean_abs": float(per_step.abs().mean()),
        "ce": float(ce),
        "top1": float((scores.argmax(1) == labels).float().mean()),
        "max_softmax_mean": float(p.max(1).values.mean()),
        "dCE_dscores_mean_abs": float(g.abs().mean()),
        "note": "dCE/d(per-step output) equals dCE/dscores at every step for a sum over T (1/T of it for a mean)",
    }


# ---------------------------------------------------------------- experiments

@torch.no_grad()
def firing_rates(model, images) -> dict:
    """Mean firing rate of every spiking layer (eval mode, no dropout) on ``images``."""
    was = model.training
    model.eval()
    neurons = model.spiking_neurons()
    for _, n in neurons:
        n.monitor = True
    model(images)
    rates = {name: round(float(n.last_spikes.float().mean()), 5) for name, n in neurons}
    for _, n in neurons:
        n.monitor, n.last_spikes = False, None
    model.train(was)
    return rates


def cmd_start(args) -> dict:
    """Measurements 1 and 2: scales, first-step gradients, update/s, logit scale, vs the fp32 SNN."""
    result = {}
    for quant in ("bin", "ter"):
        name = f"vgg16_cifar10_{quant}_calib"
        run = make_run(name, "calib_cbp", VGG_PARENT, args.data)
        parent, child = build_child(run)
        loader = fixed_loader(run, args.subset, args.batch, augment=True)  # the recipe's augmentation
        images, labels = next(iter(loader))
        optimizer = make_optimizer(child, run.recipe)
        cbp = CBP(child, optimizer, run.recipe.lambda_lr, run.recipe.lambda_optimizer, run.recipe.period_max,
                  run.recipe.drop_lr_at_g20)
        cbp.start()
        forward = loop.TrainForward(child)
        forward.train()
        with GradTap() as tap:
            obs = observed_step(run, child, forward, optimizer, step_rule(run), cbp, images, labels, tap, record_logits=True)
        steps = obs.pop("steps_output")
        obs["logits_train_mode"] = logit_stats(child, steps, labels)
        obs["lambda_after_start"] = {"mean": cbp.stats()["lambda_mean"], "max": cbp.stats()["lambda_max"]}
        obs["recipe"] = run.recipe.to_dict()
        result[name] = obs
        print(name, json.dumps({k: v for k, v in obs.items() if k != "layers"}, default=str)[:800], flush=True)
        if quant == "bin":
            # The same batch through the fp32 references (no step): the parent as published, and the
            # unit-threshold fp32 SNN (classifier not rescaled), in train mode (dropout) and eval mode.
            ref = {}
            unit = to_unit_threshold_snn(parent, quant=None).set_backend("fast")
            quant_child_eval = child
            for label, model in (("parent_as_published", parent.set_backend("fast")), ("unit_threshold_fp32", unit),
                                 ("binary_child_after_1_step", quant_child_eval)):
                for mode in ("train", "eval"):
                    model.train(mode == "train")
                    torch.manual_seed(0)
                    with torch.no_grad():
                        st = model.forward_steps(images)
                    ref[f"{label}/{mode}"] = logit_stats(model, st, labels)
            result["references_same_batch"] = ref
            # Gradient of the fp32 unit-threshold SNN at its own start (same loss, same batch), for scale.
            unit.train()
            unit.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            st = unit.forward_steps(images)
            F.cross_entropy(unit.decode(st), labels).backward()
            result["unit_threshold_fp32_grads"] = {
                n: {"mean_abs_w": float(p.detach().abs().mean()), "grad_mean_abs": float(p.grad.abs().mean()),
                    "grad_frac_gt1": float((p.grad.abs() > 1).float().mean())}
                for n, p in unit.named_parameters() if p.grad is not None and p.dim() == 4 and p.shape[-1] == 3
            }
            print("references", json.dumps(ref)[:1500], flush=True)
    return result


def cmd_train(args) -> dict:
    """Measurement 3: the loss per step on a fixed subset, plus flips and update/s per step."""
    name = f"vgg16_cifar10_{args.quant}_calib"
    overrides = {"lr": args.lr, "T": args.T}
    if args.optimizer:
        overrides["optimizer"] = args.optimizer
    if args.grad_clip:
        overrides["grad_clip"] = args.grad_clip
    if args.grad_clip_max is not None:
        overrides["grad_clip_max"] = args.grad_clip_max
    if args.momentum is not None:
        overrides["momentum"] = args.momentum
    run = make_run(name, "calib_cbp", VGG_PARENT, args.data, **overrides)
    _, model = build_child(run)
    return train_loop(args, run, model)


def train_loop(args, run, model) -> dict:
    if args.no_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    if args.loss_mean_over_t:
        model.decode = lambda steps: steps.mean(0)
    optimizer = make_optimizer(model, run.recipe)
    cbp = CBP(model, optimizer, run.recipe.lambda_lr, run.recipe.lambda_optimizer, run.recipe.period_max,
              run.recipe.drop_lr_at_g20)
    cbp.start()
    forward = loop.TrainForward(model)
    forward.train()
    rule = step_rule(run)
    loader = fixed_loader(run, args.subset, args.batch, augment=args.augment)
    history = []
    probe = next(iter(loader))[0]
    rates_start = firing_rates(model, probe)
    started = time.time()
    with GradTap() as tap:
        for step, (images, labels) in zip(range(args.steps), batches(loader)):
            obs = observed_step(run, model, forward, optimizer, rule, cbp, images, labels, tap)
            layers = obs.pop("layers")
            obs.pop("other_grad_mean_abs")
            obs["step"] = step
            obs["median_layer_update_over_s"] = sorted(v["update_mean_abs_over_s"] for v in layers.values())[len(layers) // 2]
            obs["median_layer_grad_frac_clipped"] = (
                sorted(v["grad_frac_clipped"] for v in layers.values())[len(layers) // 2]
                if rule.grad_clip == "value" else None)
            obs["flip_fraction_per_layer"] = {n: round(v["flip_fraction"], 5) for n, v in layers.items()}
            obs["update_over_s_per_layer"] = {n: round(v["update_mean_abs_over_s"], 5) for n, v in layers.items()}
            if step == 0:
                obs["layers_step0"] = layers
            history.append(obs)
            print(f"step {step:3d} loss {obs['loss']:8.4f} acc {obs['correct']}/{obs['batch']} "
                  f"flips {obs['flip_fraction_all']:.4f} upd/s {obs['median_layer_update_over_s']:.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)
    # Eval-mode loss and accuracy on the whole subset at the end (and the same at the start is step 0's).
    model.eval()
    sub = load_cifar(run.options.data, "train", run.entry.dataset).subset(slice(0, args.subset))
    eval_loader = DeviceLoader(sub.images, sub.labels, args.batch, run.entry.mean, run.entry.std, shuffle=False)
    tot_loss = tot_correct = n = 0
    with torch.no_grad():
        for images, labels in eval_loader:
            scores = model(images)
            tot_loss += float(F.cross_entropy(scores, labels, reduction="sum"))
            tot_correct += int((scores.argmax(1) == labels).sum())
            n += len(labels)
    return {
        "args": vars(args), "recipe": run.recipe.to_dict(), "history": history,
        "final_eval_subset": {"ce": tot_loss / n, "top1": tot_correct / n},
        "firing_rates_start": rates_start,
        "firing_rates_end": firing_rates(model, probe),
        "seconds": time.time() - started,
    }


def cmd_alexnet(args) -> dict:
    """The AlexNet TSSL-BP child (which trains): s, first-step gradients, update/s, flips per step."""
    name = "alexnet_cifar10_bin_tsslbp"
    run = make_run(name, "tssl_cbp", ALEX_PARENT, args.data)
    _, model = build_child(run)
    args.no_dropout = False
    args.loss_mean_over_t = False
    out = train_loop(args, run, model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "train", "alexnet"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", required=True, help="the CIFAR-10 npz bundle's directory")
    parser.add_argument("--quant", default="bin", choices=("bin", "ter"))
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--subset", type=int, default=256)
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--loss-mean-over-t", action="store_true")
    parser.add_argument("--augment", action="store_true", help="the recipe's augmentation (default: none)")
    parser.add_argument("--optimizer", default="")
    parser.add_argument("--grad-clip", default="")
    parser.add_argument("--grad-clip-max", type=float, default=None)
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"start": cmd_start, "train": cmd_train, "alexnet": cmd_alexnet}[args.command](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
