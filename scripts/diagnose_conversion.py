"""Where along depth an SNN-Calibration VGG16 loses accuracy in ANN -> SNN conversion, and what potential
calibration recovers (docs/method.md §E.3).

    python scripts/diagnose_conversion.py vgg16_cifar10_fp32_calib --pretrained --data DATA --out DIR
    python scripts/diagnose_conversion.py vgg16_cifar10_fp32_calib --pretrained --data DATA --out DIR \\
        --variants light light+potential potential none --steps 32

For each calibration variant and simulation length T, one pass over the test images (default: every
lossless row of the offline bundle, or every row of a canonical CIFAR-10) and over augmented training
batches compares, per spiking layer, the ANN's post-ReLU activation a (the quantity the threshold search
sees) with the SNN's output averaged over T, s = firing rate x threshold V:

- ``mae``: mean |s - a|; ``ideal_mae``: mean |q(a) - a| with q(a) = clamp(floor(aT/V + 1/2), 0, T) V/T,
  what an IF neuron fed a constant current a outputs, so the clipping and rounding error this V and T
  cannot avoid; ``clip_mae`` = mean max(a - V, 0), its clipping part;
- ``drift``: (mean s - mean a) / mean a, signed; ``channel_error``: sum_c |mean s_c - mean a_c| / sum_c mean a_c;
- ``clipped``: fraction of activations above V; ``clip_mass``: the fraction of sum(a) above V;
- ``silent``: fraction of (image, neuron) pairs without a spike; ``ideal_silent``: fraction with q(a) = 0;
  ``dead``: fraction of neurons that fire on no image; ``dead_ann``: fraction that are 0 on every image;
- top-1 of the SNN and of the ANN, and how often their predictions agree.

Variants: ``light`` is the weights file as given (thresholds and light-calibration biases: the published
SNN); ``none`` sets the light-calibration biases to zero; ``relight`` redoes light calibration from zero on
the extra batch; ``light+light`` runs it a second time on top of the file's; ``light+potential`` adds SNN-Calibration's potential calibration (``qsnn_zoo.convert.potential_calibrate_``)
on top of light; ``potential`` uses it instead of light. The training batches come from the calib_convert
recipe's own loader (same seed and augmentation): the conversion used its first ``calib_batches + 1``; the next
one is the extra variants' calibration batch (``--calibration-augment`` changes only its augmentation, so that
calibrating on images augmented as in training can be told from calibrating on images like the test set's),
and the ones after it are measured. ``--check-conversion`` also
redoes the conversion from the file's ANN on the recipe's batches and compares thresholds and biases with the
file's: how closely this code on this machine reproduces the conversion that made the file.

Results go to OUT/diagnosis.json and OUT/diagnosis.md, rewritten atomically after each evaluation; a run
with the same settings into the same OUT skips what is already there, so a killed run resumes and more
variants or steps can be added later.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from qsnn_zoo import create_model, get_entry
from qsnn_zoo.cli import EXIT_USER_ERROR, USER_ERRORS
from qsnn_zoo.convert import light_calibrate_, potential_calibrate_, search_thresholds, set_time_steps_
from qsnn_zoo.data import load_cifar, to_tensor
from qsnn_zoo.hub import resolve_weights
from qsnn_zoo.layers.time import over_time
from qsnn_zoo.models.vgg import SpikingVGG
from qsnn_zoo.signals import exit_on_sigterm
from qsnn_zoo.train.config import recipe_for
from qsnn_zoo.train.data import AUGMENTATIONS, Augment, DeviceLoader
from qsnn_zoo.train.distributed import pick_device
from qsnn_zoo.train.pipelines import draw_batches
from qsnn_zoo.weights import atomic_write, describe_file

from evaluate import add_weights_and_data

VARIANTS = {
    "light": "the weights file as given: thresholds and light-calibration biases",
    "none": "thresholds only: light-calibration biases set to zero",
    "relight": "light calibration redone from zero biases on one more augmented batch",
    "light+light": "a second light-calibration pass on one more augmented batch, on top of the first",
    "light+potential": "potential calibration on one more augmented batch, on top of the light calibration",
    "potential": "potential calibration on one more augmented batch, light-calibration biases set to zero",
}
SPLITS = ("test", "train")


class UsageError(Exception):
    """Arguments this script cannot run with; the message says what to do instead."""


# ---------------------------------------------------------------- per-layer statistics

class LayerStats:
    """Running sums over batches of one spiking layer's ANN activation a and SNN output s."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.max_ann = 0.0
        self.ann_channel: Optional[torch.Tensor] = None
        self.snn_channel: Optional[torch.Tensor] = None
        self.fired: Optional[torch.Tensor] = None
        self.ann_active: Optional[torch.Tensor] = None

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def add(self, a: torch.Tensor, s: torch.Tensor, threshold: float, T: int) -> None:
        a, s = a.double(), s.double()
        ideal = torch.clamp(torch.floor(a * T / threshold + 0.5), 0, T) * (threshold / T)
        over = torch.clamp(a - threshold, min=0)
        self._add("elements", torch.tensor(a.numel()))
        self._add("ann", a.sum())
        self._add("snn", s.sum())
        self._add("abs_error", (s - a).abs().sum())
        self._add("ideal_abs_error", (ideal - a).abs().sum())
        self._add("clip_abs_error", over.sum())
        self._add("clipped", (a > threshold).sum())
        self._add("silent", (s == 0).sum())
        self._add("ideal_silent", (ideal == 0).sum())
        self.max_ann = max(self.max_ann, float(a.max()))
        channel_a, channel_s = a.sum(dim=(0, 2, 3)), s.sum(dim=(0, 2, 3))
        fired, active = (s > 0).any(dim=0), (a > 0).any(dim=0)
        if self.ann_channel is None:
            self.ann_channel, self.snn_channel, self.fired, self.ann_active = channel_a, channel_s, fired, active
        else:
            self.ann_channel += channel_a
            self.snn_channel += channel_s
            self.fired |= fired
            self.ann_active |= active

    def summary(self, threshold: float) -> Dict[str, float]:
        n, ann = self.sums["elements"], self.sums["ann"]
        return {
            "threshold": threshold,
            "max_ann_over_threshold": self.max_ann / threshold,
            "mean_ann": ann / n,
            "mean_snn": self.sums["snn"] / n,
            "mae": self.sums["abs_error"] / n,
            "ideal_mae": self.sums["ideal_abs_error"] / n,
            "clip_mae": self.sums["clip_abs_error"] / n,
            "drift": (self.sums["snn"] - ann) / ann,
            "channel_error": float((self.snn_channel - self.ann_channel).abs().sum() / self.ann_channel.sum()),
            "clipped": self.sums["clipped"] / n,
            "clip_mass": self.sums["clip_abs_error"] / ann,
            "silent": self.sums["silent"] / n,
            "ideal_silent": self.sums["ideal_silent"] / n,
            "dead": float((~self.fired).double().mean()),
            "dead_ann": float((~self.ann_active).double().mean()),
        }


