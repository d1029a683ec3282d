"""The stages that make each registry entry (docs/method.md §C, §D, §E), as functions of a recipe and run options.

stbp_fp32, tssl_fp32, calib_ann   train an fp32 network from scratch;
calib_convert                     turns the trained VGG16 ANN into the fp32 SNN (threshold search, light calibration);
stbp_cbp, tssl_cbp, calib_cbp     quantize an fp32 parent with CBP.

Every trainable stage runs the same :func:`fit` loop and writes, under ``OUT/NAME/<stage>/``,
``checkpoint.pt`` (atomically, in the background at most every ``--checkpoint-seconds``, and when the
stage stops; ``--resume``), ``metrics.jsonl``, ``curves.png`` and
``summary.json``; the entry's weights go to ``OUT/NAME/NAME.safetensors``.

Model selection (deliberate difference from docs/method.md §F.1): the original pipelines keep the epoch with
the best *test* accuracy. Here the default is a fixed schedule whose last epoch is kept, and
``--val-size N`` holds out the last N training images and keeps the best *validation* epoch;
the test set is only ever measured, never used to choose.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._builder import create_model
from .._registry import ModelEntry, get_entry
from ..cbp import CBP
from ..data import ImageSet, load_cifar
from ..hub import WeightsNotFoundError, resolve_weights, sha256_of
from ..layers import fused
from ..layers.quant import quantized_modules, weight_codes
from ..weights import atomic_write, save_weights
from . import distributed
from .checkpoint import (
    CHECKPOINT_NAME, CheckpointWriter, restore_checkpoint, seed_everything, use_deterministic_algorithms,
)
from .config import Recipe, RunOptions
from .data import Augment, DeviceLoader, holdout_split
from .distributed import DistInfo
from .graph import GraphedTrainStep
from .losses import is_summed
from .loop import StepRule, TrainForward, check_finite, evaluate, train_epoch
from .metrics_log import CURVES_NAME, METRICS_NAME, MetricsLog, plot_curves

SUMMARY_NAME = "summary.json"
EVAL_BATCH = 256


@dataclass
class Run:
    """One stage of one entry: what it trains, where it writes, on which device and ranks."""

    name: str
    recipe: Recipe
    options: RunOptions
    device: torch.device
    info: DistInfo
    deadline: Optional[float] = None  # time.monotonic() by which the stage stops at an epoch boundary
    stopped_early: bool = False  # set by fit when --stop-after-epoch or --time-budget ended it
    started: float = field(default_factory=time.monotonic)

    @property
    def entry(self) -> ModelEntry:
        return get_entry(self.name)

    @property
    def T(self) -> int:
        return self.recipe.T or self.entry.T

    @property
    def seed(self) -> int:
        # SNN-Calibration trial i runs with seed 1000 + i (docs/method.md §E.5); recipes without trials have trial 0.
        return self.recipe.seed + self.recipe.trial

    @property
    def entry_dir(self) -> Path:
        return Path(self.options.out) / self.name

    @property
    def stage_dir(self) -> Path:
        return self.entry_dir / self.recipe.stage

    @property
    def weights_path(self) -> Path:
        return weights_path(self.options.out, self.name)

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(message, flush=True)


def weights_path(out: str, name: str) -> Path:
    """Where a run writes entry ``name``'s weights: ``OUT/NAME/NAME.safetensors``."""
    return Path(out) / name / f"{name}.safetensors"


def ann_weights_path(out: str, name: str) -> Path:
    """The trained VGG16 ANN of an SNN-Calibration fp32 entry, before conversion."""
    return Path(out) / name / "calib_ann" / f"{name}.ann.safetensors"


# ---------------------------------------------------------------- data

@dataclass
class Data:
    train: ImageSet
    val: Optional[ImageSet]
    test: ImageSet


