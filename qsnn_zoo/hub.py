"""Where weights files come from, and proof that they are the published bytes.

Resolution order for an entry's weights:
1. an explicit ``weights=`` file or directory;
2. the directory named by ``$QSNN_ZOO_WEIGHTS``;
3. the repository's own ``checkpoints/`` folder (in a clone, and in torch.hub's copy of one), where a
   file over the repository's size limit is committed as parts (:mod:`qsnn_zoo.parts`) that are
   joined, checked, into ``CACHE/qsnn_zoo/joined/SHA256/`` (CACHE: ``cache_dir`` or huggingface_hub's);
4. the Hugging Face Hub, through ``huggingface_hub.hf_hub_download`` at the entry's pinned revision
   (its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and its progress bar).
A file that is the entry's published file has its full sha256 checked before use.

On the Hub an entry is a model repository (``qsnn-zoo push``, :mod:`qsnn_zoo.hub_repository`): the
published bytes as ``model.safetensors`` beside ``config.json`` and the card as ``README.md``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional, Union

from ._registry import ModelEntry

ENV_WEIGHTS_DIR = "QSNN_ZOO_WEIGHTS"
REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
# The names a Hub model repository gives its files, whatever the entry is called (as transformers and
# timm do), so that any repository loads the same way.
HUB_WEIGHTS_NAME = "model.safetensors"
HUB_CONFIG_NAME = "config.json"
PathLike = Union[str, Path]


class WeightsNotFoundError(FileNotFoundError):
    pass


class HashMismatchError(ValueError):
    pass


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_filename(entry: ModelEntry) -> str:
    """The published file name, or ``NAME.safetensors`` for an entry without published weights."""
    return entry.weights.filename if entry.weights else f"{entry.name}.safetensors"


def _file_in(directory: Path, filename: str) -> Optional[Path]:
    candidate = directory / filename
    return candidate if candidate.is_file() else None


def _in_directory(directory: Path, entry: ModelEntry) -> Optional[Path]:
    return _file_in(directory, weights_filename(entry))


def _explicit(entry: ModelEntry, weights: PathLike) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        # A downloaded Hub repository (`hf download REPO --local-dir DIR`) names its file model.safetensors.
        found = _in_directory(path, entry) or _file_in(path, HUB_WEIGHTS_NAME)
        if found is None:
            raise WeightsNotFoundError(
                f"{path} holds no {weights_filename(entry)} (nor a Hub repository's {HUB_WEIGHTS_NAME}) for {entry.name}."
            )
        return found
    if path.is_file():
        return path
    raise WeightsNotFoundError(f"weights path {path} does not exist.")


def _env_weights_dir() -> Optional[Path]:
    """The directory ``$QSNN_ZOO_WEIGHTS`` names, refused when it is not one: a mistyped path would
    otherwise be skipped in silence and other weights used."""
    value = os.environ.get(ENV_WEIGHTS_DIR)
    if not value:
        return None
    directory = Path(value).expanduser()
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise WeightsNotFoundError(
            f"${ENV_WEIGHTS_DIR} is {value}, which {what}; set it to a directory holding weights files, or unset it."
        )
    return directory


def _local_candidates(entry: ModelEntry) -> Iterator[Path]:
    env_dir = _env_weights_dir()
    if env_dir is not None:
        found = _in_directory(env_dir, entry)
        if found is not None:
            yield found
    found = _in_directory(REPO_CHECKPOINTS, entry)
    if found is not None:
        yield found


def _is_published_file(entry: ModelEntry, path: Path) -> bool:
    return entry.weights is not None and path.name == entry.weights.filename


def _verify(entry: ModelEntry, path: Path) -> Path:
    actual = sha256_of(path)
    if actual != entry.weights.sha256:
        raise HashMismatchError(
            f"{path} is not the published weights of {entry.name}: sha256 {actual}, expected "
            f"{entry.weights.sha256}. Delete or replace the file (or pass your own file under another name)."
        )
    return path


def _parts_directory(entry: ModelEntry) -> Optional[Path]:
    """The first local weights directory holding any part of ``entry``'s file, in resolution order."""
    for directory in (_env_weights_dir(), REPO_CHECKPOINTS):
        if directory is not None and any((directory / part.filename).is_file() for part in entry.weights.parts):
            return directory
    return None


