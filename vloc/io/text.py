"""Line-oriented text files: blank lines and ``#`` comments skipped, errors carry ``path:line``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator


def data_lines(path: Path | str, what: str) -> Iterator[tuple[str, list[str]]]:
    """Yield ``("path:lineno", fields)`` for each data line of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} does not exist")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield f"{path}:{lineno}", fields


def parse_floats(fields: list[str], where: str) -> list[float]:
    try:
        return [float(x) for x in fields]
    except ValueError:
        raise ValueError(f"{where}: expected numbers, got {' '.join(fields)!r}") from None
