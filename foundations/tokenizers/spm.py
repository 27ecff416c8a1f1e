"""SentencePiece tokenizers (the `sentencepiece` library): load any `.model`, or train BPE / unigram.

Loads e.g. LLaMA's model (BPE, byte fallback, dummy prefix) as is. `encode` adds no BOS/EOS.
Training defaults keep text exactly (identity normalization, whitespace kept, byte fallback on),
so decode(encode(x)) == x for any text without the "▁" meta symbol (U+2581).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece

from foundations.tokenizers.corpus import read_text_file

MODEL_FILE = "tokenizer.model"


class SentencePieceTokenizer:
    """A thin wrapper over `sentencepiece.SentencePieceProcessor` with the project's interface."""

    kind = "spm"

    def __init__(self, model_file: str | Path | None = None, *, model_proto: bytes | None = None):
        if (model_file is None) == (model_proto is None):
            raise ValueError("give exactly one of model_file and model_proto")
        if model_file is not None:
            path = Path(model_file)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model {str(path)!r} does not exist")
            model_proto = path.read_bytes()
        source = str(model_file) if model_file is not None else "model_proto"
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as error:
            raise ValueError(f"{source!r} is not a valid SentencePiece model: {error}") from None
        self.model_proto = model_proto
        self.vocab_size = self.processor.get_piece_size()
        self.special_tokens = {}
        for special_id in (self.processor.unk_id(), self.processor.bos_id(),
                           self.processor.eos_id(), self.processor.pad_id()):
            if special_id >= 0:
                self.special_tokens[self.processor.id_to_piece(special_id)] = special_id
        eos = self.processor.eos_id()
        self.eos_id = eos if eos >= 0 else None
        self.bos_id = self.processor.bos_id() if self.processor.bos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        """Piece ids for `text`, without BOS/EOS."""
        return self.processor.encode(text, out_type=int, add_bos=False, add_eos=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.processor.id_to_piece(int(i))

    def save(self, directory: str | Path) -> None:
        """Write the model as tokenizer.model next to tokenizer.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(self.model_proto)
        meta = {"kind": self.kind, "model_file": MODEL_FILE, "vocab_size": self.vocab_size}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "SentencePieceTokenizer":
        return cls(Path(directory) / MODEL_FILE)

    @classmethod
    def train(cls, files: Iterable[str | Path], vocab_size: int, model_type: str = "bpe",
              byte_fallback: bool = True, character_coverage: float = 0.9995,
              split_digits: bool = True, num_threads: int = 2,
              **options) -> "SentencePieceTokenizer":
        """Train a BPE or unigram model on UTF-8 text files (checked first: bad bytes are named).

        Extra keyword options go straight to `SentencePieceTrainer.train`.
        """
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', not {model_type!r}")
        files = [str(path) for path in files]
        if not files:
            raise ValueError("no training files given")
        for path in files:
            read_text_file(path)  # raises with the file name and byte offset
        settings = dict(
            input=files, vocab_size=vocab_size, model_type=model_type,
            byte_fallback=byte_fallback, character_coverage=character_coverage,
            split_digits=split_digits, num_threads=num_threads,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 16, train_extremely_large_corpus=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        settings.update(options)
        with tempfile.TemporaryDirectory() as scratch:
            prefix = str(Path(scratch) / "spm")
            try:
                sentencepiece.SentencePieceTrainer.train(model_prefix=prefix, **settings)
            except RuntimeError as error:
                raise ValueError(f"SentencePiece training failed: {error}") from None
            return cls(prefix + ".model")
