"""Whole epochs of every training stage, projected onto its full schedule; the same networks in
SpikingJelly; and two stages sharing one GPU.

``scripts/benchmark.py`` times one training step on a fixed batch. A stage's wall time is more:
the loader and its augmentation, CBP's per-epoch work, evaluation, logging and checkpoints. This
script runs each stage's real training loop (``qsnn_zoo.train.pipelines.run_stage``) for a few
whole epochs with the recipe's batch size and T, bf16 and CUDA-graph steps, on the CIFAR-10 files
given or on random images of CIFAR-10's shapes, and reports per stage:

- the epoch time (first epoch, with compiles and captures, and the steady epochs after it), the
  part of it spent in the training steps, and the step time of the same recipe replayed alone
  from a CUDA graph (``epoch / (steps x step)`` says what the loop adds around the steps);
- the projected wall time of the stage's full schedule, against the target for that stage;
- with SpikingJelly importable: one plain surrogate-gradient step (forward, cross-entropy,
  backward, SGD) of the same network with SpikingJelly's multi-step neurons in place of ours,
  beside ours, both bf16;
- independent CBP stages at once on one GPU against one after the other (``--concurrent``: the cnn7
  children by default, whose trio target counts on it): aggregate throughput, and whether each
  one's weights equal those of the same command run alone.

    python scripts/benchmark_stages.py --data DATA --out benchmarks/ --stem stages_h200
    python scripts/benchmark_stages.py --device cpu --quick --out /tmp/bench   # checks that it runs
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

import qsnn_zoo
from qsnn_zoo.hub import sha256_of
from qsnn_zoo.layers import fused
from qsnn_zoo.layers.neurons import IFNeuron, LIFNeuron
from qsnn_zoo.layers.time import repeat_over_time
from qsnn_zoo.train.config import RunOptions, recipe_for, stages_for
from qsnn_zoo.train.metrics_log import METRICS_NAME, read_metrics
from qsnn_zoo.train.pipelines import run_stage
from qsnn_zoo.weights import atomic_write, save_weights

from benchmark import environment, images_for, make_train_step, median_time, prepare

SCRIPTS = Path(__file__).resolve().parent
# stage -> (registry entry it makes, full schedule in epochs)
STAGES = {
    "calib_ann": "vgg16_cifar10_fp32_calib",
    "calib_cbp": "vgg16_cifar10_bin_calib",
    "stbp_fp32": "cnn7_cifar10_fp32_stbp",
    "stbp_cbp": "cnn7_cifar10_bin_stbp",
    "tssl_fp32": "alexnet_cifar10_fp32_tsslbp",
    "tssl_cbp": "alexnet_cifar10_bin_tsslbp",
}
# Targets of one H200 for each stage's full schedule, minutes; the STBP trio (parent and both
# children) shares one target, and the SNN-Calibration ANN's includes its conversion.
TARGETS = {
    "calib_ann": ("VGG16 ANN 300 epochs, then conversion", ("calib_ann", "calib_convert"), 15),
    "calib_cbp": ("one VGG16 CBP child, 100 epochs", ("calib_cbp",), 12),
    "stbp": ("cnn7 parent, then both CBP children, 100 epochs each", ("stbp_fp32", "stbp_cbp", "stbp_cbp"), 25),
    "tssl_fp32": ("AlexNet TSSL-BP parent, 150 epochs", ("tssl_fp32",), 15),
    "tssl_cbp": ("one AlexNet CBP child, 200 epochs", ("tssl_cbp",), 15),
}
SPIKINGJELLY_MODELS = ("vgg16_cifar10_bin_calib", "cnn7_cifar10_bin_stbp")
CONCURRENT = ("cnn7_cifar10_bin_stbp", "cnn7_cifar10_ter_stbp")  # the STBP trio's children


# ---------------------------------------------------------------- data and parents

def synthetic_cifar(root: Path, train: int, test: int) -> Path:
    """Random uint8 images in the .npz bundle's layout: the shapes and sizes of CIFAR-10."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    per_file = train // 5
    for i in range(5):
        np.savez(root / f"train-{i}.npz", images=rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, per_file).astype(np.uint8))
    np.savez(root / "test.npz", images=rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, test).astype(np.uint8), lossless=np.arange(test) < test // 10)
    return root


def random_parent(name: str, directory: Path) -> Path:
    """An untrained fp32 parent: a CBP epoch costs the same from any starting weights."""
    parent = qsnn_zoo.get_entry(name).parent
    path = directory / f"{parent}.safetensors"
    if not path.is_file():
        save_weights(qsnn_zoo.create_model(parent), path, model_name=parent)
    return path


