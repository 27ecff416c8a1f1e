"""The byte-level tokenizer: ids 0..255 are the UTF-8 bytes, then a few special tokens.

Nothing to train, every string round-trips, and the vocabulary is tiny: the default for first runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


class ByteTokenizer:
    kind = "byte"

    def __init__(self):
        self.special_tokens = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.eos_id = self.special_tokens["<|endoftext|>"]
        self.pad_id = self.special_tokens["<|pad|>"]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes are joined then decoded; an incomplete UTF-8 sequence becomes U+FFFD."""
        names = {i: name for name, i in self.special_tokens.items()}
        out, pending = [], bytearray()
        for i in map(int, ids):
            if i < 256:
                pending.append(i)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            out.append(names.get(i, ""))
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(json.dumps({"kind": self.kind}))

    @classmethod
    def load(cls, directory: str | Path) -> "ByteTokenizer":
        return cls()