def load_data(run: Run) -> Data:
    opts, dataset = run.options, run.entry.dataset
    train = load_cifar(opts.data, "train", dataset)
    if opts.limit_train:
        train = train.subset(slice(0, opts.limit_train))
    val = None
    if opts.val_size:
        train, val = holdout_split(train, val_size=opts.val_size)
    test = load_cifar(opts.data, "test", dataset)
    if opts.limit_test:
        test = test.subset(slice(0, opts.limit_test))
    return Data(train, val, test)


class RunSetupError(ValueError):
    """Settings that each parse but cannot run together (a batch and the number of processes, a batch
    and the images left by --limit-train, an explicit file that is not there)."""


def train_loader(run: Run, images: ImageSet) -> DeviceLoader:
    recipe, info = run.recipe, run.info
    if recipe.batch_size % info.world_size:
        raise RunSetupError(
            f"--batch-size {recipe.batch_size} must be divisible by the number of processes ({info.world_size})"
        )
    per_rank = recipe.batch_size // info.world_size
    if len(images) < recipe.batch_size:
        raise RunSetupError(
            f"{len(images)} training images make no batch of {recipe.batch_size}; lower --batch-size or "
            "raise --limit-train"
        )
    return DeviceLoader(
        images.images, images.labels, per_rank, run.entry.mean, run.entry.std,
        augment=Augment(recipe.augment) if recipe.augment else None, shuffle=True, drop_last=True,
        seed=run.seed, device=run.device, rank=info.rank, world_size=info.world_size,
        memory_format=memory_format(run),
    )


# ---------------------------------------------------------------- optimizers

