"""The shared Trainer for post-training: trainable parameters plus a frozen part, and a task.

What trains is the whole model, or only adapters (LoRA, a soft prompt) on a frozen base, plus a
reward head for reward models. The frozen trees (the base; DPO's reference, which is the same
init_from policy) are an argument of the jitted step, never constants baked into it, and never
in the checkpoint. The training state is the Trainer's {step, params, opt_state, rng}, so the
optimizer state holds only what trains; a full fine-tune's params are the model's own tree, so
`foundations generate` and `eval` read its run directory as they read a pre-training run.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from foundations.config import ConfigError, replace
from foundations.models.families import build_model
from foundations.parallel.mesh import batch_sharding, logical_shardings, replicated
from foundations.post import adapters
from foundations.train.trainer import Trainer
from foundations.train.warm_start import params_from_run


def method(config) -> str:
    """'lora', 'prompt', 'prefix' or 'full' (every parameter trains)."""
    chosen = [name for name, on in (("lora", config.lora.rank), ("prompt",
              config.prompt_tuning.num_tokens), ("prefix", config.prefix_tuning.num_tokens))
              if on]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of lora.rank, prompt_tuning.num_tokens, "
                          f"prefix_tuning.num_tokens (set: {', '.join(chosen)})")
    return chosen[0] if chosen else "full"


class PostTrainer(Trainer):
    """A Trainer whose state params are what trains and whose loss is `task`'s (post/stages.py).
    `init_from` parameters (or, without train.init_from, a random model) become the base."""

    def __init__(self, config, mesh, tokenizer, task, log=print):
        self.task, self.method = task, method(config)
        m = config.model
        if self.method == "prefix" and (m.local_window_size or m.positions.kind in
                                        ("alibi", "t5_bias")):
            raise ConfigError("prefix tuning needs attention without a sliding window or a "
                              "position bias (model.local_window_size=0, positions.kind not "
                              "alibi/t5_bias)")
        if config.model.family != "decoder" or config.mesh.stage > 1:
            raise ConfigError("post-training runs decoder models (model.family=decoder) with "
                              "mesh.stage=1")
        self.vocab_size = config.model.vocab_size
        self.num_prompt = config.prompt_tuning.num_tokens
        if m.positions.kind == "learned" and config.data.seq_len + self.num_prompt > \
                m.max_seq_len:
            raise ConfigError(f"data.seq_len={config.data.seq_len} + prompt_tuning.num_tokens="
                              f"{self.num_prompt} exceeds model.max_seq_len={m.max_seq_len}")
        super().__init__(config, mesh, tokenizer)   # its causal-LM objective passes rows on
        base_boxed = jax.eval_shape(super()._init_params, jax.random.PRNGKey(0))
        self.base_specs = nn.get_partition_spec(base_boxed)
        base_shardings = logical_shardings(self.base_specs, mesh)
        self.abstract_base = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(base_boxed), base_shardings)
        self.lora_targets = adapters.lora_targets(self.base_specs, config.lora.targets)
        if self.num_prompt:  # the tuned model reads vocab_size + num_prompt embedding rows
            self.prompt_model = build_model(replace(
                config, {"model.vocab_size": self.vocab_size + self.num_prompt}))
        base = self._load_base(log)
        self.frozen = {} if self.method == "full" and not task.needs_reference else \
            {"base": base}
        self._initial_base = base if self.method == "full" else None
        frozen_shardings = {k: base_shardings for k in self.frozen}
        self._train_step = jax.jit(
            lambda state, frozen, batch: self._step(state, batch, frozen), donate_argnums=0,
            in_shardings=(self.state_shardings, frozen_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, replicated(mesh)))
        self._post_eval = jax.jit(
            lambda params, frozen, batch: self.loss(params, batch, None, frozen),
            in_shardings=(self.state_shardings["params"], frozen_shardings,
                          batch_sharding(mesh)), out_shardings=replicated(mesh))

    # ---------------------------------------------------------------- parameters
    def _load_base(self, log):
        tc = self.config.train
        if not tc.init_from:
            log("no train.init_from: the base model is randomly initialised")
            init = jax.jit(lambda rng: nn.unbox(super(PostTrainer, self)._init_params(rng)),
                           out_shardings=jax.tree.map(lambda x: x.sharding, self.abstract_base))
            return self.in_mesh(init)(jax.random.PRNGKey(tc.seed))
        return params_from_run(tc.init_from, tc.init_step, self, wanted=self.abstract_base)

    def _init_params(self, rng):
        """The trainable parameters, boxed with logical names (the optimizer sees only these)."""
        base = super()._init_params(rng)
        if self.method == "lora":
            shapes = {adapters.path_name(p): x.shape for p, x in
                      jax.tree_util.tree_flatten_with_path(nn.unbox(base))[0]}
            targets = adapters.lora_targets(nn.get_partition_spec(base),
                                            self.config.lora.targets)
            if not targets:
                raise ConfigError(f"lora.targets={self.config.lora.targets!r} matches no kernel")
            params = {"lora": adapters.init_lora(jax.random.fold_in(rng, 1), shapes, targets,
                                                 self.config.lora.rank)}
        elif self.method == "prompt":
            params = {"prompt": adapters.init_soft_prompt(
                jax.random.fold_in(rng, 1), self.num_prompt, self.model_cfg.d_model,
                self.model_cfg.init_std)}
        elif self.method == "prefix":
            params = {"prefix": adapters.init_prefix(
                jax.random.fold_in(rng, 1), self.config.prefix_tuning.num_tokens,
                self.model_cfg)}
        else:
            params = base
        head = self.task.init_head(jax.random.fold_in(rng, 2), self.model_cfg)
        if head is not None:
            params = {"model": params, "head": head} if self.method == "full" else \
                {**params, "head": head}
        return params

    def init_state(self, seed: int | None = None):
        """Fresh adapters (or, fully fine-tuning, a copy of the base) and optimizer state."""
        state = super().init_state(seed)
        if self.method != "full":
            return state
        model = jax.tree.map(lambda x: x.copy(), self._initial_base)  # state is donated
        params = {**state["params"], "model": model} if "head" in state["params"] else model
        return {**state, "params": params}

    def trainable_count(self) -> tuple[int, int]:
        """(trainable parameters, base model parameters)."""
        return adapters.count(self.abstract_state["params"]), adapters.count(self.abstract_base)

    def model_params(self, params, frozen, rng=None):
        """The decoder's parameters for trainable `params` (None: the frozen base itself)."""
        if params is None:
            return frozen["base"]
        if self.method == "lora":
            lora = self.config.lora
            return adapters.apply_lora(frozen["base"], params["lora"], self.lora_targets,
                                       lora.alpha / lora.rank, lora.dropout, rng)
        if self.method == "prompt":
            return adapters.with_soft_prompt(frozen["base"], params["prompt"])
        if self.method == "prefix":
            return frozen["base"]
        return params["model"] if "head" in params else params

    def merged(self, params, frozen=None):
        """The model's own parameter tree with the adapters folded in (export, generate; a
        soft prompt stays extra embedding rows, and prefixes do not fold into weights)."""
        return self.model_params(params, self.frozen if frozen is None else frozen)

    # ---------------------------------------------------------------- forward
    def forward(self, params, frozen, rng, tokens, positions=None, mask=None):
        """(logits over the base vocabulary, final hidden states) of the policy (`params`) or
        of the frozen reference (`params` None), on inputs (B, T)."""
        variables = {"params": self.model_params(params, frozen, rng)}
        if self.method == "prefix" and params is not None:
            variables["prefix"] = params["prefix"]
        rows, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
        if mask is None:
            mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        mask = jnp.broadcast_to(mask, (rows, 1, length, length))
        model = self.model
        if self.num_prompt and params is not None:
            tokens, positions, mask = self._prepend_prompt(tokens, positions, mask)
            model = self.prompt_model
        deterministic = self.model_cfg.dropout == 0.0 or rng is None
        rngs = {"sample": jax.random.PRNGKey(0) if rng is None else jax.random.fold_in(rng, 1)}
        if not deterministic:
            rngs["dropout"] = rng
        logits, sown = model.apply(
            variables, tokens, positions, deterministic=deterministic, mask=mask, rngs=rngs,
            mutable=["intermediates"], capture_intermediates=lambda m, _: m.name == "final_norm")
        hidden = sown["intermediates"]["final_norm"]["__call__"][0]
        skip = self.num_prompt if params is not None else 0
        return logits[:, skip:, :self.vocab_size], hidden[:, skip:]

    def _prepend_prompt(self, tokens, positions, mask):
        """Soft-prompt ids first; every query sees them, they see only each other (causally)."""
        p, (rows, length) = self.num_prompt, tokens.shape
        ids = jnp.broadcast_to(self.vocab_size + jnp.arange(p), (rows, p))
        tokens = jnp.concatenate([ids, tokens], axis=1)
        positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (rows, p)),
                                     positions + p], axis=1)
        prompt_rows = jnp.broadcast_to(jnp.tril(jnp.ones((p, p), bool)), (rows, 1, p, p))
        top = jnp.concatenate([prompt_rows, jnp.zeros((rows, 1, p, length), bool)], axis=3)
        bottom = jnp.concatenate([jnp.ones((rows, 1, length, p), bool), mask], axis=3)
        return tokens, positions, jnp.concatenate([top, bottom], axis=2)

    # ---------------------------------------------------------------- steps
    def loss(self, params, batch, rng, frozen=None):
        return self.task.loss(self, params, frozen, batch, rng)

    def train_step(self, state, batch):
        return self.in_mesh(self._train_step)(state, self.frozen, batch)

    def validate(self, params, batches) -> dict:
        """The task's metrics averaged over validation batches, as val_<name>."""
        results = []
        for rows in batches:
            batch = jax.device_put(rows, batch_sharding(self.mesh))
            results.append(jax.device_get(self.in_mesh(self._post_eval)(params, self.frozen,
                                                                        batch)))
        loss = float(np.mean([r[0] for r in results]))
        metrics = {k: float(np.mean([r[1][k] for r in results])) for k in results[0][1]}
        return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}
