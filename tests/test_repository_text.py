"""What the repository's text may cite and say.

Every citation of a section of a document under docs/ ("docs/method.md §B.4", "[method.md](method.md)
§F.1") names a section that exists, and nothing cites the method reference the documents replaced,
which the repository does not contain. Cards, the README, docs/, run records and published.json say
what ran, never how the work went.
"""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BINARY_SUFFIXES = (".safetensors", ".png", ".npz", ".pt")
SECTION_CITATION = re.compile(r"(?:docs/)?([\w-]+)\.md\)? §([A-Z](?:\.\d+)?)(?![\w.]*\d)")
HEADING = re.compile(r"^#{2,4} ([A-Z](?:\.\d+)?)[. ]", re.MULTILINE)
# Spelled with a character class so that this file does not match itself.
MISSING_REFERENCE = re.compile(r"\bS[P]EC\b")
PROCESS_TALK = re.compile(
    r"\bsessions?\b|\bleases?\b|\bdevice calls?\b|\btime ran out\b|\bGPU time\b|\bdevice time\b", re.IGNORECASE)


def tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but git's own
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    for name in names:
        path = REPO / name
        if path.is_file() and not name.endswith(BINARY_SUFFIXES):
            try:
                yield name, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


TEXT = dict(tracked_text_files())


def sections(document: str) -> set:
    path = REPO / "docs" / f"{document}.md"
    return set(HEADING.findall(path.read_text())) if path.is_file() else set()


def test_docs_sections_cited_anywhere_exist():
    dangling = [
        f"{name}: {document}.md §{section}"
        for name, text in TEXT.items()
        for document, section in SECTION_CITATION.findall(text)
        if section not in sections(document)
    ]
    assert not dangling, f"citations of docs sections that do not exist: {dangling[:10]}"


def test_method_document_numbers_what_the_code_cites():
    assert {"B.3", "B.5", "C.4", "D.2", "E.3", "E.4", "F.1", "F.6"} <= sections("method")


def test_nothing_cites_the_method_reference_the_repository_lacks():
    citing = [name for name, text in TEXT.items() if MISSING_REFERENCE.search(text)]
    assert not citing, f"these files cite a method reference the repository lacks (cite a section of docs/method.md): {citing}"


def _product_text():
    for name, text in TEXT.items():
        if (name.startswith(("model_cards/", "docs/")) or name in ("README.md", "qsnn_zoo/published.json")
                or (name.startswith("runs/") and name.endswith("README.md"))):
            yield name, text


@pytest.mark.parametrize("name", [name for name, _ in _product_text()])
def test_product_text_says_what_ran_not_how_the_work_went(name):
    words = sorted({m.group(0) for m in PROCESS_TALK.finditer(TEXT[name])})
    assert not words, f"{name} speaks of {words}: say what ran (command, commit, GPU, date, epochs) instead"
