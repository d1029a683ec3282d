"""The model registry: one frozen record per published or planned checkpoint.

An entry is data. Model families (``qsnn_zoo/models/*.py``) declare their entries and a builder per
entry with :func:`register_model`; everything else (building, loading weights, cards, the CLI, timm
and torch.hub) reads the records from here.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import sys
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

WEIGHT_KINDS = ("fp32", "bin", "ter")
METHODS = ("calib", "stbp", "tsslbp")
DATASETS = ("cifar10", "cifar100")


@dataclass(frozen=True)
class NeuronSpec:
    """Every setting that decides what a spiking layer computes (cards print all of them)."""

    model: str  # "if" | "lif" | "tssl"
    threshold: float
    reset: str  # "soft" (subtract) | "hard" (to zero)
    comparison: str  # ">=" or ">" between potential and threshold
    surrogate: str  # human-readable surrogate gradient, parameters included
    encoding: str  # how the image enters: "direct" current or "psp" filtered current
    decoding: str  # how T outputs become class scores
    decay: Optional[float] = None  # LIF potential decay per step
    tau_m: Optional[float] = None  # TSSL membrane time constant (steps)
    tau_s: Optional[float] = None  # TSSL synaptic time constant (steps)
    shift: Optional[float] = None  # IF: threshold * shift / T added to the input at every step
    initial_potential: str = "zero"  # "zero" | "per-neuron" (a stored buffer)


@dataclass(frozen=True)
class QuantSpec:
    """Which layers are quantized and how (docs/method.md §B.1-B.2)."""

    mode: Optional[str]  # None (fp32), "bin" {-s,+s}, "ter" {-s,0,+s}
    quantized_layers: Tuple[str, ...]
    full_precision_layers: Tuple[str, ...]
    scale: str = "one fp32 scale per layer, s = mean|W| of the fp32 parent at the start of CBP, never trained"
    gradient: str = "straight-through (identity), latent fp32 weights clamped to [-1, 1]"

    @property
    def bits(self) -> Optional[float]:
        return {None: None, "bin": 1.0, "ter": 1.6}[self.mode]


@dataclass(frozen=True)
class FilePart:
    """One byte-exact part of a weights file too large to commit whole (:mod:`qsnn_zoo.parts`)."""

    filename: str  # NAME.safetensors.part<k>-of-<n>, in checkpoints/ beside where the whole file would be
    sha256: str
    size: int


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: where it lives and how to recognise it."""

    filename: str
    sha256: str
    size: int
    hf_repo: str
    # A full commit hash, so downloads are reproducible; None while the file ships only in the
    # repository's checkpoints/ folder and has not been uploaded to the Hub.
    revision: Optional[str] = None
    # The parts the file is committed as in checkpoints/, in order, when it is over the repository's
    # size limit; empty when it is committed whole. The Hub holds the whole file either way.
    parts: Tuple[FilePart, ...] = ()


@dataclass(frozen=True)
class MadeFile:
    """The file a recipe's run made, on which the entry's metrics were measured, when it is not
    published (an fp32 parent too large to commit): the registry states its sha256 and size so that
    whoever reruns the recipe can check the file they make against it."""

    sha256: str  # of the file with its header in sorted key order, as save_weights writes it
    size: int  # bytes
    dtype: str  # float dtype of its tensors: "float32" | "float16"
    reason: str  # why it is not committed


