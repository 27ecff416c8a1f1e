"""Autoregressive generation against a KV cache: a jitted prefill, then one jitted step per token.

The prompt runs once ("prefill") and fills a preallocated cache of keys and values
(models/kv_cache.py); each new token then costs one position of compute ("step"), where
recomputing the whole sequence costs all of them. Batches are left-padded: row r's tokens sit at
the right end, its positions count from its first real token, and padding is masked out. A T5
model runs its encoder once; its decoder starts from `decoder_start_token_id` and cross-attends to
keys and values cached at the prefill. `use_cache=False` recomputes the whole sequence for every
token instead (the reference the tests compare with, and the benchmark's baseline).

The cached path decodes from per-layer weights (`decoding_layout`): the stacked `layers` axis of
the (decoder) blocks' parameters is split once per call into one array per layer, and the model
runs its blocks one after another over them, so a step reads each weight once in place (XLA:CPU
copies a stacked layer's slice before its matmuls, about twice the reads of a batch-1 step).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from foundations.config import UNROLL_ALL_LAYERS, ConfigError
from foundations.inference.beam import beam_search
from foundations.inference.sampling import choose, process_logits
from foundations.models.adapters import prefix_specs, with_prefix
from foundations.models.decoder import Decoder, per_layer_params
from foundations.models.encdec import EncoderDecoder
from foundations.parallel.mesh import RULES, batch_parallelism, check_divisible, logical_shardings


class Sampling(NamedTuple):
    """How the next token is picked (static under jit: one compile per setting)."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int = 0
    vocab_size: int | None = None


def check_sampling(s: Sampling, max_new_tokens: int, as_flags: bool = False) -> None:
    """One line naming the first bad setting (as the command line's --flag when as_flags)."""
    def name(key):
        return "--" + key.replace("_", "-") if as_flags else key
    problems = [(s.temperature < 0, "temperature", s.temperature, ">= 0"),
                (s.top_k < 0, "top_k", s.top_k, ">= 0 (0: off)"),
                (not 0 < s.top_p <= 1, "top_p", s.top_p, "in (0, 1]"),
                (not 0 <= s.min_p <= 1, "min_p", s.min_p, "in [0, 1]"),
                (s.repetition_penalty <= 0, "repetition_penalty", s.repetition_penalty,
                 "> 0 (1: off)"),
                (max_new_tokens < 1, "max_new_tokens", max_new_tokens, ">= 1")]
    for bad, key, value, allowed in problems:
        if bad:
            raise ConfigError(f"{name(key)} must be {allowed} (got {value})")


@partial(jax.jit, static_argnames=("settings",))
def _pick(settings: Sampling, logits, prev_ids, finished, key, t):
    """The next token of each row (pad once a row has produced EOS), and the rows now done."""
    logits = logits[:, :settings.vocab_size]
    processed = process_logits(logits, prev_ids, settings.temperature, settings.top_k,
                               settings.top_p, settings.min_p, settings.repetition_penalty)
    token = choose(processed, jax.random.fold_in(key, t), settings.temperature)
    token = jnp.where(finished, settings.pad_token_id, token)
    if settings.eos_token_id is not None:
        finished = finished | (token == settings.eos_token_id)
    return token, finished


@partial(jax.jit, static_argnames=("model", "mode"))
def _decoder_cached(model, mode, variables, cache, tokens, positions):
    logits, updated = model.apply({**variables, "cache": cache}, tokens, positions, decode=mode,
                                  mutable=["cache"])
    return logits[:, -1].astype(jnp.float32), updated["cache"]


@partial(jax.jit, static_argnames=("model", "mode"))
def _encdec_cached(model, mode, variables, cache, encoded, padding, tokens, positions):
    logits, updated = model.apply({**variables, "cache": cache}, encoded, tokens, positions,
                                  padding, mode, method="decode", mutable=["cache"])
    return logits[:, -1].astype(jnp.float32), updated["cache"]


@partial(jax.jit, static_argnames=("model",))
def _encode(model, variables, inputs, padding):
    return model.apply(variables, inputs, padding, method="encode")


