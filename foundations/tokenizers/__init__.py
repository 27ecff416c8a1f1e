"""Tokenizers share one small interface; `load_tokenizer` turns a config string into one.

Every tokenizer has `encode(text) -> list[int]` (no special tokens added), `decode(ids) -> str`,
`vocab_size`, `special_tokens` (name -> id), and `save(directory)`. A saved tokenizer directory
holds `tokenizer.json` whose "kind" field says which class loads it; a Hugging Face
`tokenizer.json` (no "kind") loads as kind "hf" (the `tokenizers` library).
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Protocol, Sequence

from foundations.config import ConfigError
from foundations.tokenizers.byte import ByteTokenizer
from foundations.tokenizers.hf import is_hf_tokenizer_json

TOKENIZER_META = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int
    special_tokens: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> None: ...


def _loaders():
    """kind -> callable(directory) -> Tokenizer. Imported lazily so optional kinds cost nothing."""
    loaders = {"byte": ByteTokenizer.load}
    try:
        from foundations.tokenizers.hf import HFTokenizer
        loaders["hf"] = HFTokenizer.load
    except ImportError:
        pass
    try:
        from foundations.tokenizers.bpe import BPETokenizer
        loaders["bpe"] = BPETokenizer.load
    except ImportError:
        pass
    try:
        from foundations.tokenizers.spm import SentencePieceTokenizer
        loaders["spm"] = SentencePieceTokenizer.load
    except ImportError:
        pass
    try:
        from foundations.tokenizers.wordpiece import WordPieceTokenizer
        loaders["wordpiece"] = WordPieceTokenizer.load
    except ImportError:
        pass
    return loaders


def load_tokenizer(spec: str) -> Tokenizer:
    """`"byte"` gives the byte-level tokenizer; anything else is a directory written by `save`."""
    if spec == "byte":
        return ByteTokenizer()
    directory = Path(spec)
    meta_file = directory / TOKENIZER_META
    if not meta_file.is_file():
        raise ValueError(
            f"tokenizer {spec!r}: expected 'byte' or a directory holding {TOKENIZER_META} "
            f"(made by `foundations tokenize train`); {meta_file} does not exist")
    try:
        meta = json.loads(meta_file.read_text())
        kind = "hf" if is_hf_tokenizer_json(meta) else meta["kind"]  # a transformers directory
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"tokenizer {spec!r}: {meta_file} is not a JSON object with a "
                         f"\"kind\" field ({error!r})") from None
    loaders = _loaders()
    if kind not in loaders:
        raise ValueError(f"tokenizer {spec!r}: unknown kind {kind!r}; known: {sorted(loaders)}")
    return loaders[kind](directory)


def configured_tokenizer(spec: str, setting: str = "data.tokenizer") -> Tokenizer:
    """`load_tokenizer(spec)`, with a missing or broken tokenizer directory reported as a
    ConfigError naming the setting (one line from the CLI)."""
    try:
        return load_tokenizer(spec)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{setting}: {e}") from None


def same_tokenizer(spec: str, kept: Path) -> bool:
    """Whether tokenizer `spec` ("byte" or a directory) is the one saved in directory `kept`
    (a run's or a prepared corpus's copy): every file of the copy, byte for byte."""
    kept = Path(kept)
    if not kept.is_dir():
        return False
    if spec == "byte":
        saved = kept / TOKENIZER_META
        return saved.is_file() and json.loads(saved.read_text()).get("kind") == "byte"
    names = sorted(p.name for p in kept.iterdir())
    if not names or not Path(spec).is_dir():
        return False
    _, differ, missing = filecmp.cmpfiles(spec, kept, names, shallow=False)
    return not differ and not missing
