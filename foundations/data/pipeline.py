"""Text files -> token ids -> packed fixed-length windows -> shuffled, per-process batches (grain).

Documents are joined with the tokenizer's end-of-text id and cut into windows of seq_len + 1
tokens (inputs are the first seq_len, targets the last seq_len), so no token is padding. The
training stream is a grain MapDataset: shuffled with a seed and reshuffled every epoch, each
process taking every P-th window, so its iterator state is a single index that checkpoints hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np

from foundations.config import ConfigError, DataConfig
from foundations.tokenizers import Tokenizer, load_tokenizer

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


def expand_files(names: list[str]) -> list[Path]:
    """Files as given; a directory stands for its *.txt files, in sorted order."""
    files = []
    for name in names:
        path = resolve_path(name)
        if path.is_dir():
            found = sorted(path.rglob("*.txt"))
            if not found:
                raise ConfigError(f"data directory {path} holds no *.txt files")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_text(path: Path, fallback_encoding: str = "") -> str:
    """Reads a UTF-8 text file. A file that is not UTF-8 is refused with the offending byte
    offset, unless a fallback encoding (e.g. latin-1 for older Gutenberg texts) is configured."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if fallback_encoding:
            try:
                return data.decode(fallback_encoding)
            except (UnicodeDecodeError, LookupError) as e2:
                raise ConfigError(f"{path} is neither UTF-8 nor {fallback_encoding}: {e2}") from None
        raise ConfigError(f"{path} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r}"
                          "); convert it (iconv -t utf-8) or set data.fallback_encoding") from None


def tokenize_files(files: list[Path], tokenizer: Tokenizer,
                   fallback_encoding: str = "") -> tuple[np.ndarray, int]:
    """All files' tokens, one end-of-text id after each file; also the count of UTF-8 bytes."""
    eos = getattr(tokenizer, "eos_id", None)
    pieces, n_bytes = [], 0
    for path in files:
        text = read_text(path, fallback_encoding)
        n_bytes += len(text.encode("utf-8"))
        pieces.append(np.asarray(tokenizer.encode(text), dtype=np.int32))
        if eos is not None:
            pieces.append(np.array([eos], dtype=np.int32))
    return np.concatenate(pieces), n_bytes


class PackedWindows:
    """Random access to non-overlapping windows of seq_len + 1 tokens (a grain data source)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.num_windows = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.seq_len
        return self.tokens[start:start + self.seq_len + 1]


@dataclass
class TextData:
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    bytes_per_token: float   # UTF-8 bytes per token, for bits-per-byte


def configured_tokenizer(spec: str) -> Tokenizer:
    """`load_tokenizer(data.tokenizer)`, with a missing or broken tokenizer directory reported
    as a ConfigError (one line from the CLI)."""
    try:
        return load_tokenizer(spec)
    except (ValueError, OSError) as e:
        raise ConfigError(f"data.tokenizer: {e}") from None


def load_text_data(cfg: DataConfig) -> TextData:
    """Reads and tokenizes the configured files and splits off validation data."""
    tokenizer = configured_tokenizer(cfg.tokenizer)
    fallback = cfg.fallback_encoding
    train, train_bytes = tokenize_files(expand_files(cfg.train_files), tokenizer, fallback)
    if cfg.val_files:
        val, val_bytes = tokenize_files(expand_files(cfg.val_files), tokenizer, fallback)
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


def train_iterator(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1):
    """An endless, checkpointable iterator of this process's rows of each global batch."""
    if global_batch % process_count:
        raise ConfigError(f"train.batch_size={global_batch} does not divide over "
                          f"{process_count} processes")
    windows = PackedWindows(tokens, seq_len)
    if len(windows) < global_batch:
        raise ConfigError(f"training data holds {len(windows)} windows of {seq_len + 1} tokens, "
                          f"fewer than one batch of {global_batch}")
    dataset = (grain.MapDataset.source(windows).seed(seed).shuffle().repeat(None)
               [process_index::process_count]
               .batch(global_batch // process_count, drop_remainder=True))
    return iter(dataset.to_iter_dataset())


def eval_batches(tokens: np.ndarray, seq_len: int, global_batch: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1):
    """Validation windows in order, as this process's rows of each global batch. With
    `max_batches`, the batches are spread evenly over the split (not its first pages), so a
    quick evaluation still sees the whole text."""
    windows = PackedWindows(tokens, seq_len)
    num_batches = len(windows) // global_batch
    if num_batches == 0:
        raise ConfigError(f"validation data holds {len(windows)} windows of {seq_len + 1} tokens, "
                          f"fewer than one batch of {global_batch}; lower train.batch_size or "
                          "add validation text")
    chosen = range(num_batches)
    if max_batches and max_batches < num_batches:
        chosen = np.linspace(0, num_batches - 1, max_batches).round().astype(int)
    rows = global_batch // process_count
    for b in chosen:
        first = int(b) * global_batch + process_index * rows
        yield np.stack([windows[i] for i in range(first, first + rows)])
