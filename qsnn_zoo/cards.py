"""Model cards (``model_cards/NAME.md``) and the README's zoo table, generated from the registry.

A card is the Hugging Face front matter followed by :data:`SECTIONS`, each a function
``(entry) -> str`` (an empty string leaves the section out); a new section is one more function in
that list. Output depends only on the registry and the repository's files, never on the date, so
``scripts/make_cards.py --check`` can tell whether a committed card is stale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

from ._registry import ModelEntry, get_entry, iter_entries
from .export import hardware_section
from .metrics import LOSSLESS_ROWS, MB, entry_weight_memory, measured_top1
from .models._common import default_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent
CARDS_DIR = "model_cards"
RUNS_DIR = "runs"
README = "README.md"
TABLE_START = "<!-- zoo-table:start -->"
TABLE_END = "<!-- zoo-table:end -->"
HUB_REPO = "qsnn-zoo/qsnn-zoo"  # GitHub repository for torch.hub.load; a placeholder until published

METHOD_NAMES = {"calib": "SNN-Calibration", "stbp": "STBP", "tsslbp": "TSSL-BP"}
METHOD_TAGS = {"calib": "snn-calibration", "stbp": "stbp", "tsslbp": "tssl-bp"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
KIND_WORDS = {"fp32": "full-precision (fp32)", "bin": "binary", "ter": "ternary"}
METRIC_MEANINGS = {
    "top1": "top-1 of the published model as `create_model(..., pretrained=True)` builds it (the SNN, at the entry's T)",
    "top1_ann": "top-1 of the ANN form of the same weights (`model.set_mode(\"ann\")`), before conversion",
    "top1_fp32_weights": "top-1 of the same network with its fp32 weights, before the float16 re-save that is published",
    "top1_cpu": "top-1 of the published model recomputed on the CPU (reference backend); CPU and GPU convolutions "
    "round differently, which can flip a few spikes over T steps",
}
# An entry whose measured file is not committed has no `pretrained=True` model for "top1" to be of.
MADE_FILE_TOP1 = ("top-1 of the file the recipe made (the sha256 above), loaded with `create_model(..., weights=PATH)` "
                  "(the SNN, at the entry's T)")
NEURON_NAMES = {"if": "integrate-and-fire (IF)", "lif": "leaky integrate-and-fire (LIF)", "tssl": "TSSL-BP spike-response neuron"}


def _fence(language: str, code: str) -> str:
    return f"```{language}\n{code.strip()}\n```"


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bits(entry: ModelEntry) -> str:
    return {None: "32", "bin": "1", "ter": "1.6"}[entry.quant.mode]


def _bytes(size: int) -> str:
    return f"{size:,} bytes = {size / MB:.2f} MB"


def _make_command(entry: ModelEntry) -> str:
    """The recipe that made the entry's measured file, and the full one (docs/method.md) when that differs."""
    full = default_recipe(entry.name)
    return f"`{full}`" if entry.recipe == full else f"`{entry.recipe}` (`{full}` runs the full recipe)"


def _training_plots(entry: ModelEntry) -> List[Path]:
    return sorted((REPO_ROOT / RUNS_DIR / entry.name).glob("*.png"))


# ---------------------------------------------------------------- front matter

def _model_index(entry: ModelEntry) -> List[dict]:
    results = []
    for data in dict.fromkeys(m.data for m in entry.metrics):
        metrics = [
            {"type": "accuracy", "value": m.value, "name": f"{m.name} accuracy ({m.rows} images)"}
            for m in entry.metrics
            if m.data == data
        ]
        results.append(
            {
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"type": entry.dataset, "name": data, "split": "test"},
                "metrics": metrics,
            }
        )
    return [{"name": entry.name, "results": results}] if results else []


def card_metadata(entry: ModelEntry) -> dict:
    """Hugging Face metadata; ``model-index`` holds measured results only, and only if there are any."""
    tags = ["snn", "spiking-neural-network"]
    tags += ["quantization", f"{KIND_WORDS[entry.weight_kind]}-weights", "cbp-qsnn"] if entry.quant.mode else ["fp32"]
    tags += [METHOD_TAGS[entry.method], entry.dataset, "image-classification"]
    meta = {
        "library_name": "qsnn-zoo",
        "license": entry.license,
        "pipeline_tag": "image-classification",
        "tags": tags,
        "datasets": [entry.dataset],
    }
    index = _model_index(entry)
    if index:
        meta["model-index"] = index
    return meta