# ---------------------------------------------------------------- one stage, whole epochs

def stage_options(args, out: Path, parent: Optional[Path]) -> RunOptions:
    return RunOptions(
        data=str(args.data), out=str(out), device=args.device, amp=args.device != "cpu",
        cuda_graph=args.device != "cpu", progress=False, parent_weights=str(parent or ""),
        limit_train=args.limit_train, limit_test=args.limit_test, checkpoint_seconds=60.0,
    )


def sized(recipe, args):
    """The recipe at the T and batch size given on the command line (--quick), else as it is."""
    return replace(recipe, **{k: v for k, v in (("T", args.T), ("batch_size", args.batch)) if v})


def time_stage(stage: str, args, work: Path) -> dict:
    """Runs ``stage`` for ``args.epochs`` whole epochs and returns its timings."""
    name = STAGES[stage]
    parent = random_parent(name, work) if qsnn_zoo.get_entry(name).parent else None
    recipe = sized(recipe_for(name, stage), args)
    out = work / stage
    started = time.perf_counter()
    run_stage(name, replace(recipe, epochs=args.epochs), stage_options(args, out, parent))
    wall = time.perf_counter() - started
    records = read_metrics(out / name / stage / METRICS_NAME)
    result = {
        "entry": name, "stage": stage, "epochs_run": len(records), "schedule_epochs": recipe.epochs,
        "batch_size": recipe.batch_size, "steps_per_epoch": records[0]["steps"],
        "epoch_s": [r["seconds"] for r in records], "train_s": [r["train_seconds"] for r in records],
        "wall_s": wall,
    }
    if stage == "calib_ann":  # the conversion belongs to the stage's wall time
        started = time.perf_counter()
        run_stage(name, sized(recipe_for(name, "calib_convert"), args), stage_options(args, out, None))
        result["convert_s"] = time.perf_counter() - started
    return result


def profile_stage(stage: str, args, work: Path, rows: int = 20) -> dict:
    """The stage's real loop for ``args.epochs`` epochs again, under the profiler: its kernels by
    device time (operators by CPU time on the CPU), and their sum against the wall time (what the
    GPU did while the loop ran). Timed apart from :func:`time_stage`, since tracing slows the loop."""
    from torch.profiler import ProfilerActivity, profile

    name = STAGES[stage]
    parent = random_parent(name, work) if qsnn_zoo.get_entry(name).parent else None
    recipe = replace(sized(recipe_for(name, stage), args), epochs=args.epochs)
    on_gpu = args.device.startswith("cuda")
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        run_stage(name, recipe, stage_options(args, work / f"{stage}_profiled", parent))
    wall = time.perf_counter() - started
    events = prof.key_averages()
    kernel_s = sum(e.device_time_total if on_gpu else e.self_cpu_time_total for e in events) / 1e6
    sort_by = "device_time_total" if on_gpu else "self_cpu_time_total"
    table = events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=70)
    print(table, flush=True)
    return {"wall_s": wall, "kernel_s": kernel_s, "busy": kernel_s / wall, "table": table}


def step_seconds(stage: str, args) -> float:
    """One training step of the stage's recipe replayed alone (bf16, CUDA graph on a GPU)."""
    name = STAGES[stage]
    recipe = recipe_for(name, stage)
    T, batch = args.T or recipe.T or qsnn_zoo.get_entry(name).T, args.batch or recipe.batch_size
    device = torch.device(args.device)
    model = qsnn_zoo.create_model(name, T=T, **({"mode": "ann"} if stage == "calib_ann" else {})).to(device)
    variant = "fast_bf16_graph" if device.type == "cuda" else "fast"
    step, _ = make_train_step(prepare(model, variant), name, variant, device, batch, stage=stage)
    return median_time(step, device, warmup=args.warmup, runs=args.runs)


def project(timing: dict, step_s: Optional[float]) -> dict:
    """The full schedule's wall time from a short run: the first epoch as measured, every later one
    at the median of the steady epochs, plus what the run spent outside its epochs (start-up,
    data, final evaluation, writing files) and the conversion where there is one."""
    epochs = timing["epoch_s"]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    outside = timing["wall_s"] - sum(epochs)
    full = epochs[0] + (timing["schedule_epochs"] - 1) * steady + outside + timing.get("convert_s", 0.0)
    out = {"steady_epoch_s": steady, "outside_epochs_s": outside, "projected_s": full}
    if step_s:
        steps = timing["steps_per_epoch"]
        out["step_s"] = step_s
        out["epoch_over_steps"] = steady / (steps * step_s)
        out["train_over_steps"] = statistics.median(timing["train_s"][1:] or timing["train_s"]) / (steps * step_s)
    return out


