"""A weights file committed to the git repository as byte-exact parts.

The repository commits no file over ``COMMIT_LIMIT_BYTES``; a published file larger than that is
stored in ``checkpoints/`` as ``NAME.safetensors.part1-of-N`` ... of at most ``PART_BYTES`` each.
The whole file's sha256 stays the entry's identity: :func:`join_parts` checks every part, then the
joined file, so a joined file is exactly the published one. On the Hub the file is one file.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from ._registry import FilePart
from .hub import HashMismatchError, WeightsNotFoundError, sha256_of
from .weights import atomic_write

COMMIT_LIMIT_BYTES = 50_000_000  # the largest file the repository commits (MB = 10^6 bytes, as in metrics)
PART_BYTES = 45_000_000  # the size of each part but the last, below the limit with room to spare
PathLike = Union[str, Path]


def part_name(filename: str, k: int, n: int) -> str:
    return f"{filename}.part{k}-of-{n}"


def split_bytes(data: bytes, filename: str, directory: PathLike, part_bytes: int = PART_BYTES) -> List[FilePart]:
    """Writes ``data``, the file ``filename``, as consecutive parts of at most ``part_bytes`` into
    ``directory``, each atomically."""
    directory = Path(directory)
    n = max(1, -(-len(data) // part_bytes))
    records = []
    for k in range(1, n + 1):
        chunk = data[(k - 1) * part_bytes:k * part_bytes]
        name = part_name(filename, k, n)
        atomic_write(directory / name, lambda tmp, chunk=chunk: Path(tmp).write_bytes(chunk))
        records.append(FilePart(name, hashlib.sha256(chunk).hexdigest(), len(chunk)))
    return records


def _check_part(path: Path, record: FilePart) -> None:
    if not path.is_file():
        raise WeightsNotFoundError(
            f"part {path} of a weights file is missing; restore it (in a clone: `git checkout -- "
            f"checkpoints/{record.filename}`) or pass weights=PATH of the whole file."
        )
    size = path.stat().st_size
    actual = sha256_of(path) if size == record.size else None
    if actual != record.sha256:
        found = f"sha256 {actual}" if actual else f"{size} bytes"
        raise HashMismatchError(
            f"part {path} is not the published part: {found}, expected {record.size} bytes with sha256 "
            f"{record.sha256}; restore it (in a clone: `git checkout -- checkpoints/{record.filename}`)."
        )


def join_parts(parts: Sequence[Tuple[PathLike, FilePart]], dest: PathLike, expected_sha256: str,
               expected_size: int) -> Path:
    """Checks each ``(path, record)`` part, then writes their concatenation to ``dest`` atomically and
    checks it is the whole published file; ``dest`` is never left holding anything else."""
    dest = Path(dest)
    for path, record in parts:
        _check_part(Path(path), record)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            for path, _ in parts:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        size, digest = Path(tmp).stat().st_size, sha256_of(tmp)
        if (digest, size) != (expected_sha256, expected_size):
            raise HashMismatchError(
                f"the parts of {dest.name} join to {size} bytes with sha256 {digest}, expected {expected_size} "
                f"bytes with sha256 {expected_sha256}; the part records disagree with the file's, so republish it."
            )

    atomic_write(dest, write)
    return dest
