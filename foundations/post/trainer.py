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

from foundations.config import ConfigError, replace, validate_for
from foundations.models.families import build_model
from foundations.parallel.mesh import batch_sharding, logical_shardings, replicated
from foundations.models import adapters as tuned
from foundations.post import adapters
from foundations.post.stages import Task
from foundations.train.trainer import Trainer
from foundations.train.warm_start import params_from_run


class Method:
    """One way of tuning: which config setting turns it on, what trains (boxed with logical
    names; `init`) and what the model reads for trainable `params` (`model_inputs`). `full`
    trains the model's own tree."""
    name, setting = "full", ""
    trains_base = True   # the state's params are the model itself: no frozen base to keep

    def init(self, trainer, rng, base):
        return base

    def model_params(self, trainer, params, frozen, rng):
        return params["model"] if "head" in params else params

    def model_inputs(self, trainer, params, frozen, rng, args, kwargs):
        return (trainer.model, {"params": self.model_params(trainer, params, frozen, rng)},
                args, kwargs, 0)


class Lora(Method):
    name, setting, trains_base = "lora", tuned.SETTINGS["lora"], False

    def init(self, trainer, rng, base):
        shapes = {tuned.path_name(p): x.shape for p, x in
                  jax.tree_util.tree_flatten_with_path(nn.unbox(base))[0]}
        targets = tuned.lora_targets(nn.get_partition_spec(base), trainer.config.lora.targets)
        if not targets:
            raise ConfigError(f"lora.targets={trainer.config.lora.targets!r} matches no kernel")
        return {"lora": adapters.init_lora(rng, shapes, targets, trainer.config.lora.rank)}

    def model_params(self, trainer, params, frozen, rng):
        lora = trainer.config.lora
        return tuned.apply_lora(frozen["base"], params["lora"], trainer.lora_targets,
                                   lora.alpha / lora.rank, lora.dropout, rng)


class Prompt(Method):
    """Soft-prompt ids first; every query sees them, they see only each other (causally)."""
    name, setting, trains_base = "prompt", tuned.SETTINGS["prompt"], False

    def init(self, trainer, rng, base):
        return {"prompt": adapters.init_soft_prompt(rng, trainer.num_prompt,
                                                    trainer.model_cfg.d_model,
                                                    trainer.model_cfg.init_std)}

    def model_params(self, trainer, params, frozen, rng):
        return tuned.with_soft_prompt(frozen["base"], params["prompt"])

    def model_inputs(self, trainer, params, frozen, rng, args, kwargs):
        (tokens,), kwargs = args, dict(kwargs)
        tokens, positions, mask = tuned.prompt_inputs(
            tokens, kwargs.pop("positions", None), kwargs.pop("mask", None),
            kwargs.pop("segments", None), trainer.vocab_size, trainer.num_prompt)
        variables = {"params": self.model_params(trainer, params, frozen, rng)}
        return (trainer.prompt_model, variables, (tokens,),
                {**kwargs, "positions": positions, "mask": mask}, trainer.num_prompt)


class Prefix(Method):
    name, setting, trains_base = "prefix", tuned.SETTINGS["prefix"], False

    def init(self, trainer, rng, base):
        return {"prefix": adapters.init_prefix(rng, trainer.config.prefix_tuning.num_tokens,
                                               trainer.model_cfg)}

    def model_params(self, trainer, params, frozen, rng):
        return tuned.with_prefix(frozen["base"], params["prefix"])


METHODS = {m.name: m for m in (Method(), Lora(), Prompt(), Prefix())}
ADAPTER_SETTINGS = {m.setting: 0 for m in METHODS.values() if m.setting}  # all off: a plain run
method = tuned.method   # 'lora', 'prompt', 'prefix' or 'full' (every parameter trains)


