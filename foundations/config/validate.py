"""Checks that need only the config: every command runs them when it loads a config, so
`foundations config` refuses what `train`, `sft`, `reward`, `dpo` and `ppo` would."""

from __future__ import annotations

from foundations.config.sections import Config, ConfigError


# which objectives each family trains with
FAMILY_OBJECTIVES = {"decoder": ("clm", "prefix_lm"), "encoder": ("mlm", "electra"),
                     "encdec": ("span",)}


def validate(config: Config) -> None:
    """Checks that need several fields at once (the mesh checks divisibility once it exists)."""
    m, t, data = config.model, config.train, config.data
    kv = m.num_kv_heads or m.num_heads
    if not m.head_dim and m.d_model % m.num_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.num_heads="
                          f"{m.num_heads} (or set model.head_dim)")
    if m.num_heads % kv:
        raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by "
                          f"model.num_kv_heads={kv}")
    if data.seq_len > m.max_seq_len:
        raise ConfigError(f"data.seq_len={data.seq_len} exceeds model.max_seq_len={m.max_seq_len}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                          f"train.grad_accum={t.grad_accum}")
    warmup = config.schedule.warmup_steps
    if warmup >= 1 and not float(warmup).is_integer():
        raise ConfigError(f"schedule.warmup_steps={warmup} must be a whole number of steps or a "
                          f"fraction of the run below 1")
    if warmup >= 1 and warmup > t.steps:
        raise ConfigError(f"schedule.warmup_steps={int(warmup)} exceeds train.steps={t.steps} "
                          f"(or give a fraction of the run, e.g. 0.05)")
    if t.init_step is not None and not t.init_from:
        raise ConfigError("train.init_step is set but train.init_from (a run directory) is not")
    if not data.val_files and data.val_fraction == 0.0 and not (data.shards or data.mixture):
        raise ConfigError("no validation data: set data.val_files or data.val_fraction > 0")
    validate_shards(config)
    validate_pipeline(config)
    validate_family(config)
    validate_adapters(config)


def validate_shards(config: Config) -> None:
    """Prepared shards, mixtures and document masks: the settings that must agree."""
    data = config.data
    if data.shards and data.mixture:
        raise ConfigError("set data.shards or data.mixture, not both")
    if any(not source.shards for source in data.mixture):
        raise ConfigError("data.mixture: every entry needs its shards directory")
    if data.reset_positions and not data.document_masks:
        raise ConfigError("data.reset_positions needs data.document_masks=true")
    if data.document_masks and (config.model.family != "decoder"
                                or config.objective.kind != "clm" or config.mesh.stage > 1):
        raise ConfigError("data.document_masks applies to model.family=decoder with "
                          "objective.kind=clm and mesh.stage=1")


def validate_family(config: Config) -> None:
    """Family, objective, positions and mixture-of-experts settings that must agree."""
    m, kind = config.model, config.objective.kind
    if kind not in FAMILY_OBJECTIVES[m.family]:
        raise ConfigError(f"objective.kind={kind!r} does not fit model.family={m.family!r}; "
                          f"use one of {', '.join(FAMILY_OBJECTIVES[m.family])}")
    if m.num_decoder_layers is not None and m.family != "encdec":
        raise ConfigError("model.num_decoder_layers applies to model.family=encdec only")
    if config.objective.loss_chunk_size and kind != "clm":
        raise ConfigError(f"objective.loss_chunk_size applies to objective.kind=clm only (it is "
                          f"{kind!r}); set it to 0")
    moe = m.moe
    if moe.num_experts and moe.experts_per_token > moe.num_experts:
        raise ConfigError(f"model.moe.experts_per_token={moe.experts_per_token} exceeds "
                          f"model.moe.num_experts={moe.num_experts}")
    if moe.num_experts and moe.dispatch == "grouped" and config.mesh.expert != 1:
        raise ConfigError("model.moe.dispatch=grouped runs with mesh.expert=1 (no all-to-all "
                          "over the expert axis yet); use dispatch=dense to shard experts")
    if moe.num_experts and m.family != "decoder":
        raise ConfigError("model.moe.num_experts > 0 is supported for model.family=decoder only")
    p = m.positions
    if p.kind != "rope" and p.scaling != "none":
        raise ConfigError(f"model.positions.scaling={p.scaling!r} needs model.positions.kind="
                          f"rope (it is {p.kind!r})")


def validate_pipeline(config: Config) -> None:
    """Pipeline settings that the config alone can refuse (the mesh checks the batch later)."""
    mesh, layers = config.mesh, config.model.num_layers
    if layers % mesh.stage:
        raise ConfigError(f"model.num_layers={layers} is not divisible by mesh.stage={mesh.stage}")
    micro = config.train.batch_size // config.train.grad_accum
    if micro % mesh.microbatches:
        raise ConfigError(f"train.batch_size={config.train.batch_size} / train.grad_accum="
                          f"{config.train.grad_accum} = {micro} sequences do not split into "
                          f"mesh.microbatches={mesh.microbatches}")
    if mesh.stage > 1 and config.model.dropout > 0:
        raise ConfigError("model.dropout > 0 is not supported with mesh.stage > 1")
    validate_stages(config, mesh.stage)


def validate_stages(config: Config, stages: int) -> None:
    """What a pipeline of `stages` stages runs (train/trainer.py asks this of its mesh too)."""
    m = config.model
    if stages > 1 and (m.family != "decoder" or config.objective.kind != "clm"
                       or m.moe.num_experts or m.positions.kind in ("alibi", "t5_bias")
                       or m.local_window_size):
        raise ConfigError("mesh.stage > 1 runs causal decoders (objective.kind=clm) without "
                          "experts, attention biases or sliding windows; set mesh.stage=1")


# the settings that turn on each way of tuning part of a model (post/trainer.py METHODS)
ADAPTER_KEYS = ("lora.rank", "prompt_tuning.num_tokens", "prefix_tuning.num_tokens")


def adapter_settings(config: Config) -> list[str]:
    """Which of ADAPTER_KEYS the config sets (> 0)."""
    return [s for s in ADAPTER_KEYS if getattr(getattr(config, s.split(".")[0]),
                                                    s.split(".")[1])]


def validate_adapters(config: Config) -> None:
    """LoRA, prompt and prefix tuning: at most one, on a model it can tune. Only post-training
    stages tune adapters, so a config that sets one must also suit those (validate_post)."""
    chosen = adapter_settings(config)
    if len(chosen) > 1:
        raise ConfigError("choose one of " + ", ".join(ADAPTER_KEYS) + " (set: "
                          + ", ".join(chosen) + ")")
    if not chosen:
        return
    validate_post(config)
    m, p = config.model, config.prompt_tuning.num_tokens
    if p and m.positions.kind == "learned" and config.data.seq_len + p > m.max_seq_len:
        raise ConfigError(f"data.seq_len={config.data.seq_len} + prompt_tuning.num_tokens="
                          f"{p} exceeds model.max_seq_len={m.max_seq_len}")
    if config.prefix_tuning.num_tokens and (m.local_window_size
                                            or m.positions.kind in ("alibi", "t5_bias")):
        raise ConfigError("prefix tuning needs attention without a sliding window or a "
                          "position bias (model.local_window_size=0, positions.kind not "
                          "alibi/t5_bias)")


def validate_post(config: Config) -> None:
    """What every post-training stage (sft, reward, dpo, ppo) needs of the model."""
    if config.model.family != "decoder" or config.mesh.stage > 1:
        raise ConfigError("post-training runs decoder models (model.family=decoder) with "
                          "mesh.stage=1")


def validate_ppo(config: Config) -> None:
    """The ppo section's settings that must agree with each other and the batch."""
    p, t = config.ppo, config.train
    if p.reward == "model" and not p.reward_model:
        raise ConfigError("ppo.reward=model needs ppo.reward_model, a `foundations reward` "
                          "run directory")
    if p.advantage == "group" and p.samples < 2:
        raise ConfigError("ppo.advantage=group compares samples of one prompt: set "
                          "ppo.samples >= 2")
    rows = t.batch_size * p.samples
    if rows % p.minibatches or (rows // p.minibatches) % t.grad_accum:
        raise ConfigError(f"a rollout's {rows} rows (train.batch_size x ppo.samples) do not "
                          f"split into ppo.minibatches={p.minibatches} of train.grad_accum="
                          f"{t.grad_accum} microbatches")


# the checks each command adds to validate(): what `foundations config --for COMMAND` runs
COMMAND_CHECKS = {"train": (), "sft": (validate_post,), "reward": (validate_post,),
                  "dpo": (validate_post,), "ppo": (validate_post, validate_ppo),
                  "merge": (validate_post,)}


def validate_for(config: Config, command: str) -> None:
    """Every config-only check `command` (a COMMAND_CHECKS key) makes before it reads data."""
    validate(config)
    for check in COMMAND_CHECKS[command]:
        check(config)
