"""Access to the shared, externally-authored SIP corpora (../shared/corpora)."""

from __future__ import annotations

import csv
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def manifest(folder: str) -> list[dict[str, str]]:
    path = CORPORA / folder / "manifest.tsv"
    if not path.exists():
        raise FileNotFoundError(f"corpus manifest missing: {path} (is ../shared beside the repo?)")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def read(folder: str, name: str) -> bytes:
    return (CORPORA / folder / name).read_bytes()
