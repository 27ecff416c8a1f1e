"""Writes generations.json: the tokens transformers' `generate` writes with the committed tiny
models (run once, by hand, after make_references.py; torch and transformers are not project deps).

    python tests/data/hf/make_generations.py

For each generative model: a left-padded batch of two prompts of different lengths, its greedy
continuation and its beam search (num_beams=2) continuation, new tokens only, no EOS stop.
tests/test_hf_generate.py checks that foundations.inference.generate writes the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers as tf

HERE = Path(__file__).parent
MODELS = ["gpt2", "llama", "mistral", "mixtral", "t5", "t5_gated"]
NEW_TOKENS = 8


def prompts(seed: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Two prompts, of 4 and 6 tokens (ids >= 2: no pad or EOS), left-padded with 0."""
    ids = np.random.default_rng(seed).integers(2, vocab, (2, 6))
    ids[0, :2] = 0
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    return ids, mask


def continuation(model, ids, mask, num_beams: int) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             num_beams=num_beams, length_penalty=1.0, pad_token_id=0,
                             # transformers' T5 cache assumes as many decoder layers as encoder
                             # layers, which the tiny T5 has not
                             use_cache=not model.config.is_encoder_decoder)
    skip = 1 if model.config.is_encoder_decoder else ids.shape[1]   # decoder start / prompt
    return out[:, skip:].tolist()


def main() -> None:
    expected = {}
    for seed, name in enumerate(MODELS):
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(HERE / name) if name.startswith("t5") \
            else tf.AutoModelForCausalLM.from_pretrained(HERE / name)
        model.eval()
        model.generation_config.eos_token_id = None   # always NEW_TOKENS tokens
        ids, mask = prompts(seed, model.config.vocab_size)
        expected[name] = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                          "greedy": continuation(model, ids, mask, 1),
                          "beam2": continuation(model, ids, mask, 2)}
        print(name, expected[name]["greedy"], expected[name]["beam2"])
    (HERE / "generations.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
