"""Reading training text: every trainer goes through `read_text_file`, so bad input fails the same way.

A file that is not UTF-8 is an error naming the file and the byte offset, never silently skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator


def read_text_file(path: str | Path) -> str:
    """The whole file as text; raises FileNotFoundError or ValueError (with the byte offset)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"training file {str(path)!r} is not valid UTF-8: byte offset {error.start} "
            f"(0x{data[error.start]:02x}) {error.reason}") from None


def read_text_files(paths: Iterable[str | Path]) -> Iterator[str]:
    """Each file's text in turn; at least one file is required."""
    paths = list(paths)
    if not paths:
        raise ValueError("no training files given")
    for path in paths:
        yield read_text_file(path)