def _trained_parameters(model: nn.Module, recipe: Recipe) -> List[Tuple[str, nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # frozen AvgPoolConvs excluded
    if recipe.train_layers == "quantized":
        keep = {f"{name}.weight" for name, _ in quantized_modules(model)}
        named = [(n, p) for n, p in named if n in keep]
    elif recipe.train_layers != "all":
        raise ValueError(f"train_layers must be 'all' or 'quantized', got {recipe.train_layers!r}")
    return named


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    named = _trained_parameters(model, recipe)
    if recipe.decay_biases:
        groups = [{"params": [p for _, p in named], "weight_decay": recipe.weight_decay}]
    else:
        groups = [
            {"params": [p for _, p in named if p.dim() > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for _, p in named if p.dim() <= 1], "weight_decay": 0.0},
        ]
    # One fused kernel for decay, momentum and update instead of several passes over every weight.
    fused = True if all(p.is_cuda for _, p in named) else None
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, fused=fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {recipe.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe):
    """Stepped once per epoch."""
    if recipe.lr_schedule == "constant":
        return None
    if recipe.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=0.0)
    if recipe.lr_schedule == "multistep":
        milestones = sorted({round(f * recipe.epochs) for f in recipe.lr_drop_fractions})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'multistep', got {recipe.lr_schedule!r}")


# ---------------------------------------------------------------- the training loop

def fit(run: Run, model: nn.Module, data: Data, cbp_enabled: bool) -> nn.Module:
    """Trains ``model`` for the recipe's epochs with checkpoints, logs and model selection.

    Returns the model to publish: the last epoch, or the best validation epoch with ``--val-size``.
    """
    recipe, opts, info = run.recipe, run.options, run.info
    run.stage_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    cbp = None
    if cbp_enabled:
        cbp = CBP(model, optimizer, recipe.lambda_lr, recipe.lambda_optimizer, recipe.period_max, recipe.drop_lr_at_g20)
    start_epoch, best = 0, {"val_top1": -1.0, "epoch": None, "state": None}
    checkpoint_path = run.stage_dir / CHECKPOINT_NAME
    if opts.resume:
        start_epoch, best = restore_checkpoint(checkpoint_path, run.device, model, optimizer, scheduler, cbp)
        run.log(f"resumed {run.name}/{recipe.stage} at epoch {start_epoch}")
    elif cbp is not None:
        cbp.start()
    forward = distributed.wrap(TrainForward(model), info, run.device)
    loader = train_loader(run, data.train)
    rule = step_rule(run)
    step = graphed_step(run, forward, model, optimizer, rule, cbp)
    log = MetricsLog(run.stage_dir / METRICS_NAME, start_epoch) if info.is_main else None
    last_epoch = recipe.epochs if not opts.stop_after_epoch else min(recipe.epochs, opts.stop_after_epoch)
    flips = CodeFlips(cbp.layers) if cbp is not None else None
    writer = CheckpointWriter(checkpoint_path)
    saved_at = time.monotonic()
    for epoch in range(start_epoch, last_epoch):
        started = time.perf_counter()
        loader.set_epoch(epoch)
        record: Dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        record.update(train_epoch(forward, model, loader, optimizer, rule, info, run.device, cbp,
                                  progress=opts.progress, desc=f"{run.name} {epoch + 1}/{recipe.epochs}", step=step))
        record["train_seconds"] = time.perf_counter() - started  # train_epoch ends reading its sums back
        if cbp is not None:
            record["g_advanced"] = cbp.end_epoch(record["lagsum"])
            record.update(cbp.stats())
            record.update(flips.epoch_end())
            record["firing_rates"] = firing_rates(model, data.test, run.entry, run.device)
        check_finite(record)
        if scheduler is not None:
            scheduler.step()
        best = evaluate_epoch(run, model, data, record, best)
        record["seconds"] = time.perf_counter() - started
        # Ranks clock their epochs apart; if any of them is out of time, all stop after this epoch.
        out_of_time = distributed.any_rank(
            run.deadline is not None and time.monotonic() + record["seconds"] > run.deadline, info, run.device)
        stopping = epoch + 1 == last_epoch or out_of_time
        if info.is_main:
            log.append(record)
            # A checkpoint of a CBP child is hundreds of MB: written every epoch it would cost a
            # tenth of a short epoch, so it is written at most every --checkpoint-seconds, in the
            # background, and when the run stops, waited for; a killed run resumes from the last one.
            if stopping or time.monotonic() - saved_at >= opts.checkpoint_seconds:
                writer.save(training_state(model, optimizer, scheduler, cbp, epoch + 1, best, recipe), wait=stopping)
                plot_curves(log.records, run.stage_dir / CURVES_NAME, f"{run.name} ({recipe.stage})")
                saved_at = time.monotonic()
            run.log(_epoch_line(record))
        distributed.barrier(info)
        if out_of_time and epoch + 1 < last_epoch:
            run.log(f"{run.name}/{recipe.stage}: stopped after epoch {epoch + 1} of {recipe.epochs}: another epoch "
                    f"would pass --time-budget; continue with --resume")
            last_epoch = epoch + 1
            break
    distributed.check_replicas_agree(model, info)
    run.stopped_early = last_epoch < recipe.epochs
    if best["state"] is not None and not run.stopped_early:
        model.load_state_dict(best["state"])
    return model


def step_rule(run: Run) -> StepRule:
    recipe = run.recipe
    return StepRule(
        loss=recipe.loss, grad_clip=recipe.grad_clip, grad_clip_max=recipe.grad_clip_max,
        weight_clamp=recipe.weight_clamp, amp=run.options.amp,
        loss_scale=float(run.info.world_size) if is_summed(recipe.loss) else 1.0,
    )


def graphed_step(run: Run, forward: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, rule: StepRule,
                 cbp: Optional[CBP]) -> Optional[GraphedTrainStep]:
    """The step replayed from a CUDA graph with --cuda-graph where one CUDA process runs, else None (eager)."""
    if not run.options.cuda_graph:
        return None
    if run.device.type == "cuda" and run.info.world_size == 1:
        return GraphedTrainStep(forward, model, optimizer, rule, cbp)
    run.log("--cuda-graph needs one CUDA process: this run steps eagerly")
    return None


def evaluate_epoch(run: Run, model: nn.Module, data: Data, record: Dict[str, Any], best: Dict[str, Any]) -> Dict[str, Any]:
    """Adds the epoch's validation and test accuracy to ``record``; returns the best validation epoch so far."""
    opts, epoch = run.options, record["epoch"]
    if data.val is not None:
        record["val_top1"] = evaluate(model, data.val, run.entry.mean, run.entry.std, EVAL_BATCH, run.device, run.info,
                                      opts.amp)["top1_all"]
        if record["val_top1"] > best["val_top1"]:
            best = {"val_top1": record["val_top1"], "epoch": epoch, "state": _cpu_state(model)}
    if opts.test_every and (epoch + 1) % opts.test_every == 0:
        test = evaluate(model, data.test, run.entry.mean, run.entry.std, EVAL_BATCH, run.device, run.info, opts.amp)
        record.update({"test_top1_all": test["top1_all"], "test_top1_lossless": test["top1_lossless"]})
    return best


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, cbp: Optional[CBP], epochs_done: int,
                   best: Dict[str, Any], recipe: Recipe) -> Dict[str, Any]:
    """What a resumable checkpoint holds (:func:`.checkpoint.restore_checkpoint` reads it back)."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "cbp": cbp.state_dict() if cbp is not None else None,
        "epoch": epochs_done, "best": best, "recipe": recipe.to_dict(),
    }


class CodeFlips:
    """Per epoch: the fraction of quantized weights whose level (code) changed, over all quantized
    layers and in the last one, where a too-large learning rate shows first."""

    def __init__(self, layers: List[Tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.codes = self._codes()

    def _codes(self) -> List[torch.Tensor]:
        return [weight_codes(m.weight.detach(), m.scale, m.quant) for _, m in self.layers]

    def epoch_end(self) -> Dict[str, float]:
        codes = self._codes()
        changed = [int((new != old).sum()) for new, old in zip(codes, self.codes)]
        self.codes = codes
        return {
            "code_flips": sum(changed) / sum(c.numel() for c in codes),
            "code_flips_last": changed[-1] / codes[-1].numel(),
        }


FIRING_RATE_IMAGES = 128


def firing_rates(model: nn.Module, test: ImageSet, entry: ModelEntry, device: torch.device) -> Dict[str, float]:
    """Spikes per neuron and step of every spiking layer on the first test images: a layer that
    falls silent during CBP shows here before the accuracy drops."""
    from ..metrics import run_model

    was_training = model.training
    _, activity = run_model(model, test.subset(slice(0, FIRING_RATE_IMAGES)), entry.mean, entry.std,
                            batch_size=FIRING_RATE_IMAGES, device=str(device), progress=False)
    model.train(was_training)
    return activity["firing_rates"]


def _cpu_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _epoch_line(record: Dict[str, Any]) -> str:
    keys = ("train_loss", "train_top1", "val_top1", "test_top1_lossless", "test_top1_all", "lagsum", "cfs", "g", "off_level")
    parts = [f"{k}={record[k]:.4g}" if isinstance(record[k], float) else f"{k}={record[k]}" for k in keys if record.get(k) is not None]
    return f"epoch {record['epoch'] + 1}: " + " ".join(parts)


def finished(run: Run) -> bool:
    """Whether the stage ran all its epochs (not stopped early by --stop-after-epoch or --time-budget)."""
    return not run.stopped_early


# ---------------------------------------------------------------- stages

def memory_format(run: Run) -> torch.memory_format:
    """channels_last for the fast backend: cuDNN's bf16 convolutions and the fused neuron kernels
    work on it directly, where NCHW tensors are transposed around every convolution (the stage
    benchmark's step, channels_last, against the same step in the loop, benchmarks/README.md)."""
    return torch.channels_last if run.options.backend == "fast" else torch.contiguous_format


def _placed(run: Run, model: nn.Module) -> nn.Module:
    """``model`` on the run's device, backend and memory format."""
    return model.to(run.device, memory_format=memory_format(run)).set_backend(run.options.backend)


def _build(run: Run, name: str, **overrides: Any) -> nn.Module:
    return _placed(run, create_model(name, T=run.T, **overrides))


def _train_from_scratch(run: Run, **overrides: Any) -> nn.Module:
    seed_everything(run.seed)
    model = _build(run, run.name, **overrides)
    return fit(run, model, load_data(run), cbp_enabled=False)


def spiking_fp32(run: Run) -> Optional[Path]:
    """An SNN trained directly, its recipe naming the method: STBP for the 7-conv-3-FC LIF network
    (docs/method.md §D.3), TSSL-BP for the AlexNet-style SNN (§C.5)."""
    model = _train_from_scratch(run)
    return publish(run, model) if finished(run) else None


def calib_ann(run: Run) -> Optional[Path]:
    """docs/method.md §E.2: the VGG16 ANN (no BN by default) with crop, flip, AutoAugment and Cutout."""
    model = _train_from_scratch(run, mode="ann", use_bn=run.recipe.use_bn)
    if not finished(run):
        return None
    path = ann_weights_path(run.options.out, run.name)
    if run.info.is_main:
        save_weights(model, path, model_name=run.name, config=_weights_config(run))
    return path


def calib_convert(run: Run) -> Path:
    """docs/method.md §E.3: fold BN, search thresholds on 7 augmented batches, light-calibrate on one more."""
    from ..convert import convert_ann_to_snn

    seed_everything(run.seed)
    ann_path = ann_weights_path(run.options.out, run.name)
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path} is missing; run the calib_ann stage first (scripts/train_fp32.py {run.name})")
    model = _build(run, run.name, mode="ann", use_bn=run.recipe.use_bn, weights=ann_path)
    data = load_data(run)
    batches = draw_batches(train_loader(run, data.train), run.recipe.calib_batches + 1)
    convert_ann_to_snn(model, batches[:-1], T=run.T, calib=run.recipe.calib, bias_batch=batches[-1])
    return publish(run, model, data=data)


