"""Hugging Face `tokenizer.json` (BPE, WordPiece, Unigram, ...) through the `tokenizers` library.

A converted model directory carries the tokenizer it was trained with; this wraps it in the
project's interface. `encode` adds no special tokens (as every tokenizer here); the ids are the
ones transformers' fast tokenizer gives with add_special_tokens=False.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

HF_FILE = "hf_tokenizer.json"   # the HF file, next to our tokenizer.json that names the kind
EOS_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")


def is_hf_tokenizer_json(meta: dict) -> bool:
    """Whether a tokenizer.json mapping is Hugging Face's (it has a model, not our kind)."""
    return "kind" not in meta and isinstance(meta.get("model"), dict)


class HFTokenizer:
    kind = "hf"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer
        self.path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as error:  # the library raises a bare Exception for a bad file
            raise ValueError(f"{self.path}: not a Hugging Face tokenizer.json ({error})") from None
        self.tokenizer.no_padding()     # a file may ask for fixed-length rows: encode as is
        self.tokenizer.no_truncation()
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {token.content: i for i, token in
                               self.tokenizer.get_added_tokens_decoder().items() if token.special}
        self.eos_id = next((self.special_tokens[n] for n in EOS_NAMES if n in self.special_tokens),
                           None)
        if self.tokenizer.model.__class__.__name__ == "WordPiece":
            vocab = self.tokenizer.get_vocab(with_added_tokens=True)
            self.vocab = sorted(vocab, key=vocab.get)  # lets MLM mask whole words ("##")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / HF_FILE).write_bytes(self.path.read_bytes())
        meta = {"kind": self.kind, "file": HF_FILE, "vocab_size": self.vocab_size}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "HFTokenizer":
        directory = Path(directory)
        meta = json.loads((directory / "tokenizer.json").read_text())
        return cls(directory / ("tokenizer.json" if is_hf_tokenizer_json(meta) else HF_FILE))