def children_speedup(groups: List[dict]) -> Optional[float]:
    """The measured aggregate speed-up of the cnn7 children side by side, if a group measured them."""
    return next((g["aggregate_speedup"] for g in groups if set(g["jobs"]) == set(CONCURRENT)), None)


def targets(stages: Dict[str, dict], children_speedup: Optional[float] = None) -> List[dict]:
    """Each target's projected minutes, its stages one after another; with the measured aggregate
    speed-up of the two cnn7 children side by side, the STBP trio once more with its children
    together (the parent must finish first: the children start from its file)."""
    rows = []
    for key, (what, parts, minutes) in TARGETS.items():
        if all(p in stages or p == "calib_convert" for p in parts):
            seconds = sum(stages[p]["projection"]["projected_s"] for p in parts if p in stages)
            rows.append({"target": key, "what": what, "projected_min": seconds / 60, "target_min": minutes,
                         "met": seconds / 60 <= minutes})
            if key == "stbp" and children_speedup:
                parent, child = (stages[p]["projection"]["projected_s"] for p in ("stbp_fp32", "stbp_cbp"))
                seconds = parent + 2 * child / children_speedup
                rows.append({"target": key, "what": f"{what}, the children side by side ({children_speedup:.2f}x)",
                             "projected_min": seconds / 60, "target_min": minutes, "met": seconds / 60 <= minutes})
    return rows


# ---------------------------------------------------------------- SpikingJelly beside ours

class SpikingJellyNeuron(nn.Module):
    """A SpikingJelly multi-step node behind our neurons' interface: currents ``[T, B, ...]`` (or one
    step with ``steps``) in, spikes out, state reset after every call, as our neurons keep none between calls."""

    def __init__(self, node: nn.Module, bias: float = 0.0) -> None:
        super().__init__()
        self.node = node
        self.bias = bias  # our IF neuron's per-step threshold * shift / T, which SpikingJelly has not

    def forward(self, current: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        if steps is not None:
            current = repeat_over_time(current, steps)
        spikes = self.node(current + self.bias if self.bias else current)
        self.node.reset()
        return spikes


def with_spikingjelly_neurons(model: nn.Module) -> nn.Module:
    """``model`` with every IF or LIF neuron replaced by SpikingJelly's equivalent node: same
    dynamics (soft-reset IF with the arctan surrogate; hard-reset LIF with decay 1 - 1/tau and the
    boxcar surrogate as PiecewiseLeakyReLU(w=lens, c=0))."""
    from spikingjelly.activation_based import neuron, surrogate

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, IFNeuron):
                v_th = float(child.threshold)
                node = neuron.IFNode(v_threshold=v_th, v_reset=None, surrogate_function=surrogate.ATan(alpha=child.alpha),
                                     step_mode="m")
                setattr(parent, child_name, SpikingJellyNeuron(node, v_th * child.shift / child.T))
            elif isinstance(child, LIFNeuron):
                node = neuron.LIFNode(tau=1 / (1 - child.decay), decay_input=False, v_threshold=child.threshold,
                                      v_reset=0.0, surrogate_function=surrogate.PiecewiseLeakyReLU(w=child.lens, c=0.0),
                                      step_mode="m")
                setattr(parent, child_name, SpikingJellyNeuron(node))
    return model


