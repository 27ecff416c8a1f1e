"""Finding and reading text files: bundled corpora by name, directories, UTF-8 or a fallback.

Kept apart from pipeline.py (which needs grain, and so JAX) so that commands that only read
files, such as `foundations prepare`'s parser, load without JAX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from foundations.config import ConfigError
from foundations.tokenizers.corpus import NEWLINES, normalize_newlines

BUNDLED_CORPORA = Path(__file__).parent / "corpora"


def resolve_path(name: str) -> Path:
    """A path as given (absolute or relative to the working directory), else a bundled corpus."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    bundled = BUNDLED_CORPORA / name
    if bundled.exists():
        return bundled
    raise ConfigError(f"data file {name!r} not found (looked in {Path.cwd()} and in the bundled "
                      f"corpora {BUNDLED_CORPORA})")


def expand_files(names: list[str], suffixes: tuple[str, ...] = (".txt",)) -> list[Path]:
    """Files as given; a directory stands for its files with these suffixes, in sorted order."""
    files = []
    for name in names:
        path = resolve_path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in suffixes)
            if not found:
                kinds = " or ".join(f"*{s}" for s in suffixes)
                raise ConfigError(f"data directory {path} holds no {kinds} files")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_text(path: Path, fallback_encoding: str = "",
              setting: str = "data.fallback_encoding", newlines: str = "normalize") -> str:
    """Reads a UTF-8 text file. A file that is not UTF-8 is refused with the offending byte
    offset, unless a fallback encoding (e.g. latin-1 for older Gutenberg texts) is configured
    (by `setting`, which the error names). With newlines="normalize" (data.newlines' default)
    \\r\\n and lone \\r become \\n; "keep" returns the text as the file has it."""
    if newlines not in NEWLINES:
        raise ConfigError(f"newlines={newlines!r}: expected one of {', '.join(NEWLINES)}")
    text = decode(path, path.read_bytes(), fallback_encoding, setting)
    return normalize_newlines(text) if newlines == "normalize" else text


def jsonl_records(path: Path, text: str, error: type[Exception] = ConfigError
                  ) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a JSONL file's `text`; a line that is not
    JSON raises `error` naming the file and the line."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}, line {number}: malformed JSON ({e.msg})") from None
        yield number, record


def decode(path: Path, data: bytes, fallback_encoding: str, setting: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if fallback_encoding:
            try:
                return data.decode(fallback_encoding)
            except (UnicodeDecodeError, LookupError) as e2:
                raise ConfigError(f"{path} is neither UTF-8 nor {fallback_encoding}: {e2}") from None
        raise ConfigError(f"{path} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r}"
                          f"); convert it (iconv -t utf-8) or set {setting}") from None
