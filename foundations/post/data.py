"""Post-training data: JSONL examples -> templated token rows -> packed windows and pairs (grain).

SFT: each (prompt, response) becomes template(prompt) + response + end-of-text; the loss weights
mark the response tokens (and the end-of-text) as targets. Packing puts several examples in one
window with a segment id per example and positions restarting at 0, so a block-diagonal causal
mask keeps each example to itself. Preferences: (prompt, chosen, rejected) become two padded rows
with their response weights.
"""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from foundations.config import ConfigError
from foundations.data.files import jsonl_records


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """The lines of a JSONL file as dicts holding (at least) `fields`, all strings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    examples = []
    for number, example in jsonl_records(path, text):
        if not isinstance(example, dict) or not all(
                isinstance(example.get(f), str) for f in fields):
            raise ConfigError(f"{path}:{number}: expected an object with string fields "
                              f"{', '.join(fields)}")
        examples.append(example)
    if not examples:
        raise ConfigError(f"{path} holds no examples")
    return examples


def split_examples(train_file: str, val_file: str, val_fraction: float,
                   fields: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """(training, validation) examples: val_file's, or the last val_fraction of train_file's."""
    if not train_file:
        raise ConfigError(f"no training file: set the stage's train_file (JSONL of "
                          f"{', '.join(fields)})")
    train = read_jsonl(train_file, fields)
    if val_file:
        return train, read_jsonl(val_file, fields)
    held_out = max(1, int(len(train) * val_fraction))
    if held_out >= len(train):
        raise ConfigError(f"{train_file}: {len(train)} examples are too few to hold out "
                          f"validation examples; add more or set val_file")
    return train[:-held_out], train[-held_out:]


def encode_example(tokenizer, template: str, prompt: str, response: str):
    """(tokens, weights): template(prompt) + response + end-of-text, weights 1 on the tokens
    that are predicted from the response's side (the response and the end-of-text)."""
    context = tokenizer.encode(template.format(prompt=prompt))
    answer = tokenizer.encode(response)
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        answer = answer + [eos]
    tokens = np.asarray(context + answer, np.int32)
    weights = np.concatenate([np.zeros(len(context), np.float32), np.ones(len(answer),
                                                                            np.float32)])
    return tokens, weights


def pack_rows(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pack: bool) -> dict:
    """Examples (tokens, weights) -> windows of seq_len + 1 tokens, filled greedily in order
    (one example per window without `pack`): {tokens, weights, segments, positions}, where
    weights[t] says whether tokens[t + 1] is a target. Segment 0 is padding."""
    rows, current = [], []

    def close():
        if current:
            rows.append(list(current))
            current.clear()

    used = 0
    for tokens, weights in examples:
        if len(tokens) > seq_len + 1:
            raise ConfigError(f"an example of {len(tokens)} tokens does not fit data.seq_len + "
                              f"1 = {seq_len + 1}; raise data.seq_len or shorten it")
        if not pack or used + len(tokens) > seq_len + 1:
            close()
            used = 0
        current.append((tokens, weights))
        used += len(tokens)
    close()
    out = {"tokens": np.zeros((len(rows), seq_len + 1), np.int32),
           "weights": np.zeros((len(rows), seq_len), np.float32),
           "segments": np.zeros((len(rows), seq_len + 1), np.int32),
           "positions": np.zeros((len(rows), seq_len + 1), np.int32)}
    for r, row in enumerate(rows):
        start = 0
        for segment, (tokens, weights) in enumerate(row, 1):
            end = start + len(tokens)
            out["tokens"][r, start:end] = tokens
            out["segments"][r, start:end] = segment
            out["positions"][r, start:end] = np.arange(len(tokens))
            out["weights"][r, start:end - 1] = weights[1:]  # target t+1 is predicted at t
            start = end
    out["segments"], out["positions"] = out["segments"][:, :-1], out["positions"][:, :-1]
    return out


def encode_pairs(examples: list[dict], tokenizer, template: str, seq_len: int) -> dict:
    """Preference pairs -> {chosen, chosen_weights, rejected, rejected_weights}: one padded row
    of seq_len + 1 tokens per response (weights as in `pack_rows`)."""
    out = {}
    for side in ("chosen", "rejected"):
        encoded = [encode_example(tokenizer, template, e["prompt"], e[side]) for e in examples]
        rows = pack_rows(encoded, seq_len, pack=False)
        out[side], out[f"{side}_weights"] = rows["tokens"], rows["weights"]
    return out


class Rows:
    """Random access to the rows of a dict of equally long arrays (a grain data source)."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index: int) -> dict:
        return {k: v[int(index)] for k, v in self.arrays.items()}


def row_iterator(arrays: dict, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
    """An endless, shuffled, checkpointable iterator of this process's rows of each batch."""
    rows = Rows(arrays)
    if len(rows) < global_batch:
        raise ConfigError(f"training data makes {len(rows)} rows, fewer than one batch of "
                          f"train.batch_size={global_batch}")
    dataset = (grain.MapDataset.source(rows).seed(seed).shuffle().repeat(None)
               [process_index::process_count]
               .batch(global_batch // process_count, drop_remainder=True))
    return iter(dataset.to_iter_dataset())


def eval_rows(arrays: dict, global_batch: int, max_batches: int = 0):
    """Validation rows in order, in full batches (the last rows are repeated to fill one)."""
    total = len(Rows(arrays))
    batches = -(-total // global_batch)
    if max_batches:
        batches = min(batches, max_batches)
    for b in range(batches):
        index = np.arange(b * global_batch, (b + 1) * global_batch) % total
        yield {k: v[index] for k, v in arrays.items()}