@partial(jax.jit, static_argnames=("model",))
def _decoder_full(model, variables, tokens, positions, valid, index):
    """Logits at column `index` of the whole (left-padded) sequence, recomputed from scratch."""
    length = tokens.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None] & valid[:, None, None, :]
    logits = model.apply(variables, tokens, positions, mask=mask)
    return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False).astype(jnp.float32)


@partial(jax.jit, static_argnames=("model",))
def _encdec_full(model, variables, inputs, padding, decoder_tokens, index):
    logits = model.apply(variables, inputs, decoder_tokens, padding)
    return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False).astype(jnp.float32)


def cache_slots(cfg, prompt_length: int, max_new_tokens: int) -> int:
    """Slots per row of a decoder's self-attention cache: the whole sequence, or for a
    sliding-window model the window (a ring buffer)."""
    size = prompt_length + max_new_tokens
    return min(size, cfg.local_window_size) if cfg.local_window_size else size


def _unpack(sent):
    """What an engine was sent: (tokens, rows to reorder by, or None)."""
    return sent if isinstance(sent, tuple) else (sent, None)


@jax.jit
def _reorder_cache(cache, rows):
    """Row r of every cache entry becomes row rows[r]: the stack's slot positions (B, S) on
    axis 0, a layer's keys and values (B, S, heads, head_dim) on axis 0, or on axis 1 when
    stacked (layers, B, ...)."""
    def take(path, x):
        if x.ndim <= 1:   # write indices
            return x
        axis = 0 if jax.tree_util.keystr(path).endswith("['positions']") else x.ndim - 4
        return jnp.take(x, rows, axis=axis)
    return jax.tree_util.tree_map_with_path(take, cache)


def decoding_layout(model, variables, backend: str | None = None):
    """The model and variables the cached path decodes with: the (decoder) blocks' stacked
    parameters split into one array per layer (models/decoder.py per_layer_params) and the model
    running them as a LayerList, the same blocks, so the same logits; on the CPU, and on any
    backend for stacks of at most UNROLL_ALL_LAYERS blocks (a deeper stack keeps the scan on an
    accelerator, where unrolling it would grow the compile with depth). Unchanged for a
    pipelined model or one already per layer."""
    stack = "decoder" if isinstance(model, EncoderDecoder) else "blocks"
    layers = (model.cfg.num_decoder_layers or model.cfg.num_layers) if stack == "decoder" \
        else model.cfg.num_layers
    backend = backend or jax.default_backend()
    if (model.per_layer or getattr(model, "pipeline", None) is not None
            or stack not in variables["params"]
            or (backend != "cpu" and layers > UNROLL_ALL_LAYERS)):
        return model, variables
    params = {**variables["params"], stack: per_layer_params(variables["params"][stack])}
    return model.clone(per_layer=True), {**variables, "params": params}


def _empty_cache(call, *example):
    """Zeros shaped like the 'cache' collection a prefill on `example` makes."""
    shapes = jax.eval_shape(call, *example)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _as_variables(params) -> dict:
    """model.apply's variables: {'params': ...} as given, or the bare parameter tree wrapped;
    numpy leaves (from_hf's) become JAX arrays, which traced indices can index."""
    variables = params if isinstance(params, dict) and set(params) == {"params"} else {
        "params": params}
    return jax.tree.map(jnp.asarray, variables)


def _prompts(input_ids, attention_mask):
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"input_ids must be a (batch, length) integer array, got shape "
                          f"{ids.shape} and dtype {ids.dtype}")
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask,
                                                                               bool)
    if mask.shape != ids.shape:
        raise ConfigError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ConfigError("attention_mask: pad prompts on the left (a padding position follows "
                          "a real token)")
    if not mask[:, -1].all():
        raise ConfigError("attention_mask: every row needs at least one real token")
    return ids.astype(np.int32), mask