def front_matter(entry: ModelEntry, meta: Optional[dict] = None) -> str:
    meta = card_metadata(entry) if meta is None else meta
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---"


def hub_base_model(entry: ModelEntry) -> Optional[str]:
    """The Hub repository of ``entry``'s fp32 parent, once the parent is pushed: the Hub accepts only an
    existing model as ``base_model``, so push parents first."""
    parent = get_entry(entry.parent) if entry.parent else None
    if parent is None or parent.weights is None or parent.weights.revision is None:
        return None
    return parent.weights.hf_repo


# ---------------------------------------------------------------- sections

def _overview_head(entry: ModelEntry) -> List[str]:
    kind = KIND_WORDS[entry.weight_kind]
    lines = [
        f"# {entry.name}",
        "",
        entry.description,
        "",
        f"- Weights: {kind}; method: {METHOD_NAMES[entry.method]}; data: {DATASET_NAMES[entry.dataset]} "
        f"({entry.num_classes} classes), input {'x'.join(map(str, entry.input_size))}; T = {entry.T} timesteps.",
    ]
    if entry.parent:
        lines.append(f"- Quantized from the fp32 parent [{entry.parent}]({entry.parent}.md) with CBP (constrained backpropagation).")
    return lines


def overview(entry: ModelEntry) -> str:
    lines = _overview_head(entry)
    if entry.made_file:
        made = entry.made_file
        lines.append(
            f"- **The weights file is not committed**: {made.reason}. The results below were measured on the "
            f"{made.dtype} file that the recipe made: {made.size:,} bytes, sha256 `{made.sha256}`. Make it with "
            f"{_make_command(entry)}, then load it with `create_model(\"{entry.name}\", weights=PATH)`; a file "
            f"with that sha256 is the one measured here."
        )
    elif entry.weights is None:
        lines.append(
            f"- **No published weights yet.** Make them with `{entry.recipe}`, then load them with "
            f"`create_model(\"{entry.name}\", weights=PATH)`."
        )
    elif entry.weights.revision is None:
        lines.append(f"- Weights: `{entry.weights.filename}` ({entry.weights.size:,} bytes, sha256 "
                     f"`{entry.weights.sha256}`) in the repository's `checkpoints/` folder; not yet uploaded to "
                     f"the Hub repository {entry.weights.hf_repo}.{_committed_parts(entry)}")
    else:
        lines.append(f"- Weights: `{entry.weights.filename}` ({entry.weights.size:,} bytes, sha256 `{entry.weights.sha256}`), "
                     f"as `model.safetensors` of [{entry.weights.hf_repo}](https://huggingface.co/{entry.weights.hf_repo}) "
                     f"at revision `{entry.weights.revision}`.{_committed_parts(entry)}")
    return "\n".join(lines)


def _committed_parts(entry: ModelEntry) -> str:
    parts = entry.weights.parts
    if not parts:
        return ""
    largest = max(part.size for part in parts) / MB
    return (f" The repository commits it as {len(parts)} parts of at most {largest:.3g} MB "
            f"(`checkpoints/{parts[0].filename}` ...), which the library joins and checks against this sha256.")


def settings(entry: ModelEntry) -> str:
    n, q = entry.neuron, entry.quant
    rows = [
        ["timesteps T", str(entry.T)],
        ["neuron model", NEURON_NAMES.get(n.model, n.model)],
        ["threshold", str(n.threshold)],
        ["reset", {"soft": "soft (subtract the threshold)", "hard": "hard (to zero)"}.get(n.reset, n.reset)],
        ["spike condition", f"potential {n.comparison} threshold"],
    ]
    optional = [
        ("potential decay per step", n.decay),
        ("membrane time constant tau_m (steps)", n.tau_m),
        ("synaptic time constant tau_s (steps)", n.tau_s),
        ("input shift", None if n.shift is None else f"threshold x {n.shift} / T added to the input current every step"),
    ]
    rows += [[name, str(value)] for name, value in optional if value is not None]
    rows += [
        ["initial potential", n.initial_potential],
        ["surrogate gradient", n.surrogate],
        ["input encoding", n.encoding],
        ["output decoding", n.decoding],
        ["input normalisation", f"mean {list(entry.mean)}, std {list(entry.std)} (after scaling pixels to [0, 1])"],
        ["weights", KIND_WORDS[entry.weight_kind]],
        ["bits per quantized weight", "-" if q.bits is None else f"{q.bits:g}" + (" (base-3 packing, 5 a byte)" if q.mode == "ter" else "")],
        ["quantized layers", ", ".join(q.quantized_layers) or "none"],
        ["full-precision layers", ", ".join(q.full_precision_layers)],
    ]
    if q.mode:
        rows += [["scale rule", q.scale], ["quantizer gradient", q.gradient]]
    rows.append(["constructor arguments", ", ".join(f"{k}={v!r}" for k, v in entry.arch_kwargs)])
    return "## Every setting\n\n" + _table(["setting", "value"], rows)