@dataclass(frozen=True)
class Metric:
    """A measured number and exactly what it was measured on."""

    name: str  # "top1"
    value: float  # percent
    data: str  # e.g. "cifar10-offline test, lossless rows (1017)"
    rows: int
    source: str  # repository file that produced the number


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # model family module: "vgg" | "cnn7" | "alexnet"
    method: str  # "calib" | "stbp" | "tsslbp"
    dataset: str
    num_classes: int
    T: int
    neuron: NeuronSpec
    quant: QuantSpec
    arch_kwargs: Tuple[Tuple[str, Any], ...]
    input_size: Tuple[int, int, int] = (3, 32, 32)
    mean: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: Tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
    parent: Optional[str] = None
    weights: Optional[WeightsFile] = None
    made_file: Optional[MadeFile] = None  # only without weights: the measured file, not shipped
    metrics: Tuple[Metric, ...] = ()
    paper_claim: str = ""
    recipe: str = ""
    # How the published weights' run departs from the entry's full recipe (docs/method.md) (shorter schedule, options).
    training_notes: Tuple[str, ...] = ()
    description: str = ""
    license: str = "apache-2.0"
    citation: str = ""
    builder: Optional[Callable[..., Any]] = field(default=None, compare=False, repr=False)

    @property
    def weight_kind(self) -> str:
        return self.quant.mode or "fp32"

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def arch_config(self) -> Dict[str, Any]:
        """The keyword arguments the family's model class is built with."""
        return dict(self.arch_kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able view (the builder is code, not data, and is left out)."""
        data = asdict(self)
        data.pop("builder")
        data["arch_kwargs"] = dict(self.arch_kwargs)
        if self.weights is not None and not self.weights.parts:
            # As published.json writes it, and so the config saved into a weights file is what it was.
            del data["weights"]["parts"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_ENTRIES: Dict[str, ModelEntry] = {}
PUBLISHED_FILE = Path(__file__).with_name("published.json")


def _published() -> Dict[str, Any]:
    """Weights, metrics and recipes of trained entries, written by ``scripts/publish.py``."""
    if not PUBLISHED_FILE.exists():
        return {}
    return json.loads(PUBLISHED_FILE.read_text())


def _weights_file(record: Mapping[str, Any]) -> WeightsFile:
    parts = tuple(FilePart(**part) for part in record.get("parts", ()))
    return WeightsFile(**{**record, "parts": parts})


def _with_published(entry: ModelEntry, record: Mapping[str, Any]) -> ModelEntry:
    """``entry`` with its published record; a record's "weights" is null when only its made file is known."""
    weights, made_file = record["weights"], record.get("made_file")
    return replace(
        entry,
        weights=None if weights is None else _weights_file(weights),
        made_file=None if made_file is None else MadeFile(**made_file),
        metrics=tuple(Metric(**m) for m in record.get("metrics", ())),
        recipe=record.get("recipe", entry.recipe),
        training_notes=tuple(record.get("training_notes", ())),
    )


def record_hub_revision(name: str, hf_repo: str, revision: str) -> ModelEntry:
    """Pins ``name``'s published weights to commit ``revision`` of the Hub repository ``hf_repo``, in
    published.json (so every later import downloads exactly that commit) and in this process's registry."""
    from .weights import atomic_write  # weights needs torch; the registry itself is plain data

    entry = get_entry(name)
    published = _published()
    if entry.weights is None or published.get(name, {}).get("weights") is None:
        raise ValueError(f"{name} has no published weights file to pin to a Hub revision")
    published[name]["weights"].update(hf_repo=hf_repo, revision=revision)
    text = json.dumps(published, indent=2, sort_keys=True) + "\n"
    atomic_write(PUBLISHED_FILE, lambda tmp: Path(tmp).write_text(text))
    return publish_record(name, published[name])


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a family's builder: registers the entry of the same name from the family
    module's ``model_entries`` table, merged with what ``published.json`` says of it (as timm's
    ``register_model`` pairs an entrypoint with ``default_cfgs``)."""
    table = getattr(sys.modules[fn.__module__], "model_entries")
    entry = table[fn.__name__]
    record = _published().get(entry.name)
    register_entry(_with_published(entry, record) if record else entry, fn)
    return fn


def register_entry(entry: ModelEntry, builder: Callable[..., Any]) -> ModelEntry:
    """Adds ``entry`` with the function that builds it; names are unique."""
    if entry.name in _ENTRIES:
        raise ValueError(f"model {entry.name!r} is registered twice")
    if builder.__name__ != entry.name:
        raise ValueError(f"builder {builder.__name__!r} must be named like its entry {entry.name!r}")
    entry = replace(entry, builder=builder)
    _ENTRIES[entry.name] = entry
    return entry


def publish_record(name: str, record: Mapping[str, Any]) -> ModelEntry:
    """Makes ``record`` the published record of ``name`` in this process, as if read from
    ``published.json`` at import: ``scripts/publish.py`` writes the cards from it right after."""
    entry = _with_published(get_entry(name), record)
    _ENTRIES[name] = entry
    return entry


def iter_entries() -> Iterator[ModelEntry]:
    for name in sorted(_ENTRIES):
        yield _ENTRIES[name]


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str):
        raise TypeError(
            f"a model name is a str such as 'vgg16_cifar10_bin_calib', got {name!r}; "
            "qsnn_zoo.list_models() lists them."
        )
    try:
        return _ENTRIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=5, cutoff=0.4)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise UnknownModelError(
            f"Unknown model {name!r}.{hint} Run `qsnn-zoo list` or qsnn_zoo.list_models() for all names."
        ) from None


def list_models(pattern: str = "*", pretrained: bool = False) -> List[str]:
    """Registered names matching an fnmatch ``pattern``; ``pretrained=True`` keeps those with weights."""
    return [
        e.name
        for e in iter_entries()
        if fnmatch.fnmatchcase(e.name, pattern) and (e.has_weights or not pretrained)
    ]


def model_info(name: str) -> Mapping[str, Any]:
    """Everything the registry knows about ``name``, as plain data."""
    return get_entry(name).to_dict()