def generate(model, params, input_ids, attention_mask=None, max_new_tokens: int = 24,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             repetition_penalty: float = 1.0, eos_token_id: int | None = None,
             pad_token_id: int = 0, seed: int = 0, *, num_beams: int = 1,
             length_penalty: float = 1.0, decoder_start_token_id: int | None = None,
             vocab_size: int | None = None, use_cache: bool = True,
             on_token: Callable[[np.ndarray], None] | None = None, mesh=None) -> np.ndarray:
    """New token ids (batch, max_new_tokens) after left-padded prompts `input_ids` (batch,
    length) (a T5 model: the encoder's input). temperature 0 is greedy; a row that produced
    `eos_token_id` is filled with `pad_token_id` after it. `vocab_size` keeps sampling off the
    embedding table's padding rows; `on_token` gets each new column (batch,) as it comes.
    num_beams > 1: beam search (inference/beam.py; deterministic, no on_token). `mesh`: sharded
    like training, parameters by the rules table and prompt rows over the batch axes (rows are
    repeated up to a multiple of them; the repeats are dropped from the result)."""
    settings = Sampling(float(temperature), int(top_k), float(top_p), float(min_p),
                        float(repetition_penalty), eos_token_id, int(pad_token_id), vocab_size)
    check_sampling(settings, max_new_tokens)
    model = getattr(model, "module", model)   # from_hf's model: the flax module it wraps
    if not isinstance(model, (Decoder, EncoderDecoder)):
        raise ConfigError(f"generate needs a decoder or an encoder-decoder model, not "
                          f"{type(model).__name__} (an encoder has no generative head)")
    variables = _as_variables(params)
    ids, mask = _prompts(input_ids, attention_mask)
    batch, length = ids.shape
    steps = max_new_tokens
    if num_beams < 1:
        raise ConfigError(f"num_beams={num_beams} must be >= 1")
    if num_beams > 1 and (temperature or top_k or top_p < 1 or min_p):
        raise ConfigError("num_beams > 1 searches, it does not sample: leave temperature, top_k, "
                          "top_p and min_p off")
    longest = max(length, steps) if isinstance(model, EncoderDecoder) else length + steps
    if model.cfg.positions.kind == "learned" and longest > model.cfg.max_seq_len:
        raise ConfigError(f"{length} prompt + {steps} new tokens exceed model.max_seq_len="
                          f"{model.cfg.max_seq_len}, the learned position table")
    if mesh is not None:
        variables, ids, mask = _on_mesh(model, variables, ids, mask, mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
            watch = None if on_token is None else (lambda column: on_token(column[:batch]))
            return _decode(model, variables, ids, mask, settings, steps, num_beams,
                           length_penalty, decoder_start_token_id, use_cache, seed,
                           watch)[:batch]
    return _decode(model, variables, ids, mask, settings, steps, num_beams, length_penalty,
                   decoder_start_token_id, use_cache, seed, on_token)


def _on_mesh(model, variables, ids, mask, mesh):
    """Parameters laid out by their logical axes and the rules table (as training lays them
    out), and the prompts' rows, repeated up to a multiple of the batch axes, split over them."""
    example = (ids[:1], ids[:1, :1]) if isinstance(model, EncoderDecoder) else (ids[:1],)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example)
    logical = nn.get_partition_spec(boxed)["params"]
    params = variables["params"]
    if "prefix_key" in params.get("blocks", {}).get("attention", {}):   # a prefix-tuned run:
        logical = with_prefix(logical, prefix_specs())
    if getattr(model, "soft_prompt", 0):   # a prompt-tuned run's V + P table rows need not
        # divide by the tensor axis: the table (and an untied head) replicated over it
        logical = jax.tree.map(lambda spec: PartitionSpec(*(None if axis == "vocab" else axis
                                                            for axis in spec)),
                               logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
    shardings = logical_shardings(logical, mesh)
    check_divisible(params, shardings)
    variables = jax.device_put({"params": params}, {"params": shardings})
    ways = batch_parallelism(mesh)
    rows = -(-len(ids) // ways) * ways
    ids, mask = np.resize(ids, (rows, ids.shape[1])), np.resize(mask, (rows, ids.shape[1]))
    return variables, ids, mask


def _decode(model, variables, ids, mask, settings, steps, num_beams, length_penalty,
            decoder_start_token_id, use_cache, seed, on_token):
    """generate's loop over new tokens (or beam search) for checked, left-padded prompts."""
    batch, length = ids.shape
    pad_token_id, eos_token_id = settings.pad_token_id, settings.eos_token_id
    vocab_size, repetition_penalty = settings.vocab_size, settings.repetition_penalty
    if num_beams > 1:   # each prompt repeated: one row per beam
        ids, mask = np.repeat(ids, num_beams, axis=0), np.repeat(mask, num_beams, axis=0)
    rows = len(ids)
    if use_cache:
        model, variables = decoding_layout(model, variables)
    if isinstance(model, EncoderDecoder):
        start = pad_token_id if decoder_start_token_id is None else decoder_start_token_id
        prev = np.full((rows, 1 + steps), -1, np.int32)
        prev[:, 0] = start
        next_logits = encdec_steps(model, variables, ids, mask, start, steps, use_cache)
        offset = 1
    else:
        prev = np.concatenate([ids, np.full((rows, steps), -1, np.int32)], axis=1)
        next_logits = decoder_steps(model, variables, ids, mask, steps, use_cache)
        offset = length
    if num_beams > 1:
        return beam_search(next_logits, prev, offset, batch, num_beams, steps, vocab_size,
                           float(repetition_penalty), float(length_penalty), eos_token_id,
                           int(pad_token_id))
    key = jax.random.PRNGKey(seed)
    if on_token is None and use_cache:   # nothing streams: the whole loop in one jit
        next_logits.close()
        if isinstance(model, EncoderDecoder):
            logits, cache, extras = _encdec_prefill(model, variables, ids, mask, start, steps)
        else:
            logits, cache, extras = _decoder_prefill(model, variables, ids, mask, steps)
        out, _ = _fused_decode(model, settings, steps, offset, variables, cache, logits,
                               jnp.asarray(prev), key, extras)
        return np.asarray(out)
    finished = jnp.zeros((batch,), bool)
    out = np.full((batch, steps), pad_token_id, np.int32)
    logits = next(next_logits)
    for t in range(steps):
        token, finished = _pick(settings, logits, jnp.asarray(prev), finished, key, t)
        out[:, t] = prev[:, offset + t] = np.asarray(token)
        if on_token is not None:
            on_token(out[:, t])
        if t + 1 == steps or bool(finished.all()):
            break
        logits = next_logits.send(token)
    next_logits.close()
    return out


@partial(jax.jit, static_argnames=("model", "settings", "steps", "offset"), donate_argnums=5)
def _fused_decode(model, settings, steps, offset, variables, cache, logits, prev, key, extras):
    """generate's token loop without streaming, in one XLA while loop (the cache donated):
    the same picks as the Python loop of _decode, stopping once every row has produced EOS.
    `extras`: a decoder's first new positions (B,), an encoder-decoder's (encoded, padding)."""
    rows = logits.shape[0]

    def pick(logits, prev, finished, t):
        token, finished = _pick(settings, logits, prev, finished, key, t)
        prev = jax.lax.dynamic_update_slice_in_dim(prev, token[:, None], offset + t, axis=1)
        return token, prev, finished

    def step(cache, token, t):
        if isinstance(model, EncoderDecoder):
            encoded, padding = extras
            positions = jnp.full((rows, 1), 1 + t, jnp.int32)
            logits, updated = model.apply({**variables, "cache": cache}, encoded,
                                          token[:, None], positions, padding, "step",
                                          method="decode", mutable=["cache"])
        else:
            positions = (extras + t)[:, None]
            logits, updated = model.apply({**variables, "cache": cache}, token[:, None],
                                          positions, decode="step", mutable=["cache"])
        return logits[:, -1].astype(jnp.float32), updated["cache"]

    out = jnp.full((rows, steps), settings.pad_token_id, jnp.int32)
    token, prev, finished = pick(logits, prev, jnp.zeros((rows,), bool), 0)
    out = out.at[:, 0].set(token)

    def more(carry):
        t, _, _, _, finished, _ = carry
        return (t < steps) & ~finished.all()

    def body(carry):
        t, cache, token, prev, finished, out = carry
        logits, cache = step(cache, token, t - 1)
        token, prev, finished = pick(logits, prev, finished, t)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
        return t + 1, cache, token, prev, finished, out

    carry = (jnp.int32(1), cache, token, prev, finished, out)
    carry = jax.lax.while_loop(more, body, carry)
    return carry[-1], carry[1]   # the cache too: its buffers are the donated ones, updated in place


def _decoder_prefill(model, variables, ids, mask, steps):
    """The prompt's pass: (next-token logits, the filled cache, each row's first new position)."""
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, -1).astype(np.int32)
    size = cache_slots(model.cfg, ids.shape[1], steps)
    example = jnp.zeros((len(ids), size), jnp.int32)
    cache = _empty_cache(lambda t: model.apply(variables, t, t - 1, decode="prefill",
                                               mutable=["cache"])[1]["cache"], example)
    logits, cache = _decoder_cached(model, "prefill", variables, cache, ids, positions)
    return logits, cache, jnp.asarray(positions[:, -1] + 1)


def _encdec_prefill(model, variables, ids, mask, start, steps):
    """An encoder-decoder's: the encoder once, the decoder's start token; extras (encoded, mask)."""
    batch = len(ids)
    encoded = _encode(model, variables, ids, mask)
    example = jnp.zeros((batch, steps), jnp.int32)
    cache = _empty_cache(lambda e, t: model.apply(variables, e, t, t, mask, "prefill",
                                                  method="decode", mutable=["cache"])[1]["cache"],
                         encoded, example)
    logits, cache = _encdec_cached(model, "prefill", variables, cache, encoded, mask,
                                   jnp.full((batch, 1), start, jnp.int32),
                                   jnp.zeros((batch, 1), jnp.int32))
    return logits, cache, (encoded, jnp.asarray(mask))


def decoder_steps(model, variables, ids, mask, steps, use_cache):
    """The engine of `generate`: a generator of next-token logits (batch, vocab), first after
    the left-padded prompts ids (mask: real tokens), then after each token column (batch,) sent
    to it, for up to `steps` tokens (the cache's size). Beam search sends (tokens, rows): row r
    continues the sequence of row rows[r], so the cache is reordered first."""
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, -1).astype(np.int32)
    last = positions[:, -1]
    if use_cache:
        model, variables = decoding_layout(model, variables)
    else:
        tokens = np.concatenate([ids, np.zeros((len(ids), steps), np.int32)], axis=1)
        full_positions = np.concatenate([positions, last[:, None] + 1 + np.arange(steps)], 1)
        valid = np.concatenate([mask, np.ones((len(ids), steps), bool)], axis=1)
        for t in range(steps):
            logits = _decoder_full(model, variables, jnp.asarray(tokens), full_positions, valid,
                                   ids.shape[1] - 1 + t)
            token, rows = _unpack((yield logits))
            tokens = tokens if rows is None else tokens[rows]
            tokens[:, ids.shape[1] + t] = np.asarray(token)
        return
    logits, cache, _ = _decoder_prefill(model, variables, ids, mask, steps)
    for t in range(steps):
        token, rows = _unpack((yield logits))
        cache = cache if rows is None else _reorder_cache(cache, jnp.asarray(rows))
        logits, cache = _decoder_cached(model, "step", variables, cache, token[:, None],
                                        jnp.asarray(last + 1 + t)[:, None])


