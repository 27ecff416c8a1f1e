"""Reading training text: every trainer goes through `read_text_file`, so bad input fails the same way.

A file that is not UTF-8 is an error naming the file and the byte offset, never silently skipped.
Line endings are normalised to \\n unless told to keep them, as data.newlines does for training text.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

NEWLINES = ("keep", "normalize")


def normalize_newlines(text: str) -> str:
    """Windows (\\r\\n) and old Mac (lone \\r) line endings as \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


@contextlib.contextmanager
def with_newlines(paths: Iterable[str | Path], newlines: str = "normalize") -> Iterator[list[str]]:
    """The files as a trainer should read them. With "normalize", each file holding a \\r is
    replaced by a normalised copy in a scratch directory that lives for the block (SentencePiece
    reads its input files itself, so the text cannot simply be passed on); "keep" gives them as is."""
    if newlines not in NEWLINES:
        raise ValueError(f"newlines={newlines!r}: expected one of {', '.join(NEWLINES)}")
    paths = [str(path) for path in paths]
    with tempfile.TemporaryDirectory() as scratch:
        result = []
        for number, path in enumerate(paths):
            text = read_text_file(path)
            if newlines == "normalize" and "\r" in text:
                copy = Path(scratch) / f"{number}-{Path(path).name}"
                copy.write_text(normalize_newlines(text), encoding="utf-8")
                path = str(copy)
            result.append(path)
        yield result
