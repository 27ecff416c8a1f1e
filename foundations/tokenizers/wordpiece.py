"""WordPiece as in BERT: a basic tokenizer (clean, lower-case, strip accents, split CJK and
punctuation), then greedy longest-match-first sub-words with "##" continuations.

Written by hand to follow Google's original BERT tokenizer; `from_vocab_file` reads any BERT
`vocab.txt`. A small trainer (likelihood-scored merges, as WordPiece is usually described) is included.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from foundations.tokenizers.corpus import read_text_files

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORD_CHARS = 100
VOCAB_FILE = "vocab.txt"


# ----- BERT's basic tokenizer ----------------------------------------------------------------------

def is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char: str) -> bool:
    """ASCII non-letters/digits count as punctuation (e.g. "$", "^"), as do Unicode P* characters."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(code: int) -> bool:
    """CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana), as BERT defines them."""
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F
            or 0x2B820 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks of `text`, after BERT's clean-up and normalization."""
    cleaned = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or is_control(char):
            continue
        if is_whitespace(char):
            cleaned.append(" ")
        elif is_cjk(code):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    words = []
    for word in "".join(cleaned).split():
        if lowercase:
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(char for char in word if unicodedata.category(char) != "Mn")
        current = []
        for char in word:
            if is_punctuation(char):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(char)
            else:
                current.append(char)
        if current:
            words.append("".join(current))
    return words


# ----- the tokenizer -------------------------------------------------------------------------------

class WordPieceTokenizer:
    """BERT's tokenizer over a vocab list (id = line number of vocab.txt)."""

    kind = "wordpiece"

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, unk_token: str = "[UNK]"):
        self.vocab = list(vocab)
        self.token_ids = {token: i for i, token in enumerate(self.vocab)}
        if unk_token not in self.token_ids:
            raise ValueError(f"vocabulary has no unknown token {unk_token!r}")
        self.lowercase = lowercase
        self.unk_token = unk_token
        self.unk_id = self.token_ids[unk_token]
        self.vocab_size = len(self.vocab)
        self.special_tokens = {t: self.token_ids[t] for t in SPECIAL_TOKENS if t in self.token_ids}
        self.cls_id = self.special_tokens.get("[CLS]")
        self.sep_id = self.special_tokens.get("[SEP]")
        self.eos_id = self.sep_id  # [SEP] separates documents/segments in BERT-style inputs

    @classmethod
    def from_vocab_file(cls, vocab_txt: str | Path, lowercase: bool = True) -> "WordPieceTokenizer":
        """Read BERT's vocab.txt: one token per line, id = line number (from 0)."""
        path = Path(vocab_txt)
        if not path.is_file():
            raise FileNotFoundError(f"WordPiece vocabulary {str(path)!r} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"WordPiece vocabulary {str(path)!r} is not valid UTF-8 at byte "
                             f"offset {error.start}") from None
        if lines and lines[-1] == "":
            lines.pop()
        return cls([line.rstrip("\r") for line in lines], lowercase)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text` (strings), no [CLS]/[SEP]."""
        pieces = []
        for word in basic_tokenize(text, self.lowercase):
            pieces.extend(self.wordpiece(word))
        return pieces

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one word; [UNK] if any part is missing or it is too long."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.token_ids:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(candidate)
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids without [CLS]/[SEP]."""
        return [self.token_ids[piece] for piece in self.tokenize(text)]

    def encode_pair(self, text_a: str, text_b: str | None = None) -> tuple[list[int], list[int]]:
        """BERT input: [CLS] a [SEP] (b [SEP]) and token_type_ids 0 for the first part, 1 for b."""
        if self.cls_id is None or self.sep_id is None:
            raise ValueError("vocabulary lacks [CLS] or [SEP]")
        ids = [self.cls_id, *self.encode(text_a), self.sep_id]
        types = [0] * len(ids)
        if text_b is not None:
            second = [*self.encode(text_b), self.sep_id]
            ids += second
            types += [1] * len(second)
        return ids, types

    def decode(self, ids: Sequence[int]) -> str:
        """Pieces joined by spaces with "##" continuations glued back (lower-casing is not undone)."""
        return " ".join(self.id_to_piece(i) for i in ids).replace(" ##", "")

    def id_to_piece(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is not in this vocabulary (size {self.vocab_size})")
        return self.vocab[i]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_FILE).write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        meta = {"kind": self.kind, "lowercase": self.lowercase, "vocab_size": self.vocab_size}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "WordPieceTokenizer":
        directory = Path(directory)
        meta = json.loads((directory / "tokenizer.json").read_text())
        return cls.from_vocab_file(directory / VOCAB_FILE, meta.get("lowercase", True))

    @classmethod
    def train(cls, files: Iterable[str | Path], vocab_size: int,
              lowercase: bool = True) -> "WordPieceTokenizer":
        """Learn a vocabulary: start from characters ("##c" inside words) and repeatedly merge the
        pair with the best score count(ab) / (count(a) count(b)); ties go to the smallest pair."""
        word_counts: Counter[str] = Counter()
        for text in read_text_files(files):
            word_counts.update(basic_tokenize(text, lowercase))
        words = [[w[0]] + ["##" + c for c in w[1:]] for w in word_counts]
        counts = list(word_counts.values())
        vocab = list(SPECIAL_TOKENS) + sorted({piece for word in words for piece in word})
        known = set(vocab)
        unit_counts: Counter[str] = Counter()
        pair_counts: dict[tuple[str, str], int] = defaultdict(int)
        pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)
        for index, word in enumerate(words):
            for piece in word:
                unit_counts[piece] += counts[index]
            for pair in zip(word, word[1:]):
                pair_counts[pair] += counts[index]
                pair_words[pair].add(index)
        while len(vocab) < vocab_size and pair_counts:
            # A full scan per merge: the score depends on unit counts that every merge changes.
            best = max(pair_counts, key=lambda p: (
                pair_counts[p] / (unit_counts[p[0]] * unit_counts[p[1]]), _reverse_key(p)))
            first, second = best
            merged = first + second[2:]
            for index in pair_words.pop(best):
                word, count = words[index], counts[index]
                new_word, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                        new_word.append(merged)
                        i += 2
                    else:
                        new_word.append(word[i])
                        i += 1
                if len(new_word) == len(word):
                    continue
                for piece in word:
                    unit_counts[piece] -= count
                for pair in zip(word, word[1:]):
                    pair_counts[pair] -= count
                    if pair_counts[pair] <= 0:
                        del pair_counts[pair]
                for piece in new_word:
                    unit_counts[piece] += count
                for pair in zip(new_word, new_word[1:]):
                    pair_counts[pair] += count
                    pair_words[pair].add(index)
                words[index] = new_word
            pair_counts.pop(best, None)
            if merged not in known:
                known.add(merged)
                vocab.append(merged)
        return cls(vocab, lowercase)


def _reverse_key(pair: tuple[str, str]) -> tuple:
    """Makes `max` prefer the lexicographically smallest pair among equal scores."""
    return tuple(tuple(-ord(c) for c in piece) + (1,) for piece in pair)
