"""`foundations merge`: a LoRA run folded into its base weights, as a run directory of its own.

The result is an ordinary run (config without the adapter settings, a checkpoint of the merged
model), so `generate`, `eval` and `train.init_from` read it like any pre-trained run; `--peft`
also writes the adapters in PEFT's format for the Hugging Face side (convert/).
"""

from __future__ import annotations

from pathlib import Path

import jax

from foundations.config import ConfigError, load_config, replace, save_config
from foundations.data.pipeline import configured_tokenizer
from foundations.parallel.mesh import make_mesh
from foundations.post.adapters import export_peft
from foundations.post.stages import BaseTask
from foundations.post.trainer import ADAPTER_SETTINGS, PostTrainer
from foundations.train import checkpoint
from foundations.train.loop import keep_tokenizer, make_trainer


class NoTask(BaseTask):
    """Merging reads parameters only: no data, no loss, no reward head."""
    name = "merge"


def merge_run(run_dir: str | Path, out_dir: str | Path, peft_dir: str | Path | None = None):
    """Writes out_dir: run_dir's LoRA adapters added to its base (train.init_from)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    if (out_dir / "checkpoints").exists():
        raise ConfigError(f"{out_dir} already holds checkpoints; choose a new --out")
    config = load_config(run_dir / "config.yaml")
    if not config.lora.rank:
        raise ConfigError(f"{run_dir} is not a LoRA run (lora.rank=0): its checkpoint already "
                          "holds the whole model")
    single = {f"mesh.{a}": 1 for a in ("data", "fsdp", "tensor", "stage", "expert")}
    config = replace(config, single)
    tokenizer = configured_tokenizer(config.data.tokenizer)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    post = PostTrainer(config, mesh, tokenizer, NoTask(), log=lambda _: None)
    state = checkpoint.restore_latest(run_dir, config.checkpoint, post.abstract_state)
    merged = post.merged(state["params"])
    if peft_dir is not None:
        export_peft(config, state["params"]["lora"], post.lora_targets, peft_dir)

    plain = replace(config, {**ADAPTER_SETTINGS, "train.init_from": "", "train.init_step": None})
    trainer = make_trainer(plain, tokenizer, mesh)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(plain, out_dir / "config.yaml")
    keep_tokenizer(plain, out_dir)
    fresh = trainer.init_state()
    manager = checkpoint.checkpoint_manager(out_dir, plain.checkpoint)
    checkpoint.save(manager, int(jax.device_get(state["step"])), {**fresh, "params": merged})
    manager.wait_until_finished()
    manager.close()
    return out_dir

