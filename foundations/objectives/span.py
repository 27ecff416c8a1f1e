"""T5 span corruption: drop random spans (noise density 0.15, mean span length 3) from the input,
each replaced by one sentinel; the target lists each sentinel followed by the tokens it hid.

"Thank you for inviting me to your party last week ." ->
inputs  "Thank you <X> me to your party <Y> week ."    targets "<X> for inviting <Y> last"
Sentinels are the top ids of the (padded) vocabulary, <extra_id_0> = vocab_size - 1, as in T5.
The span count and lengths depend only on the window length, so every batch has fixed shapes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from foundations.config import ConfigError
from foundations.objectives.base import TRAIN, Objective
from foundations.objectives.losses import weighted_cross_entropy
from foundations.objectives.mlm import special_ids


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, spans) for a window of `length` tokens, as T5 computes them."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with span_counts' noise tokens in that many spans, alternating
    kept / noise and starting with kept tokens (T5's random_spans_noise_mask)."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)

    def random_partition(items: int) -> np.ndarray:  # `items` into num_spans positive lengths
        cuts = np.sort(rng.choice(np.arange(1, items), num_spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [items]]))

    lengths = np.stack([random_partition(length - num_noise), random_partition(num_noise)], 1)
    return np.repeat(np.tile([False, True], num_spans), lengths.reshape(-1))


def corrupt_spans(tokens: np.ndarray, noise: np.ndarray, sentinels: np.ndarray):
    """One row -> (inputs, targets): each noise span becomes one sentinel in the inputs; the
    targets are sentinel_i + span_i for every span."""
    first = noise & ~np.concatenate([[False], noise[:-1]])   # the first token of each span
    span_index = np.cumsum(first) - 1
    inputs = np.where(first, sentinels[span_index], tokens)[~noise | first]
    targets = []
    for i, start in enumerate(np.flatnonzero(first)):
        end = start
        while end < len(tokens) and noise[end]:
            end += 1
        targets.append(np.concatenate([[sentinels[i]], tokens[start:end]]))
    return inputs.astype(np.int32), np.concatenate(targets).astype(np.int32)


def reconstruct(inputs: np.ndarray, targets: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """The original row from (inputs, targets): each sentinel in the inputs is replaced by what
    follows the same sentinel in the targets."""
    is_sentinel = np.isin(targets, sentinels)
    spans, current = {}, None
    for token, marker in zip(targets, is_sentinel):
        if marker:
            current = int(token)
            spans[current] = []
        else:
            spans[current].append(int(token))
    out = []
    for token in inputs:
        out.extend(spans[int(token)] if int(token) in spans else [int(token)])
    return np.asarray(out, np.int32)


class SpanCorruption(Objective):
    """Encoder reads the corrupted window, decoder predicts the targets (teacher forced, the
    decoder input is the targets shifted right behind a pad id, T5's decoder start)."""
    name = "span"

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        model_cfg, t = config.model, config.objective
        self.num_noise, self.num_spans = span_counts(self.seq_len, t.noise_density,
                                                     t.mean_span_length)
        self.sentinels = model_cfg.vocab_size - 1 - np.arange(self.num_spans)
        self.ids = special_ids(tokenizer, model_cfg.vocab_size)
        if self.sentinels[-1] < self.ids["first_free"]:
            raise ConfigError(
                f"span corruption needs {self.num_spans} sentinel ids above the tokenizer's "
                f"vocabulary; model.vocab_size={model_cfg.vocab_size} has "
                f"{model_cfg.vocab_size - self.ids['first_free']} free: raise model.vocab_size")

    def prepare(self, rows, step, stream=TRAIN):
        rng = self.rng(step, stream)
        t = self.config.objective
        pairs = [corrupt_spans(row[:self.seq_len], random_spans_noise_mask(
            self.seq_len, t.noise_density, t.mean_span_length, rng), self.sentinels)
            for row in rows]
        inputs = np.stack([p[0] for p in pairs])
        targets = np.stack([p[1] for p in pairs])
        start = np.full((len(rows), 1), self.ids["pad"], np.int32)
        return {"inputs": inputs, "targets": targets,
                "decoder_inputs": np.concatenate([start, targets[:, :-1]], axis=1)}

    def model_args(self, batch):
        return (batch["inputs"], batch["decoder_inputs"])

    def loss(self, apply, params, batch, rng):
        logits, aux = apply(params, rng, *self.model_args(batch))
        loss, accuracy = weighted_cross_entropy(logits, batch["targets"],
                                                batch["targets"] >= 0)
        return self.with_aux(loss, aux, {"ppl": jnp.exp(loss), "accuracy": accuracy})
