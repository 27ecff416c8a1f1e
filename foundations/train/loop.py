"""The training loop: data -> steps -> metrics, evaluation and checkpoints; resumes by itself.

`train(config, run_dir)` is what `foundations train` runs. A run directory holds the resolved
config, metrics.jsonl, TensorBoard events and Orbax checkpoints; running again on the same
directory continues from the latest complete checkpoint with the same data order and random
numbers, so a run stopped by SIGTERM (pre-emption) or killed outright picks up where it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from foundations.config import Config, save_config
from foundations.data.pipeline import load_text_data, train_iterator
from foundations.data.text import TextData, document_eos
from foundations.train.evaluate import describe, evaluate
from foundations.inference.text import generate_text
from foundations.parallel.mesh import make_mesh
from foundations.run import check_resumable, context_length, keep_tokenizer, writing
from foundations.train import checkpoint
from foundations.train.metrics import MetricsWriter, peak_flops_per_device, plot_loss_curve
from foundations.train.preemption import StopSignals, TrainingStopped
from foundations.train.trainer import Trainer
from foundations.train.warm_start import params_from_run



def log(message: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(message)


def build(config: Config, mesh=None, data: TextData | None = None):
    """(data, Trainer) for `config`: the text is read and tokenized unless `data` is given."""
    data = data or load_text_data(config.data)
    return data, make_trainer(config, data.tokenizer, mesh)


def make_trainer(config: Config, tokenizer, mesh=None) -> Trainer:
    """The Trainer for `config` and `tokenizer` (mesh from config.mesh unless given)."""
    mesh = mesh if mesh is not None else make_mesh(config.mesh)
    return Trainer(config, mesh, tokenizer)


def train(config: Config, run_dir: str | Path, mesh=None, progress: bool = True,
          stop_at: int | None = None, data: TextData | None = None,
          after_training=None, stage=None) -> dict:
    """Trains to config.train.steps (resuming from run_dir's checkpoints); returns a summary.

    SIGTERM or SIGINT end it after the step in flight with a checkpoint, raising TrainingStopped
    (train/preemption.py). `stop_at` ends the run early after that step with a checkpoint too.
    `data` reuses already tokenized text; `after_training(trainer, state, data) -> dict` adds
    its entries to the summary (a sweep's probe, say). `stage` (post/stages.py) trains
    something else than text windows: its `build(config, mesh)` gives (trainer, batch iterator,
    validate(params) -> metrics, a description of the data), and its trainer loads
    train.init_from itself. The run directory is locked for the run (run.py `writing`): a
    second writer is refused before anything is written."""
    run_dir = Path(run_dir)
    with writing(run_dir, log):
        return _train(config, run_dir, mesh, progress, stop_at, data, after_training, stage)


def _train(config: Config, run_dir: Path, mesh, progress: bool, stop_at: int | None,
           data: TextData | None, after_training, stage) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    tc = config.train
    dc = config.data
    if stage is None:
        data, trainer = build(config, mesh, data)
        if dc.shards or dc.mixture:
            log(f"training from {dc.shards or ', '.join(m.shards for m in dc.mixture)}: "
                "data.train_files, data.val_files and data.val_fraction are ignored")
        iterator = train_iterator(data.train_tokens, dc.seq_len, tc.batch_size, dc.shuffle_seed,
                                  jax.process_index(), jax.process_count(),
                                  [m.weight for m in dc.mixture],
                                  document_eos(dc, data.tokenizer), dc.reset_positions)
        about_data = f"{training_tokens(data):,} training tokens"

        def validate(params):
            return evaluate(trainer, params, data.val_tokens, data.bytes_per_token,
                            tc.batch_size, tc.eval_windows)
    else:
        trainer, iterator, validate, about_data = stage.build(config, mesh)
    if jax.process_index() == 0:
        for path in checkpoint.set_aside_incomplete(run_dir):
            log(f"a save that never finished (the run was killed during it) moved to {path}")
    manager = checkpoint.checkpoint_manager(run_dir, config.checkpoint)
    start = manager.latest_step() or 0
    if start:
        changes = check_resumable(trainer.config, run_dir)
        state = checkpoint.restore(manager, start, trainer.abstract_state, iterator)
        log(f"resumed from {run_dir / 'checkpoints' / str(start)}"
            + "".join(f"\n  {key}: {old!r} -> {new!r}" for key, old, new in changes))
    else:
        state = trainer.init_state()
        if tc.init_from and stage is None:
            state = {**state, "params": params_from_run(tc.init_from, tc.init_step, trainer)}
            log(f"initialised from {tc.init_from} (step {tc.init_step or 'latest'})")
    if jax.process_index() == 0:  # only now: a refused resume leaves the run's record as it was
        save_config(trainer.config, run_dir / "config.yaml")  # as resolved (model.scan_unroll)
        keep_tokenizer(config, run_dir)
    counts = trainer.counts
    log(f"model: {counts.total:,} parameters ({counts.non_embedding:,} non-embedding), "
        f"mesh {dict(trainer.mesh.shape)}, {about_data}")

    writer = MetricsWriter(run_dir, resume_step=start)
    tokens_per_step, flops_per_step = trainer.step_work()  # pair stages: 2 rows, DPO: + ref
    peak = peak_flops_per_device(tc.peak_flops) * trainer.mesh.size
    bar = tqdm(total=tc.steps, initial=start, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True, desc="train")
    timer_start, timer_steps, val, stopping = None, 0, {}, False
    with StopSignals() as stop:  # SIGTERM/SIGINT: finish this step, checkpoint, stop
        for step in range(start + 1, tc.steps + 1):
            batch = trainer.put_batch(next(iterator), step)
            state, metrics = trainer.train_step(state, batch)
            if timer_start is None:  # the first step compiles; time from the end of it
                jax.block_until_ready(metrics)
                timer_start, timer_steps = time.perf_counter(), 0
            else:
                timer_steps += 1
            stopping = stop.agreed()
            last = step == tc.steps or step == stop_at
            evaluate_now = ((tc.eval_every and step % tc.eval_every == 0) or last) and not stopping
            if step % tc.log_every == 0 or evaluate_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - timer_start
                if timer_steps:
                    tps = timer_steps * tokens_per_step / elapsed
                    metrics["tokens_per_sec"] = tps
                    metrics["model_flops_per_sec"] = tps * flops_per_step / tokens_per_step
                    if peak:
                        metrics["mfu"] = tps * flops_per_step / tokens_per_step / peak
                    timer_start, timer_steps = time.perf_counter(), 0
                metrics["tokens"] = step * tokens_per_step
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; "
                                             "lower optimizer.lr or raise schedule.warmup_steps")
                if evaluate_now:
                    val = validate(state["params"])
                    metrics.update(val)
                    log(f"step {step}: {describe(val)}")
                    timer_start = None  # evaluation time is not training time
                writer.write(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                tok_s=f"{metrics.get('tokens_per_sec', 0):,.0f}", refresh=False)
            if (config.checkpoint.every and step % config.checkpoint.every == 0) or last \
                    or stopping:
                checkpoint.save(manager, step, state, iterator)
            bar.update(1)
            if step == stop_at or stopping:
                break
        bar.close()
        manager.wait_until_finished()  # a stopped run's checkpoint is on disk before it ends
    manager.close()
    writer.close()
    if stopping:
        raise TrainingStopped(step, run_dir / "checkpoints" / str(step), stop.reason)

    if not val:  # nothing left to train: report on the restored model
        val = validate(state["params"])
    sample = ""
    if tc.sample_tokens and config.model.family == "decoder" and stage is None:
        sample = sample_text(trainer, state["params"], data.tokenizer, tc.sample_prompt,
                             tc.sample_tokens, tc.sample_temperature, tc.seed)
    summary = {"step": int(jax.device_get(state["step"])), **val, "sample": sample}
    if after_training is not None:
        summary.update(after_training(trainer, state, data))
    if jax.process_index() == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_loss_curve(run_dir)
    return summary


def training_tokens(data: TextData) -> int:
    parts = data.train_tokens if isinstance(data.train_tokens, list) else [data.train_tokens]
    return sum(len(part) for part in parts)


def sample_text(trainer, params, tokenizer, prompt: str, max_new_tokens: int,
                temperature: float, seed: int) -> str:
    """The prompt and what the model writes after it (KV-cached, in windows of data.seq_len)."""
    return prompt + generate_text(trainer.plain_model, params, tokenizer, prompt, max_new_tokens,
                                  context_length(trainer.config), temperature=temperature,
                                  seed=seed)