def plain_step(model: nn.Module, device: torch.device, batch: int):
    """Forward, cross-entropy on the decoded scores, backward and an SGD step, under bf16 autocast."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = images_for("fast", batch, device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(model.decode(model.forward_steps(x)).float(), y)
        loss.backward()
        optimizer.step()

    return step


def spikingjelly_comparison(args) -> dict:
    try:
        version = importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        return {"skipped": "spikingjelly is not installed"}
    device = torch.device(args.device)
    rows = []
    for name in SPIKINGJELLY_MODELS:
        recipe = recipe_for(name, stages_for(name)[-1])
        T, batch = args.T or qsnn_zoo.get_entry(name).T, args.batch or recipe.batch_size
        row = {"model": name, "T": T, "batch": batch}
        torch.manual_seed(0)
        ours = prepare(qsnn_zoo.create_model(name, T=T).to(device), "fast")
        row["ours_s"] = median_time(plain_step(ours, device, batch), device, args.warmup, args.runs)
        del ours
        torch.manual_seed(0)
        theirs = with_spikingjelly_neurons(prepare(qsnn_zoo.create_model(name, T=T).to(device), "fast"))
        with fused.pieces_disabled(*fused.PIECES):  # the fused layers bypass the neuron modules we replaced
            row["spikingjelly_s"] = median_time(plain_step(theirs, device, batch), device, args.warmup, args.runs)
        row["speedup"] = row["spikingjelly_s"] / row["ours_s"]
        rows.append(row)
        print(f"plain step {name}: ours {row['ours_s'] * 1e3:.1f} ms, SpikingJelly {row['spikingjelly_s'] * 1e3:.1f} ms",
              flush=True)
    return {"spikingjelly": version, "rows": rows}


# ---------------------------------------------------------------- two stages on one GPU

def stage_command(name: str, args, out: Path, parent: Path) -> List[str]:
    command = [sys.executable, str(SCRIPTS / "quantize_cbp.py"), name, "--epochs", str(args.epochs),
               "--parent-weights", str(parent), "--out", str(out), "--data", str(args.data), "--device", args.device,
               "--no-progress", "--checkpoint-seconds", "1e9"]
    sizes = {"--limit-train": args.limit_train, "--limit-test": args.limit_test, "--T": args.T, "--batch-size": args.batch}
    command += [word for flag, value in sizes.items() if value for word in (flag, str(value))]
    return command + (["--amp", "--cuda-graph"] if args.device != "cpu" else [])


def run_commands(commands: List[List[str]], logs: List[Path]) -> float:
    """Starts every command at once and waits for all; the wall time. A failed command raises."""
    started = time.perf_counter()
    procs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"exit codes {codes}; see {[str(log) for log in logs]}")
    return time.perf_counter() - started


def concurrency(args, work: Path, jobs: List[str]) -> dict:
    """The CBP stages of ``jobs`` (quantized entries) one after the other, then all at once (CUDA MPS
    when its daemon runs): wall times, aggregate speed-up, and whether each file equals its run alone."""
    work.mkdir(parents=True, exist_ok=True)
    parents = {name: random_parent(name, work) for name in jobs}
    alone, together = work / "alone", work / "together"
    alone_s = sum(run_commands([stage_command(n, args, alone, parents[n])], [work / f"alone_{n}.log"]) for n in jobs)
    together_s = run_commands([stage_command(n, args, together, parents[n]) for n in jobs],
                              [work / f"together_{n}.log" for n in jobs])
    same = {n: sha256_of(alone / n / f"{n}.safetensors") == sha256_of(together / n / f"{n}.safetensors")
            for n in jobs}
    return {"jobs": list(jobs), "epochs": args.epochs, "one_after_another_s": alone_s, "together_s": together_s,
            "aggregate_speedup": alone_s / together_s, "weights_equal_alone": same, "mps": mps_running()}


def job_group(text: str) -> List[str]:
    """``A,B,...``: two or more quantized registry entries, for --concurrent."""
    names = [n for n in text.split(",") if n]
    for name in names:
        try:
            entry = qsnn_zoo.get_entry(name)
        except KeyError as err:
            raise argparse.ArgumentTypeError(str(err).strip("'\"")) from None
        if entry.quant.mode is None:
            raise argparse.ArgumentTypeError(f"{name} is not a quantized entry; its stage here is CBP")
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: name two or more entries, comma-separated")
    return names


def mps_running() -> bool:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return Path(pipe, "control").exists()


# ---------------------------------------------------------------- report

def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Stage timings: {env.get('gpu', env.get('device'))}", "",
             f"torch {env['torch']}, {report['data']}, {report['epochs']} whole epochs per stage, "
             "bf16 + CUDA-graph steps", "",
             "| stage | entry | steps/epoch | first epoch s | steady epoch s | step ms | epoch / (steps x step) | "
             "full schedule | projected min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for stage, r in report["stages"].items():
        if "error" in r:
            lines.append(f"| {stage} | {STAGES[stage]} | error: {r['error']} | | | | | | |")
            continue
        p = r["projection"]
        step = f"{p['step_s'] * 1e3:.2f}" if "step_s" in p else "-"
        ratio = f"{p['epoch_over_steps']:.2f}" if "epoch_over_steps" in p else "-"
        lines.append(f"| {stage} | {r['entry']} | {r['steps_per_epoch']} | {r['epoch_s'][0]:.1f} | "
                     f"{p['steady_epoch_s']:.2f} | {step} | {ratio} | {r['schedule_epochs']} epochs | "
                     f"{p['projected_s'] / 60:.1f} |")
    profiled = {stage: r["profile"] for stage, r in report["stages"].items() if "profile" in r}
    for stage, prof in profiled.items():
        lines += ["", f"Profiled {stage} ({report['epochs']} epochs, traced): kernels {prof['kernel_s']:.1f} s of "
                  f"{prof['wall_s']:.1f} s wall ({100 * prof['busy']:.0f} % busy)", "", "```", prof["table"].rstrip(), "```"]
    lines += ["", "| target | what | projected min | target min | met |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['what']} | {t['projected_min']:.1f} | {t['target_min']} | "
                     f"{'yes' if t['met'] else 'no'} |")
    sj = report.get("spikingjelly", {})
    if sj.get("rows"):
        lines += ["", f"Plain surrogate-gradient step, bf16, SpikingJelly {sj['spikingjelly']} neurons in the same network:",
                  "", "| model | T | batch | ours ms | SpikingJelly ms | ours faster by |", "|---|---|---|---|---|---|"]
        for r in sj["rows"]:
            lines.append(f"| {r['model']} | {r['T']} | {r['batch']} | {r['ours_s'] * 1e3:.1f} | "
                         f"{r['spikingjelly_s'] * 1e3:.1f} | {r['speedup']:.1f}x |")
    for c in report.get("concurrency", []):
        lines += ["", f"{len(c['jobs'])} stages side by side ({', '.join(c['jobs'])}, {c['epochs']} epochs each, "
                  f"MPS {'on' if c['mps'] else 'off'}): one after the other {c['one_after_another_s']:.1f} s, "
                  f"together {c['together_s']:.1f} s, aggregate speed-up {c['aggregate_speedup']:.2f}x; "
                  f"weights equal to the run alone: {c['weights_equal_alone']}."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str) + "\n"
    atomic_write(out / f"{stem}.json", lambda tmp: Path(tmp).write_text(text))
    md = markdown(report)
    atomic_write(out / f"{stem}.md", lambda tmp: Path(tmp).write_text(md))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 (default: random images of its shapes)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--stem", default="stages")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--epochs", type=int, default=2, help="whole epochs per stage (the first warms up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-spikingjelly", dest="spikingjelly", action="store_false")
    parser.add_argument("--no-concurrency", dest="concurrency", action="store_false")
    parser.add_argument("--concurrent", nargs="+", type=job_group, default=[list(CONCURRENT)], metavar="A,B",
                        help="groups of quantized entries whose CBP stages run side by side, each group's names "
                        "comma-separated (default: the cnn7 children)")
    parser.add_argument("--profile", action="store_true",
                        help="run each stage's epochs once more under the profiler: kernels by device time, busy fraction")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device: checks that the script runs")
    args = parser.parse_args(argv)
    args.T = args.batch = args.limit_train = args.limit_test = 0
    if args.quick:
        args.T, args.batch, args.limit_train, args.limit_test, args.warmup, args.runs = 2, 8, 16, 16, 0, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible; use --device cpu --quick for a smoke run")
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="qsnn-stages-") as tmp:
        work = Path(tmp)
        if args.data is None:
            args.data = synthetic_cifar(work / "data", 200 if args.quick else 50000, 40 if args.quick else 10000)
            data_note = "random images of CIFAR-10's shapes"
        else:
            data_note = f"CIFAR-10 from {args.data}"
        report = {"environment": environment(torch.device(args.device)), "data": data_note, "epochs": args.epochs,
                  "stages": {}, "targets": []}
        for stage in args.stages:
            try:
                timing = time_stage(stage, args, work)
                timing["projection"] = project(timing, step_seconds(stage, args))
                if args.profile:
                    timing["profile"] = profile_stage(stage, args, work)
            except Exception as err:  # one stage's failure must not cost the others' numbers
                timing = {"error": f"{type(err).__name__}: {err}"}
            report["stages"][stage] = timing
            print(f"{stage}: {json.dumps(timing, default=str)}", flush=True)
            write_report(report, args.out, args.stem)
        if args.spikingjelly:
            report["spikingjelly"] = spikingjelly_comparison(args)
        if args.concurrency:
            report["concurrency"] = [concurrency(args, work / f"group_{i}", jobs)
                                     for i, jobs in enumerate(args.concurrent)]
        report["targets"] = targets({k: v for k, v in report["stages"].items() if "error" not in v},
                                    children_speedup(report.get("concurrency", [])))
        write_report(report, args.out, args.stem)
    print(markdown(report))
    return 1 if any("error" in r for r in report["stages"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
