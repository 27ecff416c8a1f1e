"""Shared fixtures. 8 simulated CPU devices are requested here, before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests build the same tiny model on the same mesh; a compilation cache that lives for this
# session lets later builds reuse the XLA executables instead of compiling them again. For the
# edit-test loop, FOUNDATIONS_TEST_XLA_CACHE=<dir> keeps the cache between sessions (entries are
# keyed by the exact program, jax version and flags, so a changed model compiles afresh); CI
# leaves it unset and compiles everything once per run.
jax.config.update("jax_compilation_cache_dir", os.environ.get("FOUNDATIONS_TEST_XLA_CACHE")
                  or tempfile.mkdtemp(prefix="foundations-xla-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from foundations.config import load_config  # noqa: E402

TINY = [
    "model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=32",
    "data.seq_len=32", "data.val_fraction=0.1",
    "train.batch_size=8", "train.steps=6", "train.log_every=1", "train.eval_every=0",
    "train.eval_batches=2", "train.sample_tokens=0",
    "schedule.warmup_steps=2", "checkpoint.every=3", "checkpoint.async_save=false",
    "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1",
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The first 60 kB of Tiny Shakespeare (bundled with the package) as a small text file."""
    from foundations.data.files import BUNDLED_CORPORA
    text = (BUNDLED_CORPORA / "tinyshakespeare" / "input.txt").read_text()[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_60k.txt"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_config(corpus):
    """A factory: a tiny config on the small corpus, with extra overrides applied."""
    def make(*overrides):
        return load_config(None, TINY + [f"data.train_files=[{corpus}]", *overrides])
    return make


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
