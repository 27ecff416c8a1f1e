"""Adapter runs (LoRA, prompt tuning, prefix tuning) load, generate and evaluate directly:
run.py `load_run` applies a run's adapters to its base, so greedy `generate` on the adapter
run equals its merged run's (LoRA) and greedy decoding by the post stage's own forward pass
(each method), and `eval` gives the loss of that forward pass on the same text."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from foundations.cli import main
from foundations.config import load_config
from foundations.data.text import tokenize_files
from foundations.inference import generate
from foundations.inference.complete import complete, left_pad, pad_id
from foundations.parallel.mesh import make_mesh
from foundations.post.merge import merge_run
from foundations.post.stages import Stage
from foundations.post.synthetic import write_addition
from foundations.run import checkpoint_steps, load_run, restore_params
from foundations.train.loop import train
from foundations.train.score import score_run

COMMON = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=64",
          "data.seq_len=32", "train.batch_size=4", "train.steps=2", "train.log_every=1",
          "train.eval_every=0", "train.eval_batches=1", "train.sample_tokens=0",
          "schedule.warmup_steps=1", "checkpoint.every=0", "checkpoint.async_save=false",
          "optimizer.lr=3e-2"]
METHODS = {
    # a LoRA run tuned on a full fine-tune's run (train.init_from), the others on the random
    # init of train.seed (no init_from)
    "lora": ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
             "model.use_bias=false", "lora.rank=4", "lora.alpha=8",
             "lora.targets=attention/(query|value|out)|mlp/down"],
    "prompt": ["prompt_tuning.num_tokens=5"],
    "prefix": ["model.num_kv_heads=2", "model.positions.kind=rope", "prefix_tuning.num_tokens=3"],
}
# the quick loop (`pytest -m "not slow"`) runs prompt tuning; LoRA (a base run, then the adapter
# run, then a merge) and prefix tuning are the long ones, and test_post_lora / test_post_prefix
# keep them in the quick loop
CASES = [m if m == "prompt" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS]
PROMPTS = ["Q: 12+35= A: ", "Q: 7+8= A: ", "Q: 40+41= A: "]
NEW = 6
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_addition(tmp_path_factory.mktemp("addition"), count=100, seed=5)


_RUNS = {}


def adapter_run(method, data, tmp_path_factory):
    """(run directory, the post stage's trainer, the run's trained adapters)."""
    if method in _RUNS:
        return _RUNS[method]
    root = tmp_path_factory.mktemp(method)
    overrides = COMMON + METHODS[method] + [f"sft.train_file={data['sft']}"]
    if method == "lora":   # its base: a full fine-tune of the same model
        base = load_config(None, [o for o in overrides if not o.startswith("lora.")])
        train(base, root / "base", mesh=make_mesh(base.mesh, jax.devices()[:1]),
              progress=False, stage=Stage("sft", **QUIET))
        overrides.append(f"train.init_from={root / 'base'}")
    config = load_config(None, overrides)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    train(config, root / "run", mesh=mesh, progress=False, stage=Stage("sft", **QUIET))
    trainer, _, _, _ = Stage("sft", **QUIET).build(config, mesh)
    step = checkpoint_steps(root / "run")[-1]
    params = restore_params(root / "run", step, trainer.abstract_state["params"])
    _RUNS[method] = root / "run", trainer, params
    return _RUNS[method]


def greedy_by_post_forward(trainer, params, tokenizer, prompt: str) -> list[int]:
    """Greedy decoding of one prompt by recomputing the post stage's forward (the adapters as
    training applies them) on the whole sequence for every token."""
    forward = jax.jit(lambda p, t: trainer.forward(p, t, frozen=trainer.frozen)[0][:, -1])
    ids, new = tokenizer.encode(prompt), []
    for _ in range(NEW):
        logits = np.asarray(forward(params, jnp.asarray([ids + new], jnp.int32)))[0]
        new.append(int(np.argmax(logits[:tokenizer.vocab_size])))
        if new[-1] == tokenizer.eos_id:
            break
    return new


def greedy(run, prompts) -> list[list[int]]:
    """generate's greedy rows for left-padded prompts, each cut after its end-of-text."""
    tok = run.tokenizer
    ids, mask = left_pad([tok.encode(p) for p in prompts], pad_id(tok))
    out = generate(run.model, run.params, ids, mask, NEW, eos_token_id=tok.eos_id,
                   pad_token_id=pad_id(tok), vocab_size=tok.vocab_size)
    rows = []
    for row in out.tolist():
        rows.append(row[:row.index(tok.eos_id) + 1] if tok.eos_id in row else row)
    return rows


@pytest.mark.parametrize("method", CASES)
def test_generate_on_the_adapter_run(method, data, tmp_path_factory, tmp_path, capsys):
    run_dir, trainer, params = adapter_run(method, data, tmp_path_factory)
    run = load_run(run_dir)
    tok = run.tokenizer
    rows = greedy(run, PROMPTS)
    assert rows == [greedy_by_post_forward(trainer, params, tok, p) for p in PROMPTS]
    assert run.method == method
    texts = complete(run.model, run.params, tok, PROMPTS, NEW)
    assert texts == [tok.decode([i for i in r if i != tok.eos_id]) for r in rows]
    if method == "lora":   # the same as its merged run
        merge_run(run_dir, tmp_path / "merged")
        assert greedy(load_run(tmp_path / "merged"), PROMPTS) == rows
    capsys.readouterr()
    assert main(["generate", "--run-dir", str(run_dir), "--prompt", PROMPTS[0],
                 "--max-new-tokens", str(NEW)]) == 0
    assert capsys.readouterr().out.startswith(PROMPTS[0] + texts[0])
    # a soft prompt or a prefix has no place in a transformers checkpoint: refused in one line
    if method in ("prompt", "prefix"):
        assert main(["convert", "to-hf", "--run-dir", str(run_dir), str(tmp_path / "hf")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{method}-tuned run" in err, err
        assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("method", CASES)
def test_eval_on_the_adapter_run(method, data, tmp_path_factory, tmp_path, capsys):
    run_dir, trainer, params = adapter_run(method, data, tmp_path_factory)
    run = load_run(run_dir)
    seq_len = run.config.data.seq_len
    text = tmp_path / "text.txt"
    text.write_text(("Q: 21+13= A: 34 Q: 5+9= A: 14 " * 4)[:2 * seq_len])
    tokens, n_bytes = tokenize_files([text], run.tokenizer)
    assert len(tokens) == 2 * seq_len + 1   # two windows side by side, every token scored
    inputs = jnp.asarray(tokens[:-1].reshape(2, seq_len))
    logits, _, _ = trainer.forward(params, inputs, frozen=trainer.frozen)
    expected = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.asarray(tokens[1:].reshape(2, seq_len)))))
    base, _, _ = trainer.forward(None, inputs, frozen=trainer.frozen)
    assert not np.allclose(np.asarray(base), np.asarray(logits), atol=1e-3)  # adapters count
    result = score_run(run, tokens, n_bytes / len(tokens), batch_size=2)
    np.testing.assert_allclose(result["loss"], expected, rtol=2e-5)
    capsys.readouterr()
    assert main(["eval", str(text), "--run-dir", str(run_dir), "--batch-size", "2"]) == 0
    printed = float(re.search(r"loss (\d+\.\d+)", capsys.readouterr().out).group(1))
    assert abs(printed - expected) < 1e-4 + 1e-9
