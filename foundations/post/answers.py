"""Exact-match accuracy of a run's greedy answers on held-out (prompt, response) examples."""

from __future__ import annotations

from foundations.inference.complete import complete
from foundations.post.data import read_jsonl


def answer_accuracy(model, params, tokenizer, examples: list[dict], template: str,
                    max_new_tokens: int = 8, batch_size: int = 64, stop: str = "") -> float:
    """Share of examples whose greedy continuation of template(prompt), up to end-of-text
    (and, if given, the first `stop` string: a base model that was never taught to end an
    answer writes the next line), is exactly the response (prompts left-padded, KV-cached)."""
    prompts = [template.format(prompt=e["prompt"]) for e in examples]
    answers = complete(model, params, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    if stop:
        answers = [a.split(stop, 1)[0] for a in answers]
    return sum(a == e["response"] for a, e in zip(answers, examples)) / len(examples)


def run_accuracy(run_dir, examples_file: str, limit: int = 0, stop: str = "") -> float:
    """answer_accuracy of a run directory (a full fine-tune, a merged run, or an adapter run:
    run.py load_run applies its adapters)."""
    from foundations.run import load_run
    run = load_run(run_dir)
    examples = read_jsonl(examples_file, ("prompt", "response"))
    if limit:
        examples = examples[:limit]
    return answer_accuracy(run.model, run.params, run.tokenizer, examples,
                           run.config.sft.template, stop=stop)
