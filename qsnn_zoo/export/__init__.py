"""Export of registry entries for hardware: NIR graphs and integer deploy files (docs/export.md).

``nir`` is needed only to write NIR files (``pip install qsnn-zoo[nir]``); it is imported on use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .._builder import create_model
from .._registry import ModelEntry, get_entry
from .nir import ApproximateExportError, to_nir

FORMATS = ("nir", "deploy")
PathLike = Union[str, Path]

__all__ = ["FORMATS", "ApproximateExportError", "export_model", "hardware_section", "to_nir"]


def export_model(
    name: str,
    fmt: str,
    output: PathLike,
    weights: Optional[PathLike] = None,
    allow_approximate: bool = False,
    pretrained: Optional[bool] = None,
) -> Path:
    """Writes entry ``name`` as ``fmt`` ("nir" or "deploy") to ``output``, atomically.

    Weights: ``weights`` (a file or directory) if given; else the published weights, which an
    entry without any refuses unless ``pretrained=False`` asks for the random initialisation.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    from ..weights import atomic_write

    entry = get_entry(name)
    if weights is None and pretrained is None:
        if not entry.has_weights:
            raise ValueError(
                f"{name} has no published weights, and exporting random weights is rarely what you want. "
                f"Pass a trained file with --weights PATH (export_model(..., weights=PATH)), or "
                f"pretrained=False to export the random initialisation."
            )
        pretrained = True
    model = create_model(name, pretrained=bool(pretrained) and weights is None, weights=weights).eval()
    if fmt == "nir":
        from .nir import _nir

        graph = to_nir(model, allow_approximate=allow_approximate)
        atomic_write(output, lambda tmp: _nir().write(tmp, graph))
    else:
        from ..deploy import write_deploy

        write_deploy(model, output)
    return Path(output)


_NIR_EXACTNESS = {
    "lif": "exact: each LIF layer is a NIR `LIF` node (tau = dt / (1 - decay), r = tau / dt, v_leak = 0, "
    "v_reset = 0, fire on `>`), with dt = 1e-4 s per model step stored in the graph.",
    "tssl": "exact: each layer is a NIR `CubaLIF` node whose synapse carries the PSP filter of the layer "
    "before (tau_syn = tau_s dt, tau_mem = tau_m dt, r = tau_m, reset to 0 on `>`); pooling is "
    "`SumPool2d` + `Scale(1.1)`, the output PSP an `LI` node.",
    "if": "needs `--allow-approximate`: the soft-reset IF neuron is an integrator `I`, a `Threshold` and a "
    "`Scale(-threshold)` feedback edge, with the 0.5/T shift and calibration bias in the conv bias. "
    "The model fires on `>=`, NIR's `Threshold` on `>`; the file holds the next float below each "
    "threshold, which is exact when the graph is simulated in the file's float32, and differs only for "
    "potentials strictly between the two floats otherwise.",
}


def hardware_section(entry: ModelEntry) -> str:
    """The "Run it on hardware" section of a model card."""
    weights = "" if entry.has_weights else " --weights PATH"
    flag = " --allow-approximate" if entry.neuron.model == "if" else ""
    commands = "\n".join(
        [
            "pip install 'qsnn-zoo[nir]'",
            f"qsnn-zoo export {entry.name} --format nir -o {entry.name}.nir{weights}{flag}",
            f"qsnn-zoo export {entry.name} --format deploy -o {entry.name}.deploy.safetensors{weights}",
        ]
    )
    lines = [
        "## Run it on hardware",
        "",
        f"```bash\n{commands}\n```",
        "",
        f"- **NIR** ([neuroir.org](https://neuroir.org)): {_NIR_EXACTNESS[entry.neuron.model]}",
        "- **Deploy file**: a safetensors file with the whole network described in its JSON header (shapes, "
        "T, input scaling, neuron rule, threshold, reset, decoding) and the quantized weights as packed "
        "integer codes (1 bit binary, 2 bits ternary) with one fp32 scale per layer; fp32 layers as float32. "
        "`qsnn_zoo.deploy.predict(FILE, images)` is its pure-numpy reference simulator, tested to give the "
        "PyTorch model's predictions.",
        "- Byte layout, semantics and the exactness argument: [docs/export.md](../docs/export.md).",
    ]
    if entry.made_file:
        lines.append("- This entry's weights file is not committed: pass the file its recipe makes with `--weights`.")
    elif not entry.has_weights:
        lines.append("- This entry has no published weights yet: pass the file you trained with `--weights`.")
    return "\n".join(lines)