def joined_path(entry: ModelEntry, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``entry``'s parts are joined: beside Hub downloads, so checkpoints/ stays as committed."""
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    return Path(cache_dir).expanduser() / "qsnn_zoo" / "joined" / entry.weights.sha256 / entry.weights.filename


def _join_local_parts(entry: ModelEntry, cache_dir: Optional[PathLike]) -> Optional[Path]:
    """``entry``'s file joined from its committed parts (or joined before and unchanged since); None
    when no part of it is here."""
    from .parts import join_parts  # parts writes through weights, which needs torch

    directory = _parts_directory(entry)
    if directory is None:
        return None
    w, dest = entry.weights, joined_path(entry, cache_dir)
    if dest.is_file() and dest.stat().st_size == w.size and sha256_of(dest) == w.sha256:
        return dest
    return join_parts([(directory / part.filename, part) for part in w.parts], dest, w.sha256, w.size)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> Optional[str]:
    """``$HF_ENDPOINT`` as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_download(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[PathLike]) -> Path:
    """One file of a Hub repository through huggingface_hub's cache, offline when ``HF_HUB_OFFLINE`` says so."""
    import huggingface_hub

    return Path(
        huggingface_hub.hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            cache_dir=cache_dir,
            library_name="qsnn-zoo",
            local_files_only=_offline(),
            endpoint=hub_endpoint(),
        )
    )


def _download(entry: ModelEntry, cache_dir: Optional[PathLike]) -> Path:
    # huggingface_hub.utils exports these names in 0.x, 1.x and 2.x alike. Since 1.0 both "not found"
    # errors derive from EntryNotFoundError, so the local (offline) one must be caught first.
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RevisionNotFoundError

    w = entry.weights
    if w.revision is None:
        raise WeightsNotFoundError(
            f"{w.filename} of {entry.name} is not on the Hub yet: it ships in the qsnn-zoo repository's "
            f"checkpoints/ folder, which this installation lacks. In a clone of the repository, set "
            f"{ENV_WEIGHTS_DIR}=CLONE/checkpoints (or run from the clone, or torch.hub.load it); or put "
            f"{w.filename} in any directory named by ${ENV_WEIGHTS_DIR}; or pass weights=PATH (a file or folder)."
        )
    supply = (
        f"put {w.filename} in a directory named by ${ENV_WEIGHTS_DIR}, or pass weights=DIR "
        f"(`hf download {w.hf_repo} --revision {w.revision} --local-dir DIR` fetches it where there is a network)"
    )
    try:
        path = hub_download(w.hf_repo, HUB_WEIGHTS_NAME, w.revision, cache_dir)
    except LocalEntryNotFoundError as err:
        raise WeightsNotFoundError(
            f"{entry.name}: no copy of {w.filename} is cached and the Hub cannot be reached "
            f"({'HF_HUB_OFFLINE is set' if _offline() else 'offline or unreachable'}). To supply it, {supply}."
        ) from err
    except (EntryNotFoundError, RevisionNotFoundError) as err:
        raise WeightsNotFoundError(
            f"{w.hf_repo}@{w.revision} has no file {HUB_WEIGHTS_NAME} for {entry.name}. Report this; meanwhile "
            f"{supply}."
        ) from err
    except OSError as err:  # a broken transfer (e.g. fewer bytes than announced) or an HTTP error
        reason = " ".join(str(err).split())
        raise WeightsNotFoundError(
            f"downloading {w.filename} of {entry.name} from {w.hf_repo}@{w.revision} failed: {reason} "
            f"Run again to retry, or {supply}."
        ) from err
    try:
        return _verify(entry, path)
    except HashMismatchError:
        _remove_from_cache(path)
        raise


def _remove_from_cache(path: Path) -> None:
    """Deletes a bad download (the snapshot link and the blob behind it) so the next call refetches."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def weights_location(entry: ModelEntry) -> str:
    """Where ``pretrained=True`` finds ``entry``'s weights when no local copy is given, in a few words."""
    if entry.weights is None:
        return "not committed" if entry.made_file else "no"
    if entry.weights.revision is None:
        return "checkpoints/ (clone)"
    return f"Hub {entry.weights.hf_repo}@{entry.weights.revision[:7]}"


def resolve_weights(
    entry: ModelEntry, weights: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None
) -> Path:
    """The local path of ``entry``'s weights, downloading them if needed (see module doc).

    An explicit ``weights`` path is the caller's own file (training writes ``NAME.safetensors`` too),
    so it is format-checked when loaded but not held to the published hash.
    """
    if weights is not None:
        return _explicit(entry, weights)
    for path in _local_candidates(entry):
        return _verify(entry, path) if _is_published_file(entry, path) else path
    if entry.weights is None:
        missing = (f"the weights file of {entry.name} is not committed ({entry.made_file.reason})" if entry.made_file
                   else f"{entry.name} has no published weights yet")
        raise WeightsNotFoundError(
            f"{missing}. Make them with `{entry.recipe}`, then pass "
            f"weights=PATH, or put {weights_filename(entry)} in ${ENV_WEIGHTS_DIR} or checkpoints/."
        )
    return _join_local_parts(entry, cache_dir) or _download(entry, cache_dir)
