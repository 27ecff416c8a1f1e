"""Training from prepared shards: lazy reads equal the stored stream, processes read disjoint
parts of the same global batches, the iterator resumes exactly, mixtures keep their weights,
document masks keep packed documents apart, and broken shards are one line naming the file."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from foundations.config import ConfigError, ModelConfig, load_config
from foundations.data.pipeline import PackedWindows, load_text_data, train_iterator
from foundations.data.prepare import PrepareOptions, prepare
from foundations.data.shards import ShardTokens
from foundations.models.decoder import Decoder
from conftest import TINY

SEQ = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory, corpus):
    """60 kB of Shakespeare, one document per speech, in shards of two 4096-token records."""
    out = tmp_path_factory.mktemp("shards") / "shakespeare"
    prepare([str(corpus)], out, PrepareOptions("byte", val_fraction=0.1, separator="\n\n",
                                               shard_tokens=2 * 4096), progress=False)
    return out


def stored_stream(directory, split):
    """The split's tokens read straight from its files (not through ShardTokens)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    records = []
    for shard in manifest["splits"][split]["shards"]:
        reader = ArrayRecordReader(str(directory / shard["file"]))
        records += [np.frombuffer(r, np.uint16) for r in reader.read_all()]
        reader.close()
    return np.concatenate(records).astype(np.int32)


def test_lazy_slices_equal_the_stored_stream(shards):
    tokens = ShardTokens(shards, "train")
    stream = stored_stream(shards, "train")
    assert len(tokens) == len(stream) and len(tokens.shards) >= 3
    for start, stop in [(0, 33), (4090, 4100), (8190, 8200 + 4096), (len(stream) - 5, None)]:
        np.testing.assert_array_equal(tokens[start:stop], stream[start:stop])


def test_two_processes_read_disjoint_halves_of_each_global_batch(shards):
    tokens = ShardTokens(shards, "train")
    whole = train_iterator(tokens, SEQ, 8, seed=3)
    halves = [train_iterator(tokens, SEQ, 8, 3, process_index=p, process_count=2)
              for p in range(2)]
    for _ in range(5):
        expected = next(whole)
        parts = [next(h) for h in halves]
        assert all(part.shape == (4, SEQ + 1) for part in parts)
        rows = {tuple(r) for part in parts for r in part}
        assert len(rows) == 8 and rows == {tuple(r) for r in expected}


def test_iterator_state_restores_the_exact_next_batch(shards):
    tokens = ShardTokens(shards, "train")
    epoch = len(PackedWindows(tokens, SEQ)) // 8
    iterator = train_iterator(tokens, SEQ, 8, seed=0)
    for _ in range(epoch + 2):  # past the first epoch: the reshuffled order is resumed too
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = train_iterator(ShardTokens(shards, "train"), SEQ, 8, seed=0)
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed), batch)


def test_a_state_saved_on_one_process_resumes_on_two(shards):
    tokens = ShardTokens(shards, "train")
    one = train_iterator(tokens, SEQ, 8, seed=1)
    for _ in range(4):
        next(one)
    state = one.get_state()
    halves = [train_iterator(tokens, SEQ, 8, 1, process_index=p, process_count=2)
              for p in range(2)]
    for half in halves:
        half.set_state(state)
    for _ in range(2):
        assert {tuple(r) for h in halves for r in next(h)} == {tuple(r) for r in next(one)}


def test_text_files_are_ignored_and_the_tokenizer_must_match(shards, tmp_path):
    config = load_config(None, [f"data.shards={shards}", "data.train_files=[nothere.txt]"])
    data = load_text_data(config.data)
    assert isinstance(data.train_tokens, ShardTokens)
    np.testing.assert_array_equal(data.val_tokens[:], stored_stream(shards, "val"))
    tokenizer = tmp_path / "tok"
    shutil.copytree(shards / "tokenizer", tokenizer)
    (tokenizer / "tokenizer.json").write_text('{"kind": "byte", "note": "another"}')
    with pytest.raises(ConfigError, match="not the tokenizer"):
        load_text_data(load_config(None, [f"data.shards={shards}",
                                          f"data.tokenizer={tokenizer}"]).data)
    with pytest.raises(ConfigError, match="no manifest.json"):
        load_text_data(load_config(None, [f"data.shards={tmp_path}"]).data)


