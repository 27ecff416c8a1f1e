"""Byte-level BPE (GPT-2 style): a trainer, a reference encoder in Python, and tiktoken as fast path.

Text is split with GPT-2's regex, each piece becomes UTF-8 bytes, and learned merges are applied
lowest rank first. Ids 0..255 are the single bytes in GPT-2's order (the printable ones first), id
256 + r is the token made by merge r, and special tokens come last. Because ids equal merge ranks,
tiktoken encodes with the same ids as `encode_reference`. Files: GPT-2's `encoder.json` +
`vocab.bpe` pair and tiktoken's base64 rank file, both read and written here.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import regex

from foundations.tokenizers.bpe_train import Pair, learn_merges, merge_pair
from foundations.tokenizers.corpus import read_text_files

# GPT-2's pre-tokenization regex, in the equivalent faster form tiktoken uses for its "gpt2" encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
TIKTOKEN_FILE = "tokenizer.tiktoken"


def gpt2_byte_order() -> list[int]:
    """GPT-2's order of the 256 single-byte tokens: printable non-space bytes first, then the rest."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    return printable + [b for b in range(256) if b not in printable]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character map used in its files (printable bytes map to themselves)."""
    order = gpt2_byte_order()
    return {b: chr(b) if i < 188 else chr(256 + i - 188) for i, b in enumerate(order)}


