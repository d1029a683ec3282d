"""The ``qsnn-zoo`` command: list, info, eval, predict and export the registry's models.

Expected failures (unknown model, missing or bad weights, unreadable data or images) print one
line naming the problem and the fix, and exit with status 2; nothing else is caught.
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .argtypes import hub_repo_id, output_file, positive_int, torch_device
from ._registry import DATASETS, METHODS, WEIGHT_KINDS, ModelEntry, UnknownModelError, get_entry, iter_entries
from .data import CIFAR10_CLASSES, DataError, ImageSet, load_cifar, load_sample, to_tensor
from .hub import HashMismatchError, WeightsNotFoundError, resolve_weights, sha256_of, weights_filename, weights_location
from .signals import exit_on_sigterm
from .weights import WeightsFormatError

EXIT_USER_ERROR = 2


class CLIError(Exception):
    """A command that cannot run as asked; the message says what to do instead."""


USER_ERRORS = (CLIError, DataError, UnknownModelError, WeightsNotFoundError, HashMismatchError, WeightsFormatError)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------- list

def _matches(entry: ModelEntry, args: argparse.Namespace) -> bool:
    return (
        fnmatch.fnmatchcase(entry.name, args.pattern)
        and (entry.has_weights or not args.pretrained)
        and args.method in (None, entry.method)
        and args.dataset in (None, entry.dataset)
        and args.quant in (None, entry.weight_kind)
    )


def cmd_list(args: argparse.Namespace) -> int:
    from .metrics import entry_weight_memory, measured_top1

    entries = [e for e in iter_entries() if _matches(e, args)]
    if args.json:
        _print_json([e.name for e in entries])
        return 0
    rows = [
        (
            e.name, e.method, e.dataset, e.weight_kind, str(e.T),
            f"{entry_weight_memory(e.name)['weight_mb']:.2f}",
            weights_location(e),
            _percent(measured_top1(e, "lossless")),
        )
        for e in entries
    ]
    header = ("name", "method", "dataset", "weights", "T", "MB", "pretrained weights", "top1 lossless %")
    print(_table(header, rows) if rows else "no model matches these filters")
    return 0


# ---------------------------------------------------------------- info

def _info_lines(data: Dict[str, Any], indent: str = "") -> List[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", *_info_lines(value, indent + "  ")]
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}:")
            for item in value:
                lines += _info_lines(item, indent + "  - ")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{indent}{key}: {', '.join(str(v) for v in value) or '-'}")
        elif isinstance(value, str) and "\n" in value:
            lines += [f"{indent}{key}: |", *(f"{indent}  {line}" for line in value.splitlines())]
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    info = get_entry(args.name).to_dict()
    if args.json:
        _print_json(info)
    else:
        print("\n".join(_info_lines(info)))
    return 0


# ---------------------------------------------------------------- loading a model with real weights

def _weights_path(entry: ModelEntry, weights: Optional[str]) -> Path:
    """The weights to use; refuses to go on without any, since random weights are no result."""
    try:
        return resolve_weights(entry, weights=weights)
    except WeightsNotFoundError:
        if weights is not None or entry.has_weights:
            raise
        why = "has no published weights" if entry.made_file is None else (
            f"has no committed weights file ({entry.made_file.reason})")
        raise CLIError(
            f"{entry.name} {why}, so there is no pretrained model to run. Make them with "
            f"`{entry.recipe}` and pass --weights PATH (or put {weights_filename(entry)} in $QSNN_ZOO_WEIGHTS)."
        ) from None


def _load_model(entry: ModelEntry, args: argparse.Namespace):
    """``(model, weights record)``: the entry built with real weights, and where they came from."""
    from ._builder import create_model

    path = _weights_path(entry, args.weights)
    sha256 = sha256_of(path)
    overrides = {} if args.T is None else {"T": args.T}
    model = create_model(entry.name, weights=path, **overrides)
    model.set_backend(args.backend)
    record = {
        "path": str(path),
        "sha256": sha256,
        # The file the card's numbers were measured on: the published one, or the uncommitted one its run made.
        "published": sha256 in {f.sha256 for f in (entry.weights, entry.made_file) if f is not None},
    }
    return model, record


def _weights_line(weights: Dict[str, Any]) -> str:
    return f"weights: {weights['path']} (sha256 {weights['sha256']})"


def _configuration_notes(entry: ModelEntry, model, weights: Dict[str, Any]) -> List[str]:
    """What makes a run differ from the published model, so no result passes for a pretrained one."""
    notes = []
    if not weights["published"]:
        notes.append(f"weights are {weights['path']}, not the published checkpoint of {entry.name}")
    if model.T != entry.T:
        notes.append(f"T={model.T} overrides the published T={entry.T}")
    return notes


# ---------------------------------------------------------------- eval

def _eval_data(entry: ModelEntry, root: Optional[str], limit: Optional[int]) -> ImageSet:
    if root is None:
        if entry.dataset != "cifar10":
            raise CLIError(
                f"the bundled sample is CIFAR-10 and {entry.name} is a {entry.dataset} model; pass "
                f"--data DIR holding {entry.dataset} in torchvision's layout."
            )
        data = load_sample()
    else:
        data = load_cifar(root, "test", entry.dataset)
    if limit is not None:
        data = data.subset(slice(0, limit))
    return data


def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics import accuracy, run_model, weight_memory

    entry = get_entry(args.name)
    data = _eval_data(entry, args.data, args.limit)
    model, weights = _load_model(entry, args)
    predictions, activity = run_model(model, data, entry.mean, entry.std, args.batch_size, args.device)
    result = {
        "model": entry.name,
        "weights": weights,
        "T": model.T,
        "backend": args.backend,
        "device": args.device,
        "data": {
            "source": data.source,
            "rows": len(data),
            "lossless_rows": None if data.lossless is None else int(data.lossless.sum()),
        },
        "accuracy": accuracy(predictions, data),
        "activity": activity,
        "weight_memory": weight_memory(model),
        "notes": _configuration_notes(entry, model, weights),
    }
    if args.data is None:
        result["notes"].append(f"bundled sample of {len(data)} lossless CIFAR-10 test images, not the full test set")
    if args.json:
        _print_json(result)
    else:
        print(_eval_report(result))
    return 0


def _eval_report(result: Dict[str, Any]) -> str:
    acc, activity, memory = result["accuracy"], result["activity"], result["weight_memory"]
    lines = [f"{result['model']}  (T={result['T']}, {result['backend']} backend on {result['device']})",
             _weights_line(result["weights"])]
    lines += [f"  note: {note}" for note in result["notes"]]
    lines.append(f"data: {result['data']['source']}, {result['data']['rows']} images")
    if acc["lossless"] is not None:
        lines.append(f"top-1 on lossless rows: {_percent(acc['lossless']['top1'])} % ({acc['lossless']['rows']} images)")
    lines.append(f"top-1 on all rows:      {_percent(acc['all']['top1'])} % ({acc['all']['rows']} images)")
    synops = activity["synaptic_operations"]
    dense = activity["dense_first_layer"]
    lines.append(f"synaptic operations per image: {synops['per_image']:,.0f} "
                 f"(+ {dense['macs_per_image']:,} dense MACs in {dense['layer']})")
    lines.append(f"spikes per image: {activity['spikes_per_image']:,.0f}")
    lines.append("firing rate (spikes per neuron per step):")
    lines += [f"  {name:<22} {rate:.4f}" for name, rate in activity["firing_rates"].items()]
    lines.append(
        f"weight memory: {memory['weight_mb']:.3f} MB weights ({memory['weight_bits']:,.0f} bits, "
        f"{100 * memory['fraction_of_fp32']:.2f} % of fp32), {memory['total_mb']:.3f} MB with biases and scales"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- predict

def _read_image(path: str) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice it; either way the model needs 32x32.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise CLIError(f"image {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise CLIError(
            f"{path} is refused as a possible decompression bomb ({err}); the model sees 32x32 pixels, "
            "so downscale the image first"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise CLIError(f"{path} is not an image PIL can read ({err})") from None
    return np.asarray(rgb, dtype=np.uint8)


def _class_name(entry: ModelEntry, index: int) -> str:
    return CIFAR10_CLASSES[index] if entry.dataset == "cifar10" else f"class {index}"


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    entry = get_entry(args.name)
    images = np.stack([_read_image(p) for p in args.images])
    model, weights = _load_model(entry, args)
    model.eval().to(args.device)
    with torch.no_grad():
        scores = model(to_tensor(images, entry.mean, entry.std, args.device)).cpu()
    predictions = [_prediction(entry, model, path, values.tolist(), args.top) for path, values in zip(args.images, scores)]
    notes = _configuration_notes(entry, model, weights)
    if args.json:
        _print_json({"model": entry.name, "weights": weights, "score": entry.neuron.decoding,
                     "predictions": predictions, "notes": notes})
        return 0
    print(f"{entry.name} (score: {entry.neuron.decoding})")
    print(_weights_line(weights))
    for note in notes:
        print(f"  note: {note}")
    for item in predictions:
        print(item["image"])
        if item["no_prediction"]:
            print(f"  no prediction: {item['no_prediction']}")
        for rank, group in itertools.groupby(item["top"], key=lambda guess: guess["rank"]):
            group = list(group)
            if len(group) == 1:
                print(f"  {rank}. {group[0]['label']:<12} {group[0]['score']:.4f}")
            else:
                print(f"  {rank}. tie of {len(group)} classes at {group[0]['score']:.4f}: {_some_labels(group)}")
    return 0


def _prediction(entry: ModelEntry, model, path: str, scores: List[float], top: int) -> Dict[str, Any]:
    """The classes ranked 1..top, tied classes sharing a rank (1, 2, 2, 4) and listed together, since
    no order among them is the model's; no ranking at all when every class scores the same."""
    if min(scores) == max(scores):
        silent = model.spiking_output and scores[0] == 0
        why = f"every class scores {scores[0]:.4f}" + ("; no output neuron fired" if silent else "")
        return {"image": path, "top": [], "no_prediction": why}
    ranked: List[Dict[str, Any]] = []
    for position, index in enumerate(sorted(range(len(scores)), key=lambda i: (-scores[i], i)), 1):
        tied = ranked and scores[index] == ranked[-1]["score"]
        rank = ranked[-1]["rank"] if tied else position
        if rank > top:
            break
        ranked.append({"rank": rank, "label": _class_name(entry, index), "index": index, "score": scores[index]})
    return {"image": path, "top": ranked, "no_prediction": None}