def memory(entry: ModelEntry) -> str:
    m = entry_weight_memory(entry.name)
    rows = [
        ["quantized weights", f"{m['quantized_weights']:,}", _bits(entry) if entry.quant.mode else "-"],
        ["full-precision weights", f"{m['full_precision_weights']:,}", "32"],
        ["biases and scales", f"{m['biases'] + m['scales']:,}", "32"],
    ]
    lines = [
        "## Memory",
        "",
        "Computed from the model (`qsnn_zoo.metrics.weight_memory`); MB = 10^6 bytes.",
        "",
        _table(["values", "count", "bits each"], rows),
        "",
        f"- Weights: {m['weight_bits']:,.0f} bits = {m['weight_bytes']:,.0f} bytes = {m['weight_mb']:.2f} MB "
        f"({100 * m['fraction_of_fp32']:.2f} % of the same weights in fp32, {m['fp32_weight_mb']:.2f} MB).",
    ]
    if entry.quant.mode == "ter":
        lines.append(f"- With ternary weights at 2 bits each (docs/method.md §A.3's table): {m['weight_mb_2bit_ternary']:.2f} MB.")
    lines.append(f"- With biases and per-layer scales: {m['total_bytes']:,.0f} bytes = {m['total_mb']:.2f} MB.")
    if entry.weights is not None:
        lines.append(f"- Weights file on disk: {_bytes(entry.weights.size)}.")
    elif entry.made_file:
        lines.append(f"- Weights file the recipe made ({entry.made_file.dtype}, not committed): {_bytes(entry.made_file.size)}.")
    return "\n".join(lines)


def usage(entry: ModelEntry) -> str:
    name = entry.name
    python = f"""
import qsnn_zoo
model = qsnn_zoo.create_model("{name}", pretrained=True).eval()
scores = model(images)  # images: float [B, 3, 32, 32], normalised as above; scores: [B, {entry.num_classes}]
"""
    hub = f"""
import torch
model = torch.hub.load("{HUB_REPO}", "{name}", pretrained=True)
"""
    timm = f"""
import timm
import qsnn_zoo  # registers the zoo's models with timm
model = timm.create_model("{name}", pretrained=True)
"""
    cli = f"qsnn-zoo eval {name}" + ("" if entry.dataset == "cifar10" else " --data DIR") + f"\nqsnn-zoo predict {name} image.png"
    lines = ["## Use it", ""]
    if entry.weights is None:
        missing = "this entry's file is not committed: make it" if entry.made_file else "this entry has none yet: make them"
        lines += [
            f"`pretrained=True` needs published weights, and {missing} with "
            f"`python scripts/reproduce.py {name}` and pass `weights=PATH` instead (CLI: `--weights PATH`).",
            "",
        ]
    lines += [_fence("python", python), "", _fence("python", hub), "", _fence("python", timm), "", _fence("bash", cli)]
    return "\n".join(lines)


def _metric_meaning(entry: ModelEntry, name: str) -> str:
    return MADE_FILE_TOP1 if entry.made_file and name == "top1" else METRIC_MEANINGS.get(name, name)


