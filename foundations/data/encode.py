"""Tokenizing in `foundations prepare`'s worker processes: a module that imports only the
tokenizers, so that each spawned worker starts in a fraction of a second."""

from __future__ import annotations

import numpy as np

from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.byte import ByteTokenizer

_tokenizer = None


def start_worker(spec: str) -> None:
    global _tokenizer
    _tokenizer = load_tokenizer(spec)


def encode_array(tokenizer, text: str) -> np.ndarray:
    """A document's ids as int32 (the byte tokenizer's straight from the UTF-8 bytes)."""
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    return np.asarray(tokenizer.encode(text), dtype=np.int32)


def encode_task(texts: list[str]) -> list[np.ndarray]:
    """One task's documents, tokenized by this worker's tokenizer."""
    return [encode_array(_tokenizer, text) for text in texts]
