"""Exact-match accuracy of a run's greedy answers on held-out (prompt, response) examples."""

from __future__ import annotations

import numpy as np

from foundations.inference import generate
from foundations.post.data import read_jsonl


def answer_accuracy(model, params, tokenizer, examples: list[dict], template: str,
                    max_new_tokens: int = 8, batch_size: int = 64) -> float:
    """Share of examples whose greedy continuation of template(prompt), up to end-of-text,
    is exactly the response (prompts left-padded, KV-cached generation)."""
    eos = getattr(tokenizer, "eos_id", None)
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [tokenizer.encode(template.format(prompt=e["prompt"])) for e in chunk]
        width = max(len(p) for p in prompts)
        ids = np.zeros((len(chunk), width), np.int32)
        mask = np.zeros((len(chunk), width), bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, True
        new = generate(model, params, ids, mask, max_new_tokens, eos_token_id=eos,
                       pad_token_id=0, vocab_size=tokenizer.vocab_size)
        for row, example in enumerate(chunk):
            tokens = new[row].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[:tokens.index(eos)]
            correct += tokenizer.decode(tokens) == example["response"]
    return correct / len(examples)


def run_accuracy(run_dir, examples_file: str, limit: int = 0) -> float:
    """answer_accuracy of a run directory (a full fine-tune or a merged LoRA run)."""
    from foundations.run import load_run
    run = load_run(run_dir)
    examples = read_jsonl(examples_file, ("prompt", "response"))
    if limit:
        examples = examples[:limit]
    return answer_accuracy(run.model, run.params, run.tokenizer, examples,
                           run.config.sft.template)
