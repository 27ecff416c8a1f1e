"""Text files -> token ids -> packed fixed-length windows -> shuffled, per-process batches (grain).

Documents are joined with the tokenizer's end-of-text id and cut into windows of seq_len + 1
tokens (inputs are the first seq_len, targets the last seq_len), so no token is padding. The
training stream is a grain MapDataset: shuffled with a seed and reshuffled every epoch, each
process taking every P-th window, so its iterator state is a single index that checkpoints hold.
"""

from __future__ import annotations

import grain
import numpy as np

from foundations.config import ConfigError, DataConfig
from foundations.data.shards import load_shard_data
from foundations.data.text import TextData, load_text_files


def load_text_data(cfg: DataConfig) -> TextData:
    """The configured corpus: the text files read and tokenized, or (data.shards or
    data.mixture) the prepared shards opened lazily."""
    if cfg.shards or cfg.mixture:
        return load_shard_data(cfg)
    return load_text_files(cfg)


class PackedWindows:
    """Random access to non-overlapping windows of seq_len + 1 tokens (a grain data source).

    With `eos_id` (document masks) a window is a dict: its tokens, segment ids (documents
    numbered from 0 in each window; an end-of-text ends its document) and, with
    `reset_positions`, each token's position within its document."""

    def __init__(self, tokens, seq_len: int, eos_id: int | None = None,
                 reset_positions: bool = False):
        self.tokens, self.seq_len = tokens, seq_len
        self.eos_id, self.reset_positions = eos_id, reset_positions
        self.num_windows = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int):
        start = int(index) * self.seq_len
        tokens = self.tokens[start:start + self.seq_len + 1]
        if self.eos_id is None:
            return tokens
        ends = tokens == self.eos_id
        segments = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int32)
        window = {"tokens": tokens, "segments": segments}
        if self.reset_positions:
            index = np.arange(len(tokens))
            starts = np.maximum.accumulate(np.where(np.diff(segments, prepend=-1) != 0, index, 0))
            window["positions"] = (index - starts).astype(np.int32)
        return window


def train_iterator(tokens, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1, weights=(),
                   eos_id: int | None = None, reset_positions: bool = False):
    """An endless, checkpointable iterator of this process's rows of each global batch.

    The global order is one seeded shuffle (each epoch reshuffled); process p takes every P-th
    window of it, so the processes' rows together are the same global batches for any P that
    divides the batch. `tokens` may be a list of token arrays mixed by `weights`."""
    if global_batch % process_count:
        raise ConfigError(f"train.batch_size={global_batch} does not divide over "
                          f"{process_count} processes")
    parts = tokens if isinstance(tokens, list) else [tokens]
    datasets = []
    for i, part in enumerate(parts):
        windows = PackedWindows(part, seq_len, eos_id, reset_positions)
        if len(windows) < global_batch:
            raise ConfigError(f"training data holds {len(windows)} windows of {seq_len + 1} "
                              f"tokens, fewer than one batch of {global_batch}")
        datasets.append(grain.MapDataset.source(windows).seed(seed + i).shuffle().repeat(None))
    dataset = datasets[0] if len(datasets) == 1 else \
        grain.MapDataset.mix(datasets, list(weights))
    dataset = (dataset[process_index::process_count]
               .batch(global_batch // process_count, drop_remainder=True))
    return iter(dataset.to_iter_dataset())


def stack(windows: list):
    """Windows (arrays, or dicts of arrays) -> one batch."""
    if isinstance(windows[0], dict):
        return {key: np.stack([w[key] for w in windows]) for key in windows[0]}
    return np.stack(windows)


def eval_windows(tokens, seq_len: int, num_windows: int = 0, multiple: int = 1,
                 eos_id: int | None = None, reset_positions: bool = False):
    """The validation set: `num_windows` windows (0: all) spread evenly over the split, rounded
    down to a multiple of `multiple` (the mesh's batch parallelism); it does not depend on the
    batch size. Returns the windows and the chosen indices."""
    windows = PackedWindows(tokens, seq_len, eos_id, reset_positions)
    total = len(windows)
    count = min(num_windows, total) if num_windows else total
    count -= count % multiple
    if count == 0:
        raise ConfigError(f"validation data holds {total} windows of {seq_len + 1} tokens, fewer "
                          f"than the {max(multiple, 1)} the mesh's batch axes need; add "
                          "validation text")
    if count == total:
        return windows, np.arange(total)
    return windows, np.linspace(0, total - 1, count).round().astype(int)


def eval_window_batches(tokens, seq_len: int, global_batch: int, num_windows: int = 0,
                        process_index: int = 0, process_count: int = 1, multiple: int = 1,
                        eos_id: int | None = None, reset_positions: bool = False):
    """The windows of `eval_windows`, in batches of `global_batch` (the last one may be smaller,
    a multiple of `multiple`), as (this process's rows, the batch's global row count)."""
    windows, chosen = eval_windows(tokens, seq_len, num_windows, multiple, eos_id,
                                   reset_positions)
    for start in range(0, len(chosen), global_batch):
        batch = chosen[start:start + global_batch]
        rows = len(batch) // process_count
        mine = batch[process_index * rows:(process_index + 1) * rows]
        yield stack([windows[int(i)] for i in mine]), len(batch)


def eval_batches(tokens, seq_len: int, global_batch: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1, eos_id: int | None = None,
                 reset_positions: bool = False):
    """Validation windows in order, as this process's rows of each global batch. With
    `max_batches`, the batches are spread evenly over the split (not its first pages), so a
    quick evaluation still sees the whole text."""
    windows = PackedWindows(tokens, seq_len, eos_id, reset_positions)
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
        yield stack([windows[i] for i in range(first, first + rows)])
