"""The compiled pieces of training on a mesh: state layout, init, train step and eval step.

The training state is a plain dict {step, params, opt_state, rng}. Parameter shardings come from
the logical axis names the model declares and the rules table; optimizer moments that mirror the
parameters get the same shardings; everything else is replicated. The step functions are jitted
with those shardings, so the same code runs on 1 device or a (stage, data, fsdp, tensor, expert)
mesh.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from foundations.config import Config, ConfigError, scan_unroll_for, validate_stages
from foundations.tokenizers import configured_tokenizer
from foundations.models.families import build_model
from foundations.flops import param_counts, train_flops_per_token
from foundations.objectives import make_objective
from foundations.objectives.base import EVAL
from foundations.parallel.gpipe import Pipeline, check_pipeline
from foundations.parallel.mesh import (RULES, batch_parallelism, batch_sharding, check_divisible,
                                       logical_shardings, replicated)
from foundations.train.optim import make_optimizer


def resolve_scan_unroll(config: Config, mesh: Mesh | None = None) -> Config:
    """`config` with model.scan_unroll=0 (auto) resolved for the mesh's backend (default: JAX's)
    and the depth (config.scan_unroll_for), so trainer.config says what the step uses."""
    if config.model.scan_unroll:
        return config
    backend = (mesh.devices.flat[0].platform if mesh is not None else jax.default_backend())
    unroll = scan_unroll_for(config.model, backend)
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 scan_unroll=unroll))


class Trainer:
    """Model, optimizer and shardings for one config on one mesh, with jitted steps."""

    def __init__(self, config: Config, mesh: Mesh, tokenizer=None):
        config = resolve_scan_unroll(config, mesh)
        self.config, self.model_cfg, self.mesh = config, config.model, mesh
        model_cfg = config.model
        self.seq_len = config.data.seq_len
        self.grad_accum = config.train.grad_accum
        self._check_batch(config.train.batch_size)
        tokenizer = tokenizer or configured_tokenizer(config.data.tokenizer)
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the "
                              f"tokenizer's vocabulary ({tokenizer.vocab_size})")
        self.objective = make_objective(config, tokenizer)
        # plain_model: init and generation (any row count, no microbatches); model: training
        self.plain_model = build_model(config)
        self.pipeline = self._make_pipeline()
        self.model = build_model(config, self.pipeline)
        self.logical_specs = nn.get_partition_spec(
            jax.eval_shape(self._init_params, jax.random.PRNGKey(0)))
        self.tx, self.schedule = make_optimizer(config.optimizer, config.schedule,
                                               config.train.steps, self.logical_specs)
        self.counts = param_counts(model_cfg, config.objective)
        self.flops_per_token = train_flops_per_token(model_cfg, self.seq_len, config.objective)

        abstract = jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0))
        param_shardings = logical_shardings(self.logical_specs, mesh)
        abstract_params = nn.unbox(abstract["params"])
        check_divisible(abstract_params, param_shardings)
        self.state_shardings = {
            "step": replicated(mesh),
            "params": param_shardings,
            "opt_state": _shardings_like_params(abstract["opt_state"], abstract_params,
                                                param_shardings, replicated(mesh)),
            "rng": replicated(mesh),
        }
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(abstract), self.state_shardings)
        self.batch_sharding = batch_sharding(mesh, leading_unsharded=1)
        self._init = jax.jit(lambda rng: nn.unbox(self._init_boxed(rng)),
                             out_shardings=self.state_shardings)
        self._train_step = jax.jit(self._step, donate_argnums=0,
                                   in_shardings=(self.state_shardings, self.batch_sharding),
                                   out_shardings=(self.state_shardings, replicated(mesh)))
        self._eval_step = jax.jit(self._eval, out_shardings=replicated(mesh),
                                  in_shardings=(param_shardings, batch_sharding(mesh)))
        self._logits = jax.jit(self._last_logits, out_shardings=replicated(mesh))

    # ---------------------------------------------------------------- setup
    def _check_batch(self, batch_size: int) -> None:
        micro = batch_size // self.grad_accum
        ways = batch_parallelism(self.mesh)
        if micro % ways:
            raise ConfigError(
                f"train.batch_size={batch_size} / train.grad_accum={self.grad_accum} = {micro} "
                f"sequences per microbatch does not divide over mesh.data x mesh.fsdp = {ways}")
        if micro % jax.process_count():
            raise ConfigError(f"{micro} sequences per microbatch do not divide over "
                              f"{jax.process_count()} processes")

    def _make_pipeline(self) -> Pipeline | None:
        """The pipeline schedule when the mesh has a `stage` axis larger than 1."""
        stages = self.mesh.shape.get("stage", 1)
        if stages == 1:
            return None
        validate_stages(self.config, stages)   # the mesh's stages (config.mesh.stage's check)
        micro = self.config.mesh.microbatches
        rows = self.config.train.batch_size // self.grad_accum
        check_pipeline(stages, micro, self.model_cfg.num_layers, rows, batch_parallelism(self.mesh))
        return Pipeline(stages, micro)

    def _init_params(self, rng):
        """The model's parameters, boxed with their logical axis names."""
        rows = np.zeros((batch_parallelism(self.mesh), self.seq_len + 1), np.int32)
        dummy = self.objective.model_args(self.objective.prepare(rows, 0))
        return self.plain_model.init({"params": rng, "sample": rng}, *dummy)["params"]

    def _init_boxed(self, rng):
        params_rng, dropout_rng = jax.random.split(rng)
        params = self._init_params(params_rng)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": self.tx.init(nn.unbox(params)), "rng": dropout_rng}

    def init_state(self, seed: int | None = None):
        """Fresh parameters and optimizer state, laid out by `state_shardings` (the jit's output
        shardings place them; no activation constraints are needed to initialise)."""
        seed = self.config.train.seed if seed is None else seed
        return self._init(jax.random.PRNGKey(seed))

    # ---------------------------------------------------------------- steps
    def forward(self, params, batch, *, frozen=None, rng=None, train=None, **kwargs):
        """The model on one batch, for every stage: (outputs, final hidden states, aux).

        `batch`: token ids (B, T), or a tuple of the model's positional inputs; `kwargs`: its
        keyword inputs (positions, mask, segments, hidden). `params` is what trains; `frozen`
        what does not (post/: a frozen base), unused here. `train` (default: rng given) turns
        dropout on; without it sampling uses a fixed key. `aux` is the sum of the auxiliary
        losses the layers sowed (MoE router losses); the hidden states are the decoder's
        `final_norm` output (None for other families)."""
        train = rng is not None if train is None else train
        model, variables, args, kwargs, skip = self.model_inputs(
            params, frozen, rng if train else None,
            batch if isinstance(batch, tuple) else (batch,), kwargs)
        deterministic = self.model_cfg.dropout == 0.0 or not train
        rngs = {"sample": jax.random.PRNGKey(0) if rng is None else jax.random.fold_in(rng, 1)}
        if not deterministic:
            rngs["dropout"] = rng
        out, sown = model.apply(variables, *args, deterministic=deterministic, rngs=rngs,
                                mutable=["intermediates"], capture_intermediates=_final_norm,
                                **kwargs)
        sown = dict(sown.get("intermediates", {}))
        captured = sown.pop("final_norm", None)  # captured, not sown: not a loss
        hidden = None if captured is None else captured["__call__"][0][:, skip:]
        aux = sum((jnp.sum(x) for x in jax.tree.leaves(sown)), jnp.zeros((), jnp.float32))
        if skip:
            out = out[:, skip:]
        return out, hidden, aux

    def model_inputs(self, params, frozen, rng, args, kwargs):
        """(module, variables, args, kwargs, leading positions to cut from the outputs) for
        `forward`; post/trainer.py adds adapters here."""
        return self.model, {"params": params}, args, kwargs, 0

    def _apply(self, params, rng, *args, **kwargs):
        """`forward` as the objectives call it: (outputs, aux)."""
        out, _, aux = self.forward(params, args, rng=rng, **kwargs)
        return out, aux

    def loss(self, params, batch, rng, frozen=None):
        """(loss, metrics) of the configured objective (causal LM: next-token cross-entropy) on
        one microbatch; call inside `in_mesh` (rng None: evaluation). `frozen`: parameters that
        are not trained (post/: a frozen base or reference), unused here."""
        return self.objective.loss(self._apply, params, batch, rng)

    def _step(self, state, batch, frozen=None):
        """One optimizer step on a batch of shape (grad_accum, micro_batch, ...) (a dict of
        such arrays for objectives other than causal LM); `frozen` is passed on to `loss`."""
        rng = jax.random.fold_in(state["rng"], state["step"])
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        if self.grad_accum == 1:
            (loss, aux), grads = grad_fn(state["params"], jax.tree.map(lambda x: x[0], batch),
                                         rng, frozen)
        else:
            def accumulate(carry, micro):
                index, tokens = micro
                (loss, aux), grads = grad_fn(state["params"], tokens,
                                             jax.random.fold_in(rng, index), frozen)
                return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None
            first = jax.tree.map(lambda x: x[0], batch)
            aux_shapes = jax.eval_shape(self.loss, state["params"], first, rng, frozen)[1]
            zeros = (jnp.zeros((), jnp.float32),
                     jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), aux_shapes),
                     jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"]))
            (loss, aux, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(self.grad_accum), batch))
            loss, aux, grads = jax.tree.map(lambda x: x / self.grad_accum, (loss, aux, grads))
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "rng": state["rng"]}
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": self.schedule(state["step"]), **aux}
        if self.pipeline is not None:
            metrics["bubble_fraction"] = jnp.float32(self.pipeline.bubble_fraction)
        return new_state, metrics

    def _eval(self, params, batch):
        loss, metrics = self.loss(params, batch, None)
        return {"loss": loss, **metrics}

    def _last_logits(self, params, tokens, index):
        """Logits at position index[row] of each row: what the next token should be."""
        logits = self.plain_model.apply({"params": params}, tokens)
        return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0]

    def in_mesh(self, fn):
        """`fn` run with this trainer's mesh and logical axis rules in effect."""
        def call(*args):
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(RULES):
                return fn(*args)
        return call

    # ---------------------------------------------------------------- public
    def step_work(self) -> tuple[int, float]:
        """(tokens, model FLOPs) one train step really processes: tokens/s and MFU use these.
        Pre-training: batch_size windows of seq_len, each trained (forward + backward)."""
        tokens = self.config.train.batch_size * self.seq_len
        return tokens, tokens * self.flops_per_token

    def put_batch(self, local_rows: np.ndarray, step: int = 0) -> jax.Array:
        """This process's rows (rows, seq_len + 1) -> a global (grad_accum, micro, seq_len + 1)
        array sharded over the batch axes (for objectives other than causal LM, a dict of such
        arrays, made by the objective's transform with randomness from (seed, step))."""
        def put(local_rows):
            rows = local_rows.shape[0]
            local = local_rows.reshape(self.grad_accum, rows // self.grad_accum,
                                       *local_rows.shape[1:])
            global_shape = (self.grad_accum, rows * jax.process_count() // self.grad_accum,
                            *local.shape[2:])
            return jax.make_array_from_process_local_data(self.batch_sharding, local,
                                                          global_shape)
        return jax.tree.map(put, self.objective.prepare(local_rows, step))

    def abstract_batch(self):
        """Shapes and shardings of one training batch (what `put_batch` makes), for compiling
        ahead of time without data."""
        rows = np.zeros((self.config.train.batch_size, self.seq_len + 1), np.int32)
        data = self.config.data
        if data.document_masks:  # packed windows are dicts (data/pipeline.py PackedWindows)
            keys = ("tokens", "segments") + (("positions",) if data.reset_positions else ())
            rows = {key: rows for key in keys}

        def spec(x):
            return jax.ShapeDtypeStruct((self.grad_accum, x.shape[0] // self.grad_accum,
                                         *x.shape[1:]), x.dtype, sharding=self.batch_sharding)
        return jax.tree.map(spec, self.objective.prepare(rows, 0))

    def lower_train_step(self):
        """The train step lowered for this mesh (`.compile()` it for memory and cost reports)."""
        return self.in_mesh(lambda: self._train_step.lower(self.abstract_state,
                                                           self.abstract_batch()))()

    def train_step(self, state, batch):
        return self.in_mesh(self._train_step)(state, batch)

    def eval_metrics(self, params, local_rows: np.ndarray, index: int = 0) -> dict:
        """Loss and the objective's metrics on one batch (the `index`-th validation batch picks
        the objective's fixed evaluation randomness)."""
        def put(x):
            global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
            return jax.make_array_from_process_local_data(batch_sharding(self.mesh), x,
                                                          global_shape)
        batch = jax.tree.map(put, self.objective.prepare(local_rows, index, EVAL))
        return {k: float(v) for k, v in self.in_mesh(self._eval_step)(params, batch).items()}

    def next_token_logits(self, params, tokens: np.ndarray, index) -> np.ndarray:
        """Logits after position `index` (one int, or one per row) for each row of `tokens`
        (rows, seq_len). Rows are repeated up to a multiple of the batch axes so any count runs
        on any mesh."""
        rows = tokens.shape[0]
        ways = batch_parallelism(self.mesh)
        padded_rows = -(-rows // ways) * ways
        padded = np.resize(tokens, (padded_rows, tokens.shape[1]))
        index = np.resize(np.broadcast_to(np.asarray(index, np.int32), (rows,)), (padded_rows,))
        logits = self.in_mesh(self._logits)(params, jnp.asarray(padded), jnp.asarray(index))
        return np.asarray(logits)[:rows]


def _final_norm(module, method_name) -> bool:
    """capture_intermediates filter: the top-level final norm (the decoder's last hidden states)."""
    return module.scope is not None and tuple(module.scope.path) == ("final_norm",)


def _shardings_like_params(opt_state, abstract_params, param_shardings, default):
    """Optimizer-state subtrees shaped like the params (Adam's moments) get the params' shardings;
    every other leaf (step counts) gets `default`."""
    params_structure = jax.tree.structure(abstract_params)

    def is_params_like(node) -> bool:
        return jax.tree.structure(node) == params_structure

    return jax.tree.map(lambda node: param_shardings if is_params_like(node) else default,
                        opt_state, is_leaf=is_params_like)