def results(entry: ModelEntry) -> str:
    lines = ["## Results", ""]
    if entry.metrics:
        rows = [[m.name, f"{m.value:.2f} %", m.data, str(m.rows), f"`{m.source}`"] for m in entry.metrics]
        lines += [_table(["metric", "value", "measured on", "images", "produced by"], rows), ""]
        names = dict.fromkeys(m.name for m in entry.metrics)
        lines += [f"- `{name}`: {_metric_meaning(entry, name)}" for name in names] + [""]
    else:
        lines += ["No measured results yet" + (": there are no published weights." if entry.weights is None else "."), ""]
    lines.append(f"Paper claim: {entry.paper_claim}")
    return "\n".join(lines)


def parent_comparison(entry: ModelEntry) -> str:
    """Child against parent on the same test rows: the paired comparison that CBP-QSNN's claim is about."""
    if not entry.parent:
        return ""
    parent = get_entry(entry.parent)
    rows = []
    for row_set, label in (("all", "all 10,000 rows"), ("lossless", "1,017 lossless rows")):
        child, base = measured_top1(entry, row_set), measured_top1(parent, row_set)
        if child is not None and base is not None:
            rows.append([label, f"{base:.2f} %", f"{child:.2f} %", f"{child - base:+.2f}"])
    if not rows:
        return ""
    return "\n".join([
        "## Against its fp32 parent",
        "",
        f"Top-1 of this model and of [{parent.name}]({parent.name}.md) as published, on the same test rows. The "
        "paper's claim is a drop below 1 point; the all-rows difference is the paired comparison (more images), "
        "the lossless-row one is beside it.",
        "",
        _table(["test rows", "parent", "this model", "difference (points)"], rows),
    ])


def reproduce(entry: ModelEntry) -> str:
    full = default_recipe(entry.name)
    if entry.recipe == full:
        lines = ["## Reproduce", "", _fence("bash", entry.recipe), ""]
    else:
        made = "The measured file (not committed) was made with:" if entry.made_file else "The published weights were made with:"
        lines = ["## Reproduce", "", made, "", _fence("bash", entry.recipe), ""]
        lines += [f"- {note}" for note in entry.training_notes]
        lines += ["", "The full recipe, the original's schedule ([docs/method.md](../docs/method.md)):", "", _fence("bash", full), ""]
    if entry.parent:
        lines.append(f"It starts from the weights of [{entry.parent}]({entry.parent}.md).")
    lines.append("Every step and setting is described in [docs/reproduce.md](../docs/reproduce.md).")
    return "\n".join(lines)


def training_curves(entry: ModelEntry) -> str:
    plots = _training_plots(entry)
    if not plots:
        return ""
    lines = ["## Training curves", ""]
    lines += [f"![{p.stem}](../{RUNS_DIR}/{entry.name}/{p.name})" for p in plots]
    return "\n".join(lines)


def limitations(entry: ModelEntry) -> str:
    items = []
    if entry.dataset == "cifar10":
        items.append(
            "Accuracy was measured on an offline copy of CIFAR-10 whose test rows 0-1016 are lossless and the rest "
            "JPEG recompressions: the lossless-row accuracy estimates canonical CIFAR-10 test accuracy (standard "
            "error about 0.8 points), the all-row accuracy is a lower bound. Both are reported, named as such."
        )
    else:
        items.append(
            "CIFAR-100 was not available where the zoo was built, so nothing was measured on it; evaluate on your own "
            "copy with `qsnn-zoo eval " + entry.name + " --data DIR` (torchvision's `cifar-100-python`)."
        )
    items.append(
        f"The model expects 32x32 RGB images normalised with the mean/std above; it was trained on "
        f"{DATASET_NAMES[entry.dataset]} only."
    )
    if entry.quant.mode:
        items.append(
            "Not every layer is quantized: " + ", ".join(entry.quant.full_precision_layers)
            + " stay in fp32, so hardware needs a full-precision datapath for them."
        )
    items.append("The first layer receives analog currents, not spikes: `qsnn-zoo eval` reports its work as "
                 "dense multiply-accumulates, separately from the synaptic operations of the spiking layers.")
    return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items)


def citation(entry: ModelEntry) -> str:
    return "## Citation\n\n" + _fence("bibtex", entry.citation)


SECTIONS: List[Callable[[ModelEntry], str]] = [
    overview,
    settings,
    memory,
    usage,
    results,
    parent_comparison,
    reproduce,
    hardware_section,
    training_curves,
    limitations,
    citation,
]