def encdec_steps(model, variables, ids, mask, start, steps, use_cache):
    """As decoder_steps, for an encoder-decoder: the encoder runs once."""
    batch = len(ids)
    decoder_tokens = np.full((batch, steps), start, np.int32)
    if use_cache:
        model, variables = decoding_layout(model, variables)
    else:
        for t in range(steps):
            token, rows = _unpack((yield _encdec_full(model, variables, ids, mask,
                                                      jnp.asarray(decoder_tokens), t)))
            decoder_tokens = decoder_tokens if rows is None else decoder_tokens[rows]
            if t + 1 < steps:
                decoder_tokens[:, t + 1] = np.asarray(token)
        return
    encoded = _encode(model, variables, ids, mask)
    example = jnp.zeros((batch, steps), jnp.int32)
    cache = _empty_cache(lambda e, t: model.apply(variables, e, t, t, mask, "prefill",
                                                  method="decode", mutable=["cache"])[1]["cache"],
                         encoded, example)
    positions = jnp.zeros((batch, 1), jnp.int32)
    logits, cache = _encdec_cached(model, "prefill", variables, cache, encoded, mask,
                                   decoder_tokens[:, :1], positions)
    for t in range(steps):
        token, rows = _unpack((yield logits))
        cache = cache if rows is None else _reorder_cache(cache, jnp.asarray(rows))
        logits, cache = _encdec_cached(model, "step", variables, cache, encoded, mask,
                                       token[:, None], positions + 1 + t)