@torch.no_grad()
def compare_batch(model: SpikingVGG, x: torch.Tensor, stats: List[LayerStats]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adds one batch to ``stats`` and returns ``(ANN logits, SNN scores)``: the ANN and SNN forms side by
    side, layer by layer, the SNN computed as ``SpikingVGG.forward_steps`` computes it."""
    fold = model.fold_time
    ann, spikes = x, x
    for index, layer in enumerate(model.features):
        ann = layer.ann(ann)
        spikes = layer.spiking(x, fold, T=model.T) if index == 0 else layer.spiking(spikes, fold)
        stats[index].add(ann, spikes.mean(dim=0), float(layer.neuron.threshold), model.T)
    return model.classifier(ann.flatten(1)), model.decode(over_time(model.classifier, spikes.flatten(2), fold))


def evaluate(model: SpikingVGG, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, Any]:
    model.eval()
    stats = [LayerStats() for _ in model.features]
    ann_correct = snn_correct = agree = rows = 0
    for x, y in batches:
        ann_logits, snn_scores = compare_batch(model, x, stats)
        ann_pred, snn_pred = ann_logits.argmax(1), snn_scores.argmax(1)
        ann_correct += int((ann_pred == y).sum())
        snn_correct += int((snn_pred == y).sum())
        agree += int((ann_pred == snn_pred).sum())
        rows += len(y)
    return {
        "rows": rows,
        "snn_top1": 100.0 * snn_correct / rows,
        "ann_top1": 100.0 * ann_correct / rows,
        "agreement": 100.0 * agree / rows,
        "layers": {f"features.{i}": s.summary(float(layer.neuron.threshold))
                   for i, (s, layer) in enumerate(zip(stats, model.features))},
    }


# ---------------------------------------------------------------- models and data

def variant_model(base: SpikingVGG, variant: str, T: int, extra_batch: torch.Tensor) -> SpikingVGG:
    """A copy of ``base`` simulated for ``T`` steps and calibrated as ``variant`` says; ``extra_batch`` is
    the augmented batch that the variants beyond the published light calibration calibrate on."""
    model = set_time_steps_(copy.deepcopy(base), T)
    if variant in ("none", "relight", "potential"):
        for layer in model.features:
            layer.calib_bias.zero_()
    if variant in ("relight", "light+light"):
        light_calibrate_(model, extra_batch)
    if variant.endswith("potential"):
        potential_calibrate_(model, extra_batch)
    return model.set_mode("snn").eval()


def evaluation_batches(data, entry, images: int, batch_size: int, device: torch.device):
    """The first ``images`` lossless rows (every row of data without the mark), as normalised batches."""
    rows = np.flatnonzero(data.lossless) if data.lossless is not None else np.arange(len(data))
    rows = rows[:images] if images else rows
    return [(to_tensor(data.images[chunk], entry.mean, entry.std, device),
             torch.as_tensor(data.labels[chunk], dtype=torch.int64, device=device))
            for chunk in np.array_split(rows, -(-len(rows) // batch_size))]


def recipe_batches(name: str, data_dir: str, count: int, device: torch.device, augment: Sequence[str] = ()):
    """The first ``count`` batches of the calib_convert recipe's loader: training images in the order and
    with the augmentations the conversion drew them (qsnn_zoo.train.pipelines.calib_convert), or with
    ``augment`` instead of the recipe's augmentations (the same images, the same seed)."""
    entry, recipe = get_entry(name), recipe_for(name, "calib_convert")
    train = load_cifar(data_dir, "train", entry.dataset)
    names = tuple(augment) or recipe.augment
    loader = DeviceLoader(train.images, train.labels, recipe.batch_size, entry.mean, entry.std,
                          augment=Augment(names) if names != ("none",) else None, shuffle=True, drop_last=True,
                          seed=recipe.seed + recipe.trial, device=device)
    return draw_batches(loader, count)


def conversion_check(base: SpikingVGG, batches, recipe) -> Dict[str, Any]:
    """Redoes the conversion from the file's ANN (thresholds, then light calibration) on ``batches``."""
    model = copy.deepcopy(base)
    for layer in model.features:
        layer.calib_bias.zero_()
    redone = search_thresholds(model, batches[: recipe.calib_batches], base.T, calib=recipe.calib)
    light_calibrate_(model, batches[recipe.calib_batches])
    stored = [float(layer.neuron.threshold) for layer in base.features]
    bias_gap = [float((a.calib_bias - b.calib_bias).abs().max() / b.calib_bias.abs().max().clamp(min=1e-12))
                for a, b in zip(model.features, base.features)]
    return {
        "thresholds_stored": stored,
        "thresholds_redone": redone,
        "max_threshold_relative_difference": max(abs(r - s) / s for r, s in zip(redone, stored)),
        "calib_bias_max_difference_over_max_stored": bias_gap,
    }


# ---------------------------------------------------------------- output

def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# ANN -> SNN conversion diagnosis: {s['model']}",
        "",
        f"Weights `{s['weights']}` (sha256 {s['weights_sha256'][:12]}...), test: {s['test_rows']} rows "
        f"({s['test_rows_kind']}), train: {s['train_batches']} augmented batches of {s['batch_size_train']} "
        f"(calib_convert loader, batches {s['train_batch_indices']}), extra calibrations on batch "
        f"{s['extra_calibration_batch_index']} augmented with {', '.join(s['extra_calibration_augment'])}. Made by scripts/diagnose_conversion.py; definitions in its docstring.",
        "",
        "| variant | T | SNN top-1 test (%) | ANN top-1 test (%) | SNN = ANN (%) | SNN top-1 train (%) | ANN top-1 train (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in report["results"].items():
        variant, T = key.split("@")
        test, train = r["test"], r.get("train")
        lines.append(f"| {variant} | {T} | {test['snn_top1']:.2f} | {test['ann_top1']:.2f} | {test['agreement']:.2f} | "
                     + (f"{train['snn_top1']:.2f} | {train['ann_top1']:.2f} |" if train else "- | - |"))
    check = report.get("conversion_check")
    if check:
        lines += ["", f"Conversion redone from the file's ANN on the recipe's batches: thresholds within "
                  f"{100 * check['max_threshold_relative_difference']:.2f} % of the file's; light-calibration "
                  f"biases differ by at most {100 * max(check['calib_bias_max_difference_over_max_stored']):.1f} % "
                  "of the layer's largest stored bias."]
    for key, r in report["results"].items():
        lines += [
            "", f"## {key}: per layer (test rows; the last two columns on the training batches)", "",
            "| layer | V | max a / V | mean a | MAE / mean a (%) | ideal MAE / mean a (%) | clipped (%) | "
            "clip mass (%) | drift (%) | channel error (%) | silent (%) | ideal silent (%) | dead (%) | dead ANN (%) "
            "| train clipped (%) | train drift (%) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        train = r.get("train", {}).get("layers", {})
        for name, m in r["test"]["layers"].items():
            t = train.get(name)
            lines.append(
                f"| {name} | {m['threshold']:.3g} | {m['max_ann_over_threshold']:.2f} | {m['mean_ann']:.3g} | "
                f"{_pct(m['mae'] / m['mean_ann'])} | {_pct(m['ideal_mae'] / m['mean_ann'])} | {_pct(m['clipped'])} | "
                f"{_pct(m['clip_mass'])} | {_pct(m['drift'])} | {_pct(m['channel_error'])} | {_pct(m['silent'])} | "
                f"{_pct(m['ideal_silent'])} | {_pct(m['dead'])} | {_pct(m['dead_ann'])} | "
                + (f"{_pct(t['clipped'])} | {_pct(t['drift'])} |" if t else "- | - |"))
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: Dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    atomic_write(out / "diagnosis.json", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / "diagnosis.md", lambda tmp: Path(tmp).write_text(markdown(report)))


def load_report(out: Path, settings: Dict[str, Any]) -> Dict[str, Any]:
    path = out / "diagnosis.json"
    if not path.is_file():
        return {"settings": settings, "results": {}}
    try:
        report = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{path} is not readable JSON ({err}); remove it or choose another --out") from None
    if report.get("settings") != settings:
        raise UsageError(f"{path} holds results made with other settings (model, weights, data or batches); "
                         "choose another --out to keep both")
    return report


# ---------------------------------------------------------------- main

def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="an fp32 SNN-Calibration entry, e.g. vgg16_cifar10_fp32_calib")
    add_weights_and_data(parser)
    parser.add_argument("--out", required=True, help="folder for diagnosis.json and diagnosis.md")
    parser.add_argument("--variants", nargs="+", default=["light"], choices=list(VARIANTS),
                        help="calibrations to measure (default: light)")
    parser.add_argument("--steps", nargs="+", type=int, default=[32], help="simulation lengths T (default: 32)")
    parser.add_argument("--images", type=int, default=0,
                        help="only the first N lossless test rows (default: all of them)")
    parser.add_argument("--train-batches", type=int, default=2,
                        help="augmented training batches to measure (default: %(default)s; 0: none)")
    parser.add_argument("--calibration-augment", nargs="+", choices=(*AUGMENTATIONS, "none"),
                        help="augmentations of the extra variants' calibration batch (default: the recipe's)")
    parser.add_argument("--check-conversion", action="store_true",
                        help="redo the conversion on the recipe's batches and compare with the file (minutes)")
    parser.add_argument("--batch-size", type=int, default=64, help="test images per pass (default: %(default)s)")
    parser.add_argument("--device", default="", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--backend", choices=("reference", "fast"), help="default: fast on cuda, reference on cpu")
    args = parser.parse_args(argv)
    if any(T < 1 for T in args.steps):
        parser.error(f"--steps must be positive integers, got {args.steps}")
    for flag in ("images", "train_batches"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.calibration_augment and "none" in args.calibration_augment and len(args.calibration_augment) > 1:
        parser.error("--calibration-augment none stands alone: it means no augmentation")
    if args.calibration_augment and args.calibration_augment != ["none"]:
        try:
            Augment(args.calibration_augment)
        except ValueError as err:
            parser.error(f"--calibration-augment: {err}")
    return args


def run(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    if entry.method != "calib" or entry.quant.mode is not None:
        raise UsageError(f"{args.name} is not an fp32 SNN-Calibration entry; pass one such as vgg16_cifar10_fp32_calib, "
                         "whose weights keep the ANN beside the SNN")
    recipe = recipe_for(args.name, "calib_convert")
    device = pick_device(args.device)
    path = resolve_weights(entry, weights=args.weights)
    base = create_model(args.name, weights=path).to(device).eval()
    base.set_backend(args.backend or ("fast" if device.type == "cuda" else "reference"))

    test = load_cifar(args.data, "test", entry.dataset)
    tests = evaluation_batches(test, entry, args.images, args.batch_size, device)
    used = recipe.calib_batches + 1  # the threshold batches and the light-calibration batch
    drawn = recipe_batches(args.name, args.data, used + 1 + args.train_batches, device)
    trains = drawn[used + 1:]
    extra_augment = tuple(args.calibration_augment or recipe.augment)
    if extra_augment != recipe.augment:
        drawn[used] = recipe_batches(args.name, args.data, used + 1, device, extra_augment)[used]
    extra_batch = drawn[used][0]
    settings = {
        "model": args.name,
        "weights": str(path),
        "weights_sha256": describe_file(path)["sha256"],
        "data": test.source,
        "test_rows": sum(len(y) for _, y in tests),
        "test_rows_kind": "lossless rows" if test.lossless is not None else "canonical rows",
        "batch_size_train": recipe.batch_size,
        "train_batches": len(trains),
        "train_batch_indices": list(range(used + 1, used + 1 + len(trains))),
        "extra_calibration_batch_index": used,
        "extra_calibration_augment": list(extra_augment),
        "recipe_seed": recipe.seed + recipe.trial,
        "backend": base.backend,
    }
    out = Path(args.out)
    report = load_report(out, settings)
    environment = {"torch": torch.__version__, "device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads()}
    if args.check_conversion and "conversion_check" not in report:
        started = time.monotonic()
        report["conversion_check"] = conversion_check(base, drawn, recipe)
        report["conversion_check"].update(seconds=time.monotonic() - started, environment=environment)
        write_report(out, report)
        print(f"conversion check: thresholds within {100 * report['conversion_check']['max_threshold_relative_difference']:.2f} %", flush=True)
    for variant, T in itertools.product(args.variants, args.steps):
        key = f"{variant}@{T}"
        if key in report["results"]:
            continue
        started = time.monotonic()
        model = variant_model(base, variant, T, extra_batch)
        result = {"description": VARIANTS[variant], "test": evaluate(model, tests)}
        if trains:
            result["train"] = evaluate(model, trains)
        result.update(seconds=time.monotonic() - started, environment=environment)
        report["results"][key] = result
        write_report(out, report)
        print(f"{key}: SNN {result['test']['snn_top1']:.2f} %, ANN {result['test']['ann_top1']:.2f} % on "
              f"{result['test']['rows']} test rows ({result['seconds']:.0f} s)", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    exit_on_sigterm()
    args = parse_args(argv)
    try:
        return run(args)
    except (UsageError, *USER_ERRORS) as err:
        print(f"diagnose_conversion: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
