"""Beam search over a generate engine (inference/generate.py), with Hugging Face's scoring.

Each prompt keeps `num_beams` running sequences, scored by their summed log-probabilities. Each
step takes the best 2 x num_beams continuations of all of them: one that ends in EOS among the
best num_beams becomes a finished hypothesis scored sum / generated_length ** length_penalty;
the others fill the beams again, and the cache rows follow their beams. A prompt is done when it
has num_beams hypotheses and no running beam can beat the worst (early_stopping=False); at the
end the running beams count as hypotheses too, and the best one is returned.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from foundations.inference.sampling import process_logits


@partial(jax.jit, static_argnames=("candidates", "vocab_size", "repetition_penalty"))
def _candidates(logits, prev_ids, beam_scores, candidates, vocab_size, repetition_penalty):
    """The best `candidates` (beam, token) continuations per prompt: scores, beam, token."""
    rows, _ = logits.shape
    log_probs = jax.nn.log_softmax(logits[:, :vocab_size].astype(jnp.float32), axis=-1)
    log_probs = process_logits(log_probs, prev_ids, temperature=0.0,
                               repetition_penalty=repetition_penalty)
    batch, beams = beam_scores.shape
    scores = (beam_scores.reshape(rows, 1) + log_probs).reshape(batch, beams * log_probs.shape[-1])
    top, index = jax.lax.top_k(scores, candidates)
    return top, index // log_probs.shape[-1], index % log_probs.shape[-1]


def beam_search(engine, prev_ids: np.ndarray, offset: int, batch: int, num_beams: int,
                max_new_tokens: int, vocab_size: int | None, repetition_penalty: float,
                length_penalty: float, eos_token_id: int | None, pad_token_id: int) -> np.ndarray:
    """New tokens (batch, max_new_tokens) of the best hypothesis per prompt. `engine` yields
    logits for batch * num_beams rows (each prompt repeated) and takes (tokens, rows);
    prev_ids (rows, offset + max_new_tokens) holds the prompts, -1 after them."""
    vocab = vocab_size
    beam_scores = np.full((batch, num_beams), -1e9, np.float32)
    beam_scores[:, 0] = 0.0                      # the beams start identical: keep one
    finished = [[] for _ in range(batch)]        # (score, tokens) per prompt
    done = np.zeros(batch, bool)
    logits = next(engine)
    vocab = vocab or logits.shape[-1]
    for t in range(max_new_tokens):
        top, beam, token = (np.asarray(x) for x in _candidates(
            logits, jnp.asarray(prev_ids), jnp.asarray(beam_scores), 2 * num_beams, vocab,
            repetition_penalty))
        rows = np.zeros(batch * num_beams, np.int32)
        tokens = np.full(batch * num_beams, pad_token_id, np.int32)
        for b in range(batch):
            base, kept = b * num_beams, 0
            for rank in range(2 * num_beams):
                if done[b] or kept == num_beams:
                    break
                source = base + beam[b, rank]
                if eos_token_id is not None and token[b, rank] == eos_token_id:
                    if rank < num_beams:
                        hypothesis = np.append(prev_ids[source, offset:offset + t], eos_token_id)
                        _add(finished[b], num_beams, top[b, rank] / (t + 1) ** length_penalty,
                             hypothesis)
                    continue
                rows[base + kept], tokens[base + kept] = source, token[b, rank]
                beam_scores[b, kept] = top[b, rank]
                kept += 1
            if done[b]:
                rows[base:base + num_beams] = np.arange(base, base + num_beams)
            elif len(finished[b]) == num_beams:
                worst = min(score for score, _ in finished[b])
                done[b] = worst >= beam_scores[b].max() / (t + 1) ** length_penalty
        prev_ids = prev_ids[rows]
        prev_ids[:, offset + t] = tokens
        if done.all() or t + 1 == max_new_tokens:
            break
        logits = engine.send((tokens, rows))
    engine.close()
    out = np.full((batch, max_new_tokens), pad_token_id, np.int32)
    for b in range(batch):
        if not done[b]:
            for k in range(num_beams):
                _add(finished[b], num_beams,
                     beam_scores[b, k] / (t + 1) ** length_penalty,
                     prev_ids[b * num_beams + k, offset:offset + t + 1])
        best = max(finished[b], key=lambda item: item[0])[1]
        out[b, :len(best)] = best
    return out


def _add(hypotheses: list, num_beams: int, score: float, tokens: np.ndarray) -> None:
    """Keeps the num_beams best finished hypotheses of one prompt."""
    hypotheses.append((float(score), np.array(tokens)))
    if len(hypotheses) > num_beams:
        hypotheses.remove(min(hypotheses, key=lambda item: item[0]))