def draw_batches(loader: DeviceLoader, count: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``count`` augmented training batches, continuing into further epochs when one is too short."""
    batches: List[Tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(batches) < count:
        loader.set_epoch(epoch)
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
        epoch += 1
    return batches


def load_parent(run: Run) -> nn.Module:
    """The fp32 parent, from --parent-weights, OUT/PARENT/PARENT.safetensors, or the hub."""
    path = parent_weights_path(run)
    run.log(f"{run.name}: starting from {run.entry.parent} weights {path}")
    return _build(run, run.entry.parent, weights=path)


def parent_weights_path(run: Run) -> Path:
    parent = run.entry.parent
    if run.options.parent_weights:
        # An explicit file that is not there is a typo, not a request for the published parent.
        path = Path(run.options.parent_weights)
        if not path.is_file():
            raise RunSetupError(f"--parent-weights {path} is not a file; pass the fp32 parent's .safetensors file "
                                f"or leave the flag out to start from {parent}'s run in --out or its published weights")
        return path
    path = weights_path(run.options.out, parent)
    if path.is_file():
        return path
    try:
        return resolve_weights(get_entry(parent))
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError(
            f"{run.name} starts from {parent}, whose weights are not at {path} nor published ({err}). "
            f"Run `python scripts/reproduce.py {parent}` first, or pass --parent-weights FILE."
        ) from None


def quantized_child(run: Run, parent_model: nn.Module) -> nn.Module:
    """The entry's quantized network holding the parent's fp32 weights, scales s = mean|W| (docs/method.md §B.1)."""
    if run.entry.method == "calib":
        from ..convert import to_unit_threshold_snn

        model = to_unit_threshold_snn(parent_model, quant=run.entry.quant.mode).set_pool_gate(run.recipe.pool_gate)
        model.entry = run.entry
        return _placed(run, model)
    model = _build(run, run.name)
    missing, unexpected = model.load_state_dict(parent_model.state_dict(), strict=False)
    scales = {f"{name}.scale" for name, _ in quantized_modules(model)}
    if unexpected or set(missing) != scales:
        raise ValueError(f"{run.entry.parent} does not fit {run.name}: missing {missing}, unexpected {unexpected}")
    for _, layer in quantized_modules(model):
        layer.init_scale_()
    return model


def cbp_stage(run: Run) -> Optional[Path]:
    """docs/method.md §B with the pipeline's recipe: stbp_cbp (D.4), tssl_cbp (C.5), calib_cbp (E.4)."""
    seed_everything(run.seed)
    model = quantized_child(run, load_parent(run))
    model = fit(run, model, load_data(run), cbp_enabled=True)
    return publish(run, model) if finished(run) else None


STAGE_FUNCTIONS = {
    "stbp_fp32": spiking_fp32,
    "tssl_fp32": spiking_fp32,
    "calib_ann": calib_ann,
    "calib_convert": calib_convert,
    "stbp_cbp": cbp_stage,
    "tssl_cbp": cbp_stage,
    "calib_cbp": cbp_stage,
}


# ---------------------------------------------------------------- outputs

def _weights_config(run: Run) -> Dict[str, Any]:
    return {"entry": run.entry.to_dict(), "recipe": run.recipe.to_dict(), "T_trained": run.T}


def publish(run: Run, model: nn.Module, data: Optional[Data] = None) -> Path:
    """Final evaluation, ``NAME.safetensors`` and ``summary.json`` (main process writes)."""
    data = data or load_data(run)
    entry, opts = run.entry, run.options
    test = evaluate(model, data.test, entry.mean, entry.std, EVAL_BATCH, run.device, run.info, opts.amp)
    val = evaluate(model, data.val, entry.mean, entry.std, EVAL_BATCH, run.device, run.info, opts.amp) if data.val else None
    path = run.weights_path
    if run.info.is_main:
        save_weights(model, path, model_name=run.name, config=_weights_config(run))
        summary = {
            "name": run.name,
            "stage": run.recipe.stage,
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "recipe": run.recipe.to_dict(),
            "options": asdict(opts),
            "seed": run.seed,
            "T": run.T,
            "world_size": run.info.world_size,
            "device": str(run.device),
            "torch": torch.__version__,
            "test": test,
            "validation": val,
            "train_images": len(data.train),
            "weights": {"path": str(path), "sha256": sha256_of(path), "bytes": path.stat().st_size},
            "cfs": _final_cfs(model),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            # the stage's wall time in this process, data loading and the final evaluation included,
            # which is what a stage's time target is measured in; a resumed run counts from its resume
            "process_seconds": round(time.monotonic() - run.started, 3),
        }
        _write_json(run.stage_dir / SUMMARY_NAME, summary)
        _write_json(run.entry_dir / SUMMARY_NAME, summary)
        run.log(f"{run.name}: test top-1 {test['top1_lossless']} % (lossless rows), {test['top1_all']} % (all rows); "
                f"weights {path}")
    return path


def _final_cfs(model: nn.Module) -> Optional[float]:
    from ..cbp import cfs

    return cfs(model) if quantized_modules(model) else None


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_stage(name: str, recipe: Recipe, options: RunOptions, deadline: Optional[float] = None) -> Optional[Path]:
    """Runs one stage of entry ``name`` in this process (one of ``torchrun``'s ranks, or alone); a
    trained stage stops at the last epoch boundary before ``deadline`` (``time.monotonic()``)."""
    if options.deterministic:
        use_deterministic_algorithms()
    device = distributed.pick_device(options.device)
    options = replace(options, backend=options.backend or ("fast" if device.type == "cuda" else "reference"))
    info = distributed.init_distributed(device)
    # Only for this stage: a caller that runs several stages in one process (reproduce.py) gives each its own.
    with fused.pieces_disabled(*options.fused_off):
        return STAGE_FUNCTIONS[recipe.stage](Run(name, recipe, options, device, info, deadline))
