"""Writes model_cards/NAME.md for every registry entry and the README's zoo table.

    python scripts/make_cards.py          # write every card and the table, remove cards of unregistered names
    python scripts/make_cards.py --check  # write nothing; exit 1 if any generated file is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qsnn_zoo import cards
from qsnn_zoo.weights import atomic_write


def write_all() -> None:
    for path, text in cards.expected_files().items():
        if not path.is_file() or path.read_text() != text:
            atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
            print(f"wrote {path.relative_to(cards.REPO_ROOT)}")
    for path in cards.orphan_cards():
        path.unlink()
        print(f"removed {path.relative_to(cards.REPO_ROOT)} (no registry entry)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if any generated file is stale")
    args = parser.parse_args()
    if not args.check:
        write_all()
        return 0
    stale = cards.stale_files()
    for path in stale:
        print(f"stale: {path.relative_to(cards.REPO_ROOT)}", file=sys.stderr)
    if stale:
        print("run `python scripts/make_cards.py` and commit the result", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
