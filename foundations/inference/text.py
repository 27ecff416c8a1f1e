"""Text in, text out: a run's tokenizer around `generate`, streaming, with a sliding context.

A decoder writes at most `context` tokens at once (its trained window; learned positions end
there), so a long output is written in rounds: each keeps the last part of the text as the prompt
and writes the rest of the window. A T5 model reads the prompt with its encoder and writes the
whole output with its decoder.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from foundations.inference.generate import generate
from foundations.models.encdec import EncoderDecoder


def generate_text(model, params, tokenizer, prompt: str, max_new_tokens: int, context: int,
                  on_text: Callable[[str], None] | None = None,
                  on_token: Callable[[int], None] | None = None, **sampling) -> str:
    """The text written after `prompt` (up to max_new_tokens tokens, ending early at the
    tokenizer's end-of-text); `on_text` gets each new piece as soon as it decodes, `on_token`
    each new id. `sampling`: generate's temperature, top_k, top_p, min_p, repetition_penalty,
    seed."""
    eos = getattr(tokenizer, "eos_id", None)
    pad = getattr(tokenizer, "pad_id", None)
    pad = (eos if pad is None else pad) or 0
    prompt_ids = tokenizer.encode(prompt) or [eos if eos is not None else 0]
    new: list[int] = []
    shown = ""

    def receive(column: np.ndarray) -> None:
        nonlocal shown
        if eos is not None and eos in new:
            return
        new.append(int(column[0]))
        if on_token is not None:
            on_token(new[-1])
        text = tokenizer.decode([i for i in new if i != eos])
        if on_text is not None and not text.endswith("\ufffd"):  # a partial UTF-8 character
            on_text(text[len(shown):])
            shown = text

    def run(ids: list[int], count: int) -> None:
        searching = sampling.get("num_beams", 1) > 1   # the best beam is known at the end
        out = generate(model, params, np.asarray([ids], np.int32), max_new_tokens=count,
                       eos_token_id=eos, pad_token_id=pad, vocab_size=tokenizer.vocab_size,
                       on_token=None if searching else receive, **sampling)
        if searching:
            for column in out.T:
                receive(column)

    if isinstance(model, EncoderDecoder):
        run(prompt_ids[-context:], max_new_tokens)
    else:
        while len(new) < max_new_tokens and not (eos is not None and eos in new):
            remaining = max_new_tokens - len(new)
            ids = prompt_ids + new
            keep = min(len(ids), context - min(remaining, context // 2))
            run(ids[-keep:], min(remaining, context - keep))
    text = tokenizer.decode([i for i in new if i != eos])
    if on_text is not None and text != shown:
        on_text(text[len(shown):])
    return text
