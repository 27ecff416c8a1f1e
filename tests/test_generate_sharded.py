"""Generation sharded over a data x tensor mesh of simulated CPU devices (tests/conftest.py asks
for 8) writes the same tokens as on one device, for a GQA decoder and T5, and for prefix- and
prompt-tuned runs (load_run applies their adapters)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from foundations.config import ConfigError, MeshConfig
from foundations.convert import from_hf
from foundations.inference import generate
from foundations.parallel.mesh import make_mesh

DATA = Path(__file__).parent / "data" / "hf"
PROMPTS = np.array([[0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 9, 3, 1]],
                   np.int32)


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 4:
        pytest.fail("needs 4 devices: tests/conftest.py sets XLA_FLAGS for 8 CPU devices")
    return make_mesh(MeshConfig(data=2, tensor=2), jax.devices()[:4])


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_sharded_greedy_and_beam_equal_one_device(mesh, name):
    model, params = from_hf(DATA / name)
    kwargs = dict(attention_mask=PROMPTS > 0, max_new_tokens=6)
    single = generate(model, params, PROMPTS, **kwargs)
    columns = []
    sharded = generate(model, params, PROMPTS, mesh=mesh, on_token=columns.append, **kwargs)
    np.testing.assert_array_equal(sharded, single)   # 3 prompts: repeated to 4 rows, cut back
    np.testing.assert_array_equal(np.stack(columns, 1), single)
    beams = dict(kwargs, num_beams=2)
    np.testing.assert_array_equal(generate(model, params, PROMPTS, mesh=mesh, **beams),
                                  generate(model, params, PROMPTS, **beams))


def test_a_model_that_does_not_split_over_the_mesh_is_one_line():
    model, params = from_hf(DATA / "mistral")   # 4 heads, 1 kv head: not over tensor=8
    mesh = make_mesh(MeshConfig(tensor=8), jax.devices()[:8])
    with pytest.raises(ConfigError, match="does not divide by mesh axes"):
        generate(model, params, PROMPTS, mesh=mesh, max_new_tokens=2)


@pytest.mark.slow  # the end-to-end convert and generate commands
def test_generate_command_on_a_mesh_writes_what_one_device_writes(tmp_path, capsys):
    from foundations.cli import main
    run = str(tmp_path / "run")
    assert main(["convert", "from-hf", str(DATA / "llama"), "--run-dir", run]) == 0
    args = ["generate", "--run-dir", run, "--prompt", "First", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert main(args) == 0
    single = capsys.readouterr().out
    assert main(args + ["--override", "mesh.data=2", "--override", "mesh.tensor=2"]) == 0
    assert capsys.readouterr().out == single


ADAPTER_RUNS = {   # the model of tests/test_adapter_runs.py; adapters written, not trained
    "prefix": ["model.num_kv_heads=2", "model.positions.kind=rope", "prefix_tuning.num_tokens=3"],
    "prompt": ["prompt_tuning.num_tokens=5"],
}


def written_adapter_run(run_dir, method):
    """A run whose checkpoint holds random adapters of `method` only (its base: the random init
    of train.seed, as post-training draws it), as load_run reads a tuned run."""
    from foundations.config import load_config
    from foundations.run import write_run
    config = load_config(None, ["model.num_layers=2", "model.d_model=32", "model.num_heads=4",
                                "model.max_seq_len=64", "data.seq_len=32", "model.init_std=0.3",
                                *ADAPTER_RUNS[method]])
    m, rng = config.model, np.random.default_rng(0)
    if method == "prefix":
        shape = (m.num_layers, 3, m.num_kv_heads, m.d_model // m.num_heads)
        adapters = {"prefix": {"blocks": {"attention": {
            name: rng.normal(0, 1, shape).astype(np.float32)
            for name in ("prefix_key", "prefix_value")}}}}
    else:
        adapters = {"prompt": rng.normal(0, 1, (5, m.d_model)).astype(np.float32)}
    return write_run(run_dir, config, adapters)


@pytest.mark.parametrize("method", list(ADAPTER_RUNS))
def test_an_adapter_run_generates_on_a_mesh_what_one_device_does(mesh, method, tmp_path):
    """A prefix- or prompt-tuned run restored onto data 2 x tensor 2 (as `generate --override
    mesh.*` restores it) decodes greedily the tokens it decodes on one device; without its
    adapters the base decodes others (so they were applied on the mesh too)."""
    from foundations.run import load_run
    run_dir = written_adapter_run(tmp_path / "run", method)
    run = load_run(run_dir)
    kwargs = dict(attention_mask=PROMPTS > 0, max_new_tokens=6,
                  vocab_size=run.tokenizer.vocab_size)
    single = generate(run.model, run.params, PROMPTS, **kwargs)
    on_mesh = load_run(run_dir, ["mesh.data=2", "mesh.tensor=2"], single_device=False)
    np.testing.assert_array_equal(
        generate(on_mesh.model, on_mesh.params, PROMPTS, mesh=on_mesh.mesh, **kwargs), single)
    assert dict(on_mesh.mesh.shape) == dict(mesh.shape)
    if method == "prefix":   # the base alone: the attention layers without their prefixes
        attention = {k: v for k, v in run.params["blocks"]["attention"].items()
                     if not k.startswith("prefix_")}
        base = run.model, {**run.params, "blocks": {**run.params["blocks"],
                                                    "attention": attention}}
    else:                    # the base alone: no soft prompt before the text
        base = run.model.clone(soft_prompt=0), run.params
    assert not np.array_equal(generate(*base, PROMPTS, **kwargs), single)