class BPETokenizer:
    """Byte-level BPE given by its merges; `encode` uses tiktoken when ids allow, else the reference."""

    kind = "bpe"

    def __init__(self, token_bytes: dict[int, bytes], merges: Sequence[Pair],
                 special_tokens: dict[str, int] | None = None, pattern: str = GPT2_PATTERN,
                 name: str = "bpe"):
        self.token_bytes = dict(token_bytes)
        self.merges = [tuple(pair) for pair in merges]
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.name = name
        by_bytes = {token: i for i, token in self.token_bytes.items()}
        if len(by_bytes) != len(self.token_bytes):
            raise ValueError("two token ids have the same bytes; a BPE vocabulary must not")
        missing = [b for b in range(256) if bytes([b]) not in by_bytes]
        if missing:
            raise ValueError(f"vocabulary lacks single-byte tokens for bytes {missing[:8]}...")
        self.byte_ids = [by_bytes[bytes([b])] for b in range(256)]
        self.merge_ranks: dict[Pair, int] = {}
        self.merge_ids: dict[Pair, int] = {}
        for rank, (a, b) in enumerate(self.merges):
            merged = self.token_bytes[a] + self.token_bytes[b]
            if merged not in by_bytes:
                raise ValueError(f"merge {rank} ({a}, {b}) makes {merged!r}, which has no token id")
            self.merge_ranks[a, b] = rank
            self.merge_ids[a, b] = by_bytes[merged]
        clash = set(self.special_tokens.values()) & set(self.token_bytes)
        if clash:
            raise ValueError(f"special token ids {sorted(clash)} are also ordinary token ids")
        self.vocab_size = 1 + max([*self.token_bytes, *self.special_tokens.values()])
        self.eos_id = self.special_tokens.get(ENDOFTEXT)
        self._regex = regex.compile(pattern)
        self._cache: dict[str, list[int]] = {}
        self._special_by_id = {i: name.encode("utf-8") for name, i in self.special_tokens.items()}
        self._tiktoken = self._build_tiktoken()

    # ----- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids for `text`, special-token strings treated as plain text and no special tokens added."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary(text)
        return self.encode_reference(text)

    def encode_reference(self, text: str) -> list[int]:
        """The same ids as `encode`, computed here in Python: regex split, then merges by rank."""
        ids: list[int] = []
        for piece in self._regex.findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                cached = self._encode_piece(piece.encode("utf-8"))
                if len(self._cache) > 200_000:
                    self._cache.clear()
                self._cache[piece] = cached
            ids.extend(cached)
        return ids

    def _encode_piece(self, data: bytes) -> list[int]:
        """GPT-2's BPE on one piece: merge the lowest-rank adjacent pair (all its occurrences), repeat."""
        ids = [self.byte_ids[b] for b in data]
        ranks = self.merge_ranks
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
            if best not in ranks:
                break
            ids = merge_pair(ids, best, self.merge_ids[best])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes of all ids joined, then UTF-8 decoded (broken sequences become U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        parts = []
        for i in map(int, ids):
            token = self.token_bytes.get(i, self._special_by_id.get(i))
            if token is None:
                raise ValueError(f"token id {i} is not in this vocabulary (size {self.vocab_size})")
            parts.append(token)
        return b"".join(parts)

    def id_to_piece(self, i: int) -> str:
        """Readable text of one token (undecodable bytes shown as \\x escapes)."""
        return self.decode_bytes([i]).decode("utf-8", errors="backslashreplace")

    def _build_tiktoken(self):
        """A tiktoken Encoding with the same ids, if ids grow with merge rank (true for GPT-2 and ours)."""
        merged_ids = [self.merge_ids[pair] for pair in self.merges]
        if any(later <= earlier for earlier, later in zip(merged_ids, merged_ids[1:])):
            return None
        if merged_ids and max(self.byte_ids) > merged_ids[0]:
            return None
        import tiktoken
        ranks = {token: i for i, token in self.token_bytes.items()}
        return tiktoken.Encoding(self.name, pat_str=self.pattern, mergeable_ranks=ranks,
                                 special_tokens=self.special_tokens)

    # ----- training -----------------------------------------------------------------------------

    @classmethod
    def train(cls, files: Iterable[str | Path], vocab_size: int,
              special_tokens: Sequence[str] = (ENDOFTEXT,), pattern: str = GPT2_PATTERN,
              verbose: bool = False) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges from UTF-8 text files."""
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + "
                             f"{len(special_tokens)} special tokens")
        splitter = regex.compile(pattern)
        piece_counts: Counter[str] = Counter()
        for text in read_text_files(files):
            piece_counts.update(splitter.findall(text))
        byte_ids = {b: i for i, b in enumerate(gpt2_byte_order())}
        word_counts: Counter[tuple[int, ...]] = Counter()
        for piece, count in piece_counts.items():
            word_counts[tuple(byte_ids[b] for b in piece.encode("utf-8"))] += count
        vocab = [bytes([b]) for b in gpt2_byte_order()]
        merges = learn_merges(word_counts, vocab, num_merges)
        if verbose:
            print(f"bpe: {len(piece_counts):,} unique pieces, {len(merges):,} merges")
        specials = {name: len(vocab) + i for i, name in enumerate(special_tokens)}
        return cls(dict(enumerate(vocab)), merges, specials, pattern)

    # ----- files --------------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path,
                        special_tokens: dict[str, int] | None = None,
                        pattern: str = GPT2_PATTERN, name: str = "gpt2") -> "BPETokenizer":
        """Read GPT-2's file pair. Entries of encoder.json that no merge makes (and that are not
        single bytes) are special tokens, e.g. <|endoftext|> = 50256, unless given explicitly."""
        char_to_byte = {char: b for b, char in bytes_to_unicode().items()}
        encoder = _read_json(encoder_json)
        if not isinstance(encoder, dict):
            raise ValueError(f"{encoder_json}: expected a JSON object mapping token -> id")
        lines = _read_lines(vocab_bpe)
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merge_strings = []
        for number, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or any(part not in encoder for part in parts):
                raise ValueError(f"{vocab_bpe}:{number}: expected two tokens of {encoder_json}, "
                                 f"got {line!r}")
            merge_strings.append(parts)
        made_by_merge = {first + second for first, second in merge_strings}
        specials = {} if special_tokens is None else dict(special_tokens)
        token_bytes = {}
        for token, i in encoder.items():
            if special_tokens is not None and token in special_tokens:
                continue
            is_byte = len(token) == 1 and token in char_to_byte
            if special_tokens is None and not is_byte and token not in made_by_merge:
                specials[token] = i
                continue
            try:
                token_bytes[i] = bytes(char_to_byte[char] for char in token)
            except KeyError:
                raise ValueError(f"{encoder_json}: token {token!r} is not in GPT-2's byte "
                                 f"alphabet") from None
        merges = [(encoder[first], encoder[second]) for first, second in merge_strings]
        return cls(token_bytes, merges, specials, pattern, name)

    def save_gpt2_files(self, encoder_json: str | Path, vocab_bpe: str | Path) -> None:
        """Write GPT-2's pair: token -> id (bytes spelled with GPT-2's byte map) and the merge list."""
        byte_to_char = bytes_to_unicode()
        spell = lambda i: "".join(byte_to_char[b] for b in self.token_bytes[i])
        encoder = {spell(i): i for i in sorted(self.token_bytes)}
        encoder.update(self.special_tokens)
        Path(encoder_json).write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{spell(a)} {spell(b)}" for a, b in self.merges]
        Path(vocab_bpe).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def save_tiktoken_file(self, path: str | Path) -> None:
        """Write tiktoken's rank file: one `base64(token bytes) rank` line per ordinary token."""
        lines = [f"{base64.b64encode(self.token_bytes[i]).decode()} {i}"
                 for i in sorted(self.token_bytes)]
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def from_tiktoken_file(cls, path: str | Path, special_tokens: dict[str, int] | None = None,
                           pattern: str = GPT2_PATTERN, name: str = "bpe") -> "BPETokenizer":
        """Read a tiktoken rank file; each token's merge is recovered by BPE-encoding its bytes
        with the lower ranks only, which must leave exactly two parts."""
        ranks = {}
        for number, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{number}: expected 'base64-token rank', "
                                 f"got {line!r}") from None
        merges = []
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            if len(token) == 1:
                continue
            parts = _split_by_rank(token, ranks, rank)
            if len(parts) != 2:
                raise ValueError(f"{path}: token {token!r} (rank {rank}) is not a merge of two "
                                 f"lower-ranked tokens; not a BPE rank file")
            merges.append((ranks[parts[0]], ranks[parts[1]]))
        return cls({rank: token for token, rank in ranks.items()}, merges, special_tokens,
                   pattern, name)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, encoder.json + vocab.bpe, and tokenizer.tiktoken."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_gpt2_files(directory / "encoder.json", directory / "vocab.bpe")
        self.save_tiktoken_file(directory / TIKTOKEN_FILE)
        meta = {"kind": self.kind, "name": self.name, "pattern": self.pattern,
                "special_tokens": self.special_tokens, "vocab_size": self.vocab_size}
        (directory / "tokenizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "BPETokenizer":
        directory = Path(directory)
        meta = _read_json(directory / "tokenizer.json")
        return cls.from_gpt2_files(directory / "encoder.json", directory / "vocab.bpe",
                                   meta.get("special_tokens", {}),
                                   meta.get("pattern", GPT2_PATTERN), meta.get("name", "bpe"))


def _split_by_rank(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's rule on `token` with only ranks < `below`: merge the lowest-ranked adjacent pair."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        candidates = [(ranks.get(x + y, below), i) for i, (x, y) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(candidates)
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"tokenizer file {str(path)!r} is not valid JSON: {error}") from None


def _read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"tokenizer file {str(path)!r} is not valid UTF-8 at byte offset "
                         f"{error.start}") from None