def _some_labels(group: List[Dict[str, Any]], shown: int = 10) -> str:
    labels = ", ".join(guess["label"] for guess in group[:shown])
    return labels + (f" and {len(group) - shown} more" if len(group) > shown else "")


# ---------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    try:
        from .export import export_model

        export_model(entry.name, args.format, args.output, weights=args.weights,
                     allow_approximate=args.allow_approximate)
    except ImportError as err:  # no export module in this install, or its optional dependency missing
        raise CLIError(f"export to {args.format} is not available here: {err}") from None
    except (ValueError, NotImplementedError) as err:
        raise CLIError(f"export of {entry.name} to {args.format} failed: {err}") from None
    except WeightsNotFoundError:
        raise
    except OSError as err:  # the output's directory cannot be made or written; nothing was left there
        raise CLIError(f"cannot write {args.output}: {err.strerror or err}. Pass -o a path in a writable directory.") from None
    print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------- push

def cmd_push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from .hub_repository import push_entry

    # The errors of whichever HTTP library huggingface_hub uses (a refused connection, a timeout), which
    # need not be OSErrors: HfHubHTTPError derives from that library's base error.
    transport_errors = tuple(base for base in HfHubHTTPError.__bases__ if base is not OSError)
    try:
        commit = push_entry(args.name, args.repo_id, revision=args.revision, private=args.private or None)
    except HfHubHTTPError as err:
        reason = " ".join(str(err).split())
        raise CLIError(
            f"the Hub refused the push of {args.name} to {args.repo_id}: {reason}. Log in with `hf auth login` or set "
            "HF_TOKEN to a token that may write to that repository."
        ) from None
    except WeightsNotFoundError:
        raise
    except (OSError, RuntimeError, *transport_errors) as err:  # the connection or a file upload broke off
        reason = " ".join(str(err).split())
        raise CLIError(
            f"the push of {args.name} to {args.repo_id} did not complete: {reason}. Nothing was pinned; run the same "
            "command again."
        ) from None
    print(f"pushed {args.name} to {args.repo_id}@{commit}; qsnn_zoo/published.json now pins that commit "
          "(regenerate the cards with `python scripts/make_cards.py`).")
    return 0


