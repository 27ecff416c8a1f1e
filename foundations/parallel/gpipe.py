"""Pipeline parallelism: the scanned layer stack split into `mesh.stage` stages, run on a GPipe
schedule of `mesh.microbatches` microbatches.

The block parameters keep their (layers, ...) shape; the rules table maps `layers` to the `stage`
mesh axis, so device group s already holds layers [s*L/S, (s+1)*L/S). Inside the step they are
viewed as (stage, layers_per_stage, ...) and the schedule is a `lax.scan` over M + S - 1 ticks of
a `vmap` over stages: each tick, stage 0 takes the next microbatch, every other stage takes what
the stage before it produced on the previous tick (a shift of a stage-sharded array, which XLA
turns into a collective-permute), and the last stage's output is collected. Autodiff of the scan
gives the backward pass in reverse order. The (stage, tick) slots without a real microbatch are the
bubble, (S - 1) / (M + S - 1) of the time (here they compute on zeros that are thrown away).
Checkpoints are the same as without a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ConfigError, ModelConfig

STATE_AXES = ("stage", "batch", "length", "act_embed")


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The share of (stage, tick) slots in which a GPipe stage waits: (S-1)/(M+S-1)."""
    return (stages - 1) / (microbatches + stages - 1)


@dataclass(frozen=True)
class Pipeline:
    """How the decoder runs its blocks: `stages` x (layers/stages) on `microbatches` slices of
    the batch. `Decoder(cfg, pipeline=Pipeline(...))` calls it in place of the scanned blocks."""
    stages: int
    microbatches: int

    @property
    def bubble_fraction(self) -> float:
        return bubble_fraction(self.stages, self.microbatches)

    def __call__(self, cfg: ModelConfig, block_params, x: jax.Array, positions: jax.Array):
        """x (B, T, D) through all cfg.num_layers blocks; same result as the scanned stack."""
        return run_gpipe(cfg, block_params, x, positions, self.stages, self.microbatches)


def check_pipeline(stages: int, microbatches: int, num_layers: int, rows: int,
                   batch_ways: int) -> None:
    """ConfigErrors for a layer count or batch that the pipeline cannot split evenly."""
    if num_layers % stages:
        raise ConfigError(f"model.num_layers={num_layers} is not divisible by mesh.stage={stages}")
    if rows % (microbatches * batch_ways):
        raise ConfigError(
            f"{rows} sequences per step (train.batch_size / train.grad_accum) do not divide into "
            f"mesh.microbatches={microbatches} x mesh.data x mesh.fsdp = {batch_ways} "
            f"({microbatches * batch_ways})")


def _stage_function(cfg: ModelConfig):
    """(stage params (layers_per_stage, ...), x, positions) -> x after this stage's layers."""
    from foundations.models.decoder import REMAT_POLICIES, Block  # decoder imports this module

    block = Block(cfg, deterministic=True)

    def layer(x, params_and_positions):
        params, positions = params_and_positions
        x, _ = block.apply({"params": params}, x, positions)
        return x

    if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)

    def stage(params, x, positions):
        x, _ = jax.lax.scan(lambda h, p: (layer(h, (p, positions)), None), x, params)
        return x

    return stage


def run_gpipe(cfg: ModelConfig, block_params, x: jax.Array, positions: jax.Array,
              stages: int, microbatches: int) -> jax.Array:
    """The GPipe forward schedule over a stage-sharded layer stack (see the module docstring)."""
    S, M = stages, microbatches
    batch, length, width = x.shape
    rows = batch // M
    staged = jax.tree.map(lambda p: p.reshape(S, p.shape[0] // S, *p.shape[1:]), block_params)
    # Microbatch m is rows m, m+M, m+2M, ...: reshaping (B,) -> (rows, M) keeps every row on the
    # device that holds it when `rows` divides over the batch axes, so the split moves no data.
    inputs = x.reshape(rows, M, length, width).swapaxes(0, 1)
    input_positions = positions.reshape(rows, M, length).swapaxes(0, 1)
    run_stages = jax.vmap(_stage_function(cfg), spmd_axis_name="stage")

    def tick(carry, i):
        state, state_positions = carry
        feed = jax.lax.dynamic_index_in_dim(inputs, i % M, keepdims=True)
        feed_positions = jax.lax.dynamic_index_in_dim(input_positions, i % M, keepdims=True)
        # shift by one stage: stage s gets stage s-1's output, stage 0 the next microbatch
        state = jnp.concatenate([feed, state[:-1]], axis=0)
        state_positions = jnp.concatenate([feed_positions, state_positions[:-1]], axis=0)
        state = nn.with_logical_constraint(state, STATE_AXES)
        state = run_stages(staged, state, state_positions)
        state = nn.with_logical_constraint(state, STATE_AXES)
        return (state, state_positions), state[-1]

    init = (jnp.zeros((S, rows, length, width), x.dtype),
            jnp.zeros((S, rows, length), positions.dtype))
    _, finished = jax.lax.scan(tick, init, jnp.arange(M + S - 1))
    outputs = finished[S - 1:]  # tick t finishes microbatch t - (S - 1)
    return outputs.swapaxes(0, 1).reshape(batch, length, width)