def test_truncated_or_corrupt_shard_is_one_line_naming_it(shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    victim = broken / "train-00001.arrayrecord"
    data = bytearray(victim.read_bytes())
    victim.write_bytes(data[:len(data) // 2])
    with pytest.raises(ConfigError, match=r"shard .*train-00001.arrayrecord is \d+ bytes") as e:
        ShardTokens(broken, "train")
    assert "\n" not in str(e.value)
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # same size, damaged content
    victim.write_bytes(data)
    with pytest.raises(ConfigError, match=r"shard .*train-00001.arrayrecord is corrupt") as e:
        tokens = ShardTokens(broken, "train")  # the damage is found on opening or reading
        for start in range(0, len(tokens), 4096):
            tokens[start:start + 1]
    assert "\n" not in str(e.value)


def test_mixture_keeps_its_weights_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    for name, alphabet in (("letters", "abcdefgh"), ("digits", "0123456789")):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(
            "".join(rng.choice(list(alphabet), 400)) for _ in range(60)))
        prepare([str(tmp_path / f"{name}.txt")], tmp_path / name,
                PrepareOptions("byte", separator="\n\n"), progress=False)
    config = load_config(None, [f"data.mixture=[{{shards: {tmp_path / 'letters'}, weight: 0.7}}, "
                                f"{{shards: {tmp_path / 'digits'}, weight: 0.3}}]"])
    data = load_text_data(config.data)

    def draw(steps, state=None):
        iterator = train_iterator(data.train_tokens, SEQ, 16, 0, weights=[0.7, 0.3])
        if state is not None:
            iterator.set_state(state)
        return iterator, np.concatenate([next(iterator) for _ in range(steps)])
    iterator, rows = draw(50)
    digits = np.mean([chr(r[SEQ // 2]).isdigit() for r in rows])
    assert abs(digits - 0.3) < 3 * np.sqrt(0.3 * 0.7 / len(rows))
    np.testing.assert_array_equal(draw(50)[1], rows)
    _, after = draw(3, iterator.get_state())
    np.testing.assert_array_equal(after, np.concatenate([next(iterator) for _ in range(3)]))


def test_packed_windows_carry_segments_and_positions():
    tokens = np.array([5, 6, 9, 7, 9, 8, 8, 8, 9, 1], np.int32)  # 9 ends a document
    window = PackedWindows(tokens, 8, eos_id=9, reset_positions=True)[0]
    np.testing.assert_array_equal(window["segments"], [0, 0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(window["positions"], [0, 1, 2, 0, 1, 0, 1, 2, 3])


def test_document_masks_equal_each_document_alone():
    cfg = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=4,
                      head_dim=8, d_ff=64, max_seq_len=16)
    model = Decoder(cfg)
    docs = [np.array([3, 4, 5, 9]), np.array([7, 8, 8, 9]), np.array([10, 11, 12, 13])]
    packed = np.concatenate(docs)[None]
    window = PackedWindows(np.concatenate([packed[0], [0]]), packed.shape[1], 9, True)[0]
    segments, positions = window["segments"][None, :-1], window["positions"][None, :-1]
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(packed))
    apply = jax.jit(model.apply)
    together = apply(params, packed, positions, segments=segments)[0]
    alone = np.concatenate([apply(params, d[None])[0] for d in docs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    unmasked = apply(params, packed)[0]
    assert not np.allclose(unmasked[4:], alone[4:], atol=1e-3)  # the mask is what does it


def test_training_from_shards_with_document_masks_resumes_exactly(shards, tmp_path):
    from foundations.train.loop import train
    config = load_config(None, TINY + [f"data.shards={shards}", "data.document_masks=true",
                                       "data.reset_positions=true", "train.steps=4",
                                       "checkpoint.every=2"])
    whole = train(config, tmp_path / "whole", progress=False)
    stopped = tmp_path / "stopped"
    train(config, stopped, progress=False, stop_at=2)
    resumed = train(config, stopped, progress=False)

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-6)
    assert losses(stopped)[4] == pytest.approx(losses(tmp_path / "whole")[4], rel=1e-6)