def render_card(entry: ModelEntry) -> str:
    parts = [front_matter(entry)] + [section(entry) for section in SECTIONS]
    return "\n\n".join(p for p in parts if p) + "\n"


def _hub_overview(entry: ModelEntry) -> str:
    w = entry.weights
    return "\n".join(_overview_head(entry) + [
        f"- Weights: `model.safetensors` of this repository, the registry's `{w.filename}` ({w.size:,} bytes, "
        f"sha256 `{w.sha256}`); qsnn-zoo downloads it at the commit that added it, which its registry pins."
    ])


def hub_card(entry: ModelEntry) -> str:
    """The card as the README.md of the entry's Hub repository (``qsnn-zoo push``): the front matter names
    the parent's repository as ``base_model``, and the weights line this repository's file, since the
    commit that adds the card cannot name its own hash."""
    meta = card_metadata(entry)
    base_model = hub_base_model(entry)
    if base_model:
        meta.update(base_model=base_model, base_model_relation="quantized")
    sections = [_hub_overview if section is overview else section for section in SECTIONS]
    parts = [front_matter(entry, meta)] + [section(entry) for section in sections]
    return "\n\n".join(p for p in parts if p) + "\n"


def saved_model_card(entry: ModelEntry, T: int) -> str:
    """README.md of a folder that ``save_pretrained`` writes: the entry's metadata without its results,
    which are the published model's and not necessarily this one's."""
    meta = {key: value for key, value in card_metadata(entry).items() if key != "model-index"}
    if entry.weights is not None and entry.weights.revision is not None:
        meta["base_model"] = entry.weights.hf_repo
    body = f"""
# {entry.name} (saved with qsnn-zoo)

A {KIND_WORDS[entry.weight_kind]} spiking network with the architecture of the qsnn-zoo entry `{entry.name}`
({METHOD_NAMES[entry.method]}, {entry.num_classes} classes, T = {T} timesteps), saved with `save_pretrained`.
`config.json` holds every setting needed to rebuild it; `model.safetensors` holds its weights in qsnn-zoo's
packed format. It expects 32x32 RGB images scaled to [0, 1] and normalised with mean {list(entry.mean)} and
std {list(entry.std)}.

{_fence("python", 'import qsnn_zoo' + chr(10) + 'model = qsnn_zoo.from_pretrained("OWNER/REPO")  # or the local folder')}
"""
    return front_matter(entry, meta) + "\n" + body


# ---------------------------------------------------------------- README table

def zoo_table() -> str:
    rows = []
    for e in iter_entries():
        size = entry_weight_memory(e.name)["weight_mb"]
        rows.append([
            f"[{e.name}]({CARDS_DIR}/{e.name}.md)",
            str(e.T),
            _bits(e),
            f"{size:.2f} MB" + (" (not committed)" if e.made_file else ""),
            _percent(measured_top1(e, "lossless")),
            _percent(measured_top1(e, "all")),
            e.paper_claim,
        ])
    header = ["model", "T", "bits", "weights", f"top-1 % ({LOSSLESS_ROWS})", "top-1 % (all rows)", "paper claim"]
    return _table(header, rows)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def with_zoo_table(readme: str) -> str:
    """``readme`` with the text between the zoo-table markers replaced by :func:`zoo_table`."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{README} needs the markers {TABLE_START} and {TABLE_END}, in that order, around the zoo table")
    return readme[: start + len(TABLE_START)] + "\n" + zoo_table() + "\n" + readme[end:]


# ---------------------------------------------------------------- files

def expected_files() -> Dict[Path, str]:
    """Every generated file of the repository with the text it must have."""
    files = {REPO_ROOT / CARDS_DIR / f"{e.name}.md": render_card(e) for e in iter_entries()}
    files[REPO_ROOT / README] = with_zoo_table((REPO_ROOT / README).read_text())
    return files


def orphan_cards() -> List[Path]:
    """Cards of names that are not in the registry any more."""
    names = {e.name for e in iter_entries()}
    return sorted(p for p in (REPO_ROOT / CARDS_DIR).glob("*.md") if p.stem not in names)


def stale_files() -> List[Path]:
    """Generated files that are missing, out of date, or (cards) of unregistered names."""
    stale = [p for p, text in expected_files().items() if not p.is_file() or p.read_text() != text]
    return stale + orphan_cards()
