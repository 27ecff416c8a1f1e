"""Generation sharded over a data x tensor mesh of simulated CPU devices (tests/conftest.py asks
for 8) writes the same tokens as on one device, for a GQA decoder and T5."""

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
