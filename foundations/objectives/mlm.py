"""Masked language modelling (BERT): select 15% of the tokens (never special ones), replace 80%
of those with [MASK], 10% with a random token, keep 10%, and predict the originals.

Special ids: a tokenizer's own [CLS]/[SEP]/[MASK]/[PAD] are used when it has them (WordPiece);
otherwise (byte, BPE) they take the first ids above the tokenizer's vocabulary, in the padding
rows of the embedding table (byte: [CLS]=258, [SEP]=259, [MASK]=260, pad = <|pad|> 257).
"""

from __future__ import annotations

import string

import numpy as np

from foundations.config import ConfigError
from foundations.objectives.base import TRAIN, Objective
from foundations.objectives.losses import weighted_cross_entropy

SPECIAL_NAMES = {"cls": ("[CLS]",), "sep": ("[SEP]",), "mask": ("[MASK]",),
                 "pad": ("[PAD]", "<|pad|>", "<pad>")}


def special_ids(tokenizer, vocab_size: int) -> dict[str, int]:
    """cls/sep/mask/pad ids (the tokenizer's, else new ones above its vocabulary), and
    `first_free`: the lowest id still unused."""
    ids, free = {}, tokenizer.vocab_size
    for key, names in SPECIAL_NAMES.items():
        found = [tokenizer.special_tokens[n] for n in names if n in tokenizer.special_tokens]
        ids[key] = found[0] if found else free
        free += 0 if found else 1
    if free > vocab_size:
        raise ConfigError(f"model.vocab_size={vocab_size} leaves no room for the special ids "
                          f"up to {free - 1}; raise model.vocab_size")
    ids["first_free"] = free
    return ids


def never_masked(tokenizer, ids: dict, vocab_size: int) -> np.ndarray:
    """A boolean table over the vocabulary: True for special ids (and table padding)."""
    special = np.zeros(vocab_size, bool)
    special[list(tokenizer.special_tokens.values())] = True
    special[[ids["cls"], ids["sep"], ids["mask"], ids["pad"]]] = True
    special[tokenizer.vocab_size:] = True
    return special


def word_starts(tokens: np.ndarray, tokenizer) -> np.ndarray:
    """True where a token begins a word: bytes join runs of letters/digits/UTF-8 bytes,
    WordPiece joins '##' pieces to the word before; other tokenizers: every token is a word."""
    starts = np.ones(tokens.shape, bool)
    if getattr(tokenizer, "kind", "") == "byte":
        wordish = np.zeros(max(int(tokens.max()) + 1, 256), bool)
        wordish[[ord(c) for c in string.ascii_letters + string.digits + "'"]] = True
        wordish[128:256] = True
        w = wordish[tokens]
        starts[:, 1:] = ~(w[:, 1:] & w[:, :-1])
    elif hasattr(tokenizer, "vocab") and getattr(tokenizer, "kind", "") == "wordpiece":
        cont = np.array([p.startswith("##") for p in tokenizer.vocab] + [False])
        starts = ~cont[np.minimum(tokens, len(cont) - 1)]
    return starts


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, special: np.ndarray,
                mask_id: int, random_ids: np.ndarray, mask_prob: float = 0.15,
                replace: tuple[float, float] = (0.8, 0.1), starts: np.ndarray | None = None):
    """BERT's corruption. Returns (inputs, selected): selected tokens (a `mask_prob` share of the
    non-special ones; whole words if `starts` marks word beginnings) become [MASK] with
    probability replace[0], a random id from `random_ids` with replace[1], else stay."""
    maskable = ~special[tokens]
    if starts is None:
        selected = rng.random(tokens.shape) < mask_prob
    else:
        word = np.cumsum(starts, axis=1) - 1
        selected = np.take_along_axis(rng.random(tokens.shape) < mask_prob, word, axis=1)
    selected &= maskable
    r = rng.random(tokens.shape)
    inputs = np.where(selected & (r < replace[0]), mask_id, tokens)
    randomized = selected & (r >= replace[0]) & (r < replace[0] + replace[1])
    inputs = np.where(randomized, rng.choice(random_ids, size=tokens.shape), inputs)
    return inputs.astype(np.int32), selected


class MaskedLM(Objective):
    """BERT pre-training without next-sentence prediction: [CLS] A [SEP] B [SEP] from each
    window (A/B split at a random point, segment ids 0/1), masked as above."""
    name = "mlm"
    reports_perplexity = False
    replace = (0.8, 0.1)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        model_cfg = config.model
        self.ids = special_ids(tokenizer, model_cfg.vocab_size)
        self.special = never_masked(tokenizer, self.ids, model_cfg.vocab_size)
        self.random_ids = np.flatnonzero(~self.special[:tokenizer.vocab_size])

    def layout(self, rows: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ([CLS] a [SEP] b [SEP] of length seq_len, segment ids)."""
        n = self.seq_len - 3
        tokens = np.empty((rows.shape[0], self.seq_len), np.int32)
        segments = np.zeros_like(tokens)
        for i, split in enumerate(rng.integers(1, n, size=rows.shape[0])):
            tokens[i] = np.concatenate([[self.ids["cls"]], rows[i, :split], [self.ids["sep"]],
                                        rows[i, split:n], [self.ids["sep"]]])
            segments[i, split + 2:] = 1
        return tokens, segments

    def prepare(self, rows, step, stream=TRAIN):
        rng = self.rng(step, stream)
        tokens, segments = self.layout(rows, rng)
        starts = word_starts(tokens, self.tokenizer) if self.config.objective.whole_word_mask else None
        inputs, selected = mask_tokens(tokens, rng, self.special, self.ids["mask"],
                                       self.random_ids, self.config.objective.mask_prob,
                                       self.replace, starts)
        return {"inputs": inputs, "targets": tokens, "weights": selected.astype(np.float32),
                "segments": segments, "padding": tokens != self.ids["pad"]}

    def model_args(self, batch):
        return (batch["inputs"], batch["segments"], batch["padding"])

    def loss(self, apply, params, batch, rng):
        out, aux = apply(params, rng, *self.model_args(batch))
        loss, accuracy = weighted_cross_entropy(out["logits"], batch["targets"], batch["weights"])
        return self.with_aux(loss, aux, {"mlm_accuracy": accuracy})
