"""Text files -> token ids, with no grain: the tokenized corpus a run trains and validates on.

`data/pipeline.py` cuts these tokens into batches; `data/shards.py` serves prepared shards as
the same `TextData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundations.config import ConfigError, DataConfig
from foundations.data.files import expand_files, read_text
from foundations.tokenizers import Tokenizer, configured_tokenizer


@dataclass
class TextData:
    tokenizer: Tokenizer
    train_tokens: np.ndarray   # or a lazy ShardTokens (data.shards), a list of them (mixture)
    val_tokens: np.ndarray
    bytes_per_token: float   # UTF-8 bytes per token, for bits-per-byte


def tokenize_files(files: list[Path], tokenizer: Tokenizer, fallback_encoding: str = "",
                   newlines: str = "normalize") -> tuple[np.ndarray, int]:
    """All files' tokens, one end-of-text id after each file; also the count of UTF-8 bytes."""
    eos = getattr(tokenizer, "eos_id", None)
    pieces, n_bytes = [], 0
    for path in files:
        text = read_text(path, fallback_encoding, newlines=newlines)
        n_bytes += len(text.encode("utf-8"))
        pieces.append(np.asarray(tokenizer.encode(text), dtype=np.int32))
        if eos is not None:
            pieces.append(np.array([eos], dtype=np.int32))
    return np.concatenate(pieces), n_bytes



def load_text_files(cfg: DataConfig) -> TextData:
    """Reads and tokenizes the configured files and splits off validation data."""
    tokenizer = configured_tokenizer(cfg.tokenizer)
    fallback = cfg.fallback_encoding
    train, train_bytes = tokenize_files(expand_files(cfg.train_files), tokenizer, fallback,
                                        cfg.newlines)
    if cfg.val_files:
        val, val_bytes = tokenize_files(expand_files(cfg.val_files), tokenizer, fallback,
                                        cfg.newlines)
        bytes_per_token = val_bytes / len(val)
    else:
        bytes_per_token = train_bytes / len(train)
        split = int(len(train) * (1 - cfg.val_fraction))
        train, val = train[:split], train[split:]
    for name, tokens in (("training", train), ("validation", val)):
        if len(tokens) < cfg.seq_len + 1:
            raise ConfigError(f"{name} data has {len(tokens)} tokens, fewer than one window of "
                              f"data.seq_len + 1 = {cfg.seq_len + 1}")
    return TextData(tokenizer, train, val, bytes_per_token)


def document_eos(cfg: DataConfig, tokenizer: Tokenizer) -> int | None:
    """The end-of-text id that separates documents when data.document_masks is set."""
    if not cfg.document_masks:
        return None
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise ConfigError("data.document_masks needs a tokenizer with an end-of-text token")
    return eos