class PostTrainer(Trainer):
    """A Trainer whose state params are what trains and whose loss is `task`'s (post/stages.py
    Task). It adds adapter management to the Trainer: the frozen base, the METHODS entry that
    builds the trainable tree and the model's inputs; the forward pass is `Trainer.forward`.
    `init_from` parameters (or, without train.init_from, a random model) become the base."""

    def __init__(self, config, mesh, tokenizer, task: Task, log=print):
        if not isinstance(task, Task):
            raise TypeError(f"{type(task).__name__} is not a post/stages.py Task")
        validate_for(config, task.name)   # the config-only checks `foundations config` makes
        self.task, self.method = task, method(config)
        self.adapter = METHODS[self.method]
        self.vocab_size = config.model.vocab_size
        self.num_prompt = config.prompt_tuning.num_tokens
        super().__init__(config, mesh, tokenizer)   # its causal-LM objective passes rows on
        base_boxed = jax.eval_shape(super()._init_params, jax.random.PRNGKey(0))
        self.base_specs = nn.get_partition_spec(base_boxed)
        base_shardings = logical_shardings(self.base_specs, mesh)
        self.abstract_base = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(base_boxed), base_shardings)
        self.lora_targets = tuned.lora_targets(self.base_specs, config.lora.targets)
        if self.num_prompt:  # the tuned model reads vocab_size + num_prompt embedding rows
            self.prompt_model = build_model(replace(
                config, {"model.vocab_size": self.vocab_size + self.num_prompt}))
        base = self._load_base(log)
        self.frozen = {} if self.adapter.trains_base and not task.needs_reference else \
            {"base": base}
        self._initial_base = base if self.adapter.trains_base else None
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
        params = self.adapter.init(self, jax.random.fold_in(rng, 1), base)
        head = self.task.init_head(jax.random.fold_in(rng, 2), self.model_cfg)
        if head is not None:
            params = {"model": params, "head": head} if self.adapter.trains_base else \
                {**params, "head": head}
        return params

    def init_state(self, seed: int | None = None):
        """Fresh adapters (or, fully fine-tuning, a copy of the base) and optimizer state."""
        state = super().init_state(seed)
        if not self.adapter.trains_base:
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
        return self.adapter.model_params(self, params, frozen, rng)

    def merged(self, params, frozen=None):
        """The model's own parameter tree with the adapters folded in (export, generate; a
        soft prompt stays extra embedding rows, prefixes sit beside the attention kernels:
        models/adapters.py)."""
        return self.model_params(params, self.frozen if frozen is None else frozen)

    # ---------------------------------------------------------------- forward
    def forward(self, params, batch, *, frozen=None, rng=None, train=None, **kwargs):
        """`Trainer.forward` of the policy (`params`) or of the frozen reference (`params`
        None): (logits over the base vocabulary, final hidden states, aux losses). `frozen`
        defaults to this trainer's own (outside a jitted step only)."""
        frozen = self.frozen if frozen is None else frozen
        out, hidden, aux = super().forward(params, batch, frozen=frozen, rng=rng, train=train,
                                           **kwargs)
        if self.num_prompt and params is not None and not kwargs.get("hidden"):
            out = out[..., :self.vocab_size]
        return out, hidden, aux

    def model_inputs(self, params, frozen, rng, args, kwargs):
        if params is None:
            return self.model, {"params": frozen["base"]}, args, kwargs, 0
        return self.adapter.model_inputs(self, params, frozen, rng, args, kwargs)

    # ---------------------------------------------------------------- steps
    def loss(self, params, batch, rng, frozen=None):
        return self.task.loss(self, params, frozen, batch, rng)

    def step_work(self) -> tuple[int, float]:
        """(tokens, model FLOPs) per step: the task's rows (a pair stage trains 2 rows per
        pair) of seq_len (plus a soft prompt), trained; and, when the task needs the reference
        (DPO), the same rows once more through the frozen model, forward only (a third of
        training's FLOPs)."""
        if hasattr(self.task, "step_work"):   # PPO: rollouts, scoring and epochs of updates
            return self.task.step_work(self)
        rows = self.config.train.batch_size * self.task.rows_per_example
        trained = rows * (self.seq_len + self.num_prompt)
        reference = rows * self.seq_len if self.task.needs_reference else 0
        return trained + reference, (trained + reference / 3) * self.flops_per_token

    def train_step(self, state, batch):
        if self.task.rollout is None:
            return self.in_mesh(self._train_step)(state, self.frozen, batch)
        return self.rollout_step(state, batch)

    def rollout_step(self, state, batch):
        """An on-policy step (PPO): the task samples experience from the policy for `batch`'s
        prompts, then trains its minibatches (epochs of them); the state's step counts
        rollouts, so the schedule, checkpoints and resume count them as the loop does."""
        step = int(jax.device_get(state["step"]))
        minibatches, rollout_metrics = self.task.rollout(self, state, batch)
        results = []
        for minibatch in minibatches:
            state = {**state, "step": jnp.asarray(step, state["step"].dtype)}
            minibatch = jax.device_put(minibatch, self.batch_sharding)
            state, metrics = self.in_mesh(self._train_step)(state, self.frozen, minibatch)
            results.append(metrics)
        metrics = {k: jnp.mean(jnp.stack([m[k] for m in results])) for k in results[0]}
        return state, {**metrics, **rollout_metrics}

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
