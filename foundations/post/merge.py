"""`foundations merge`: a LoRA run folded into its base weights, as a run directory of its own.

The result is an ordinary run (config without the adapter settings, a checkpoint of the merged
model), so `generate`, `eval` and `train.init_from` read it like any pre-trained run; `--peft`
also writes the adapters in PEFT's format for the Hugging Face side (convert/).
"""

from __future__ import annotations

from pathlib import Path

import jax

from foundations.config import ConfigError, replace
from foundations.tokenizers import configured_tokenizer
from foundations.parallel.mesh import make_mesh
from foundations.convert.lora import export_peft
from foundations.post.stages import BaseTask
from foundations.post.trainer import ADAPTER_SETTINGS, PostTrainer
from foundations.run import (SINGLE_DEVICE, checkpoint_steps, read_config, restore_params,
                             write_run, writing)


class NoTask(BaseTask):
    """Merging reads parameters only: no data, no loss, no reward head."""
    name = "merge"


def merge_run(run_dir: str | Path, out_dir: str | Path, peft_dir: str | Path | None = None):
    """Writes out_dir: run_dir's LoRA adapters added to its base (train.init_from)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = replace(read_config(run_dir), SINGLE_DEVICE)
    if not config.lora.rank:
        raise ConfigError(f"{run_dir} is not a LoRA run (lora.rank=0): its checkpoint already "
                          "holds the whole model")
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ConfigError(f"{run_dir / 'checkpoints'} holds no checkpoint")
    with writing(out_dir):
        if (out_dir / "checkpoints").exists():
            raise ConfigError(f"{out_dir} already holds checkpoints; choose a new --out")
        tokenizer = configured_tokenizer(config.data.tokenizer)
        mesh = make_mesh(config.mesh, jax.devices()[:1])
        post = PostTrainer(config, mesh, tokenizer, NoTask(), log=lambda _: None)
        params = restore_params(run_dir, steps[-1], post.abstract_state["params"])
        if peft_dir is not None:
            export_peft(config, params["lora"], post.lora_targets, peft_dir)
        plain = replace(config, {**ADAPTER_SETTINGS, "train.init_from": "",
                                 "train.init_step": None})
        return write_run(out_dir, plain, post.merged(params), steps[-1])

