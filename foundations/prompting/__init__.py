"""Prompting on top of `generate`: few-shot and chain-of-thought prompts, self-consistency,
retrieval-augmented generation (BM25) and the context-extension perplexity table."""