# ---------------------------------------------------------------- parser

def _add_model_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="registry name (see `qsnn-zoo list`)")
    parser.add_argument("--weights", help="weights file or directory (default: the published weights)")
    parser.add_argument("--T", type=positive_int, help="simulate this many timesteps instead of the entry's T")
    parser.add_argument("--device", type=torch_device, default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=("reference", "fast"), default="reference",
                        help="reference: one step at a time; fast: time folded into the batch")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsnn-zoo", description="Pretrained binary and ternary spiking neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registry models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the name, e.g. 'vgg16_*'")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--quant", choices=WEIGHT_KINDS, help="weight kind")
    p.add_argument("--json", action="store_true", help="print the names as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="every field of a model's registry record")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="accuracy, firing rates, synaptic operations and weight memory")
    _add_model_run_options(p)
    p.add_argument("--data", help="CIFAR directory (.npz bundle or torchvision layout); default: the bundled sample")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N test images")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 labels of image files")
    _add_model_run_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--top", type=positive_int, default=5, help="how many labels to show")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a model for neuromorphic tools (NIR) or deployment")
    p.add_argument("name")
    p.add_argument("--format", required=True, choices=("nir", "deploy"))
    p.add_argument("-o", "--output", type=output_file, required=True, help="file to write")
    p.add_argument("--weights", help="weights file or directory (default: the published weights)")
    p.add_argument("--allow-approximate", action="store_true",
                   help="allow a format that cannot express the model exactly (the file says what differs)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="publish a model's weights, config.json and card as a Hub repository")
    p.add_argument("name")
    p.add_argument("--repo-id", type=hub_repo_id, required=True,
                   help="Hub repository OWNER/NAME (created if it does not exist)")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    exit_on_sigterm()
    args = build_parser().parse_args(argv)
    if getattr(args, "device", "unset") is None:
        args.device = _default_device()
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"qsnn-zoo: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # the reader (e.g. `| head`) closed early; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
