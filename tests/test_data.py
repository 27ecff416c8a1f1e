"""The data pipeline: packing, per-process sharding, checkpointable order, clear errors."""

import hashlib

import numpy as np
import pytest

from foundations.config import ConfigError, DataConfig
from foundations.data.files import BUNDLED_CORPORA
from foundations.data.pipeline import PackedWindows, eval_batches, load_text_data, train_iterator


def test_bundled_corpus_is_byte_identical_to_its_source():
    data = (BUNDLED_CORPORA / "tinyshakespeare" / "input.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
    assert "86c4e6aa9db7c042" in (BUNDLED_CORPORA / "PROVENANCE.md").read_text()


def test_windows_pack_tokens_with_shifted_targets():
    tokens = np.arange(23, dtype=np.int32)
    windows = PackedWindows(tokens, seq_len=5)
    assert len(windows) == 4
    np.testing.assert_array_equal(windows[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(windows[1], [5, 6, 7, 8, 9, 10])  # inputs 5..9, targets 6..10
    np.testing.assert_array_equal(windows[3], [15, 16, 17, 18, 19, 20])


def test_split_and_byte_tokenizer(corpus):
    data = load_text_data(DataConfig(train_files=[str(corpus)], seq_len=16, val_fraction=0.1))
    text = corpus.read_text()
    total = len(text.encode()) + 1  # one end-of-text token after the file
    assert len(data.train_tokens) + len(data.val_tokens) == total
    assert len(data.val_tokens) == total - int(total * 0.9)
    assert data.tokenizer.decode(data.train_tokens[:40]) == text[:40]
    assert data.bytes_per_token == pytest.approx((total - 1) / total)


def test_processes_split_each_global_batch(corpus):
    tokens = np.arange(10_000, dtype=np.int32)
    whole = train_iterator(tokens, 16, global_batch=8, seed=3)
    halves = [train_iterator(tokens, 16, 8, 3, process_index=i, process_count=2) for i in (0, 1)]
    for _ in range(5):
        batch = next(whole)
        parts = [next(h) for h in halves]
        assert all(p.shape == (4, 17) for p in parts)
        assert sorted(map(tuple, np.concatenate(parts))) == sorted(map(tuple, batch))
        assert not set(map(tuple, parts[0])) & set(map(tuple, parts[1]))


def test_iterator_state_restores_the_exact_next_batch():
    tokens = np.arange(5_000, dtype=np.int32)
    it = train_iterator(tokens, 16, 4, seed=0)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = train_iterator(tokens, 16, 4, seed=0)
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh), want)


def test_epochs_are_reshuffled_and_cover_every_window():
    tokens = np.arange(16 * 8 + 1, dtype=np.int32)  # exactly 8 windows
    it = train_iterator(tokens, 16, 8, seed=0)
    first, second = next(it), next(it)
    assert sorted(first[:, 0]) == sorted(second[:, 0]) == list(range(0, 128, 16))
    assert list(first[:, 0]) != list(second[:, 0])


def test_eval_batches_are_in_order():
    tokens = np.arange(16 * 8 + 1, dtype=np.int32)
    batches = list(eval_batches(tokens, 16, 4))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1][:, 0], [64, 80, 96, 112])


def test_a_limited_evaluation_spreads_over_the_whole_split():
    tokens = np.arange(16 * 40 + 1, dtype=np.int32)  # 40 windows = 10 batches of 4
    firsts = [int(b[0, 0]) // 64 for b in eval_batches(tokens, 16, 4, max_batches=3)]
    assert firsts == [0, 4, 9]  # first, middle and last batch, not the first three


def test_non_utf8_file_is_refused_with_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt is not valid UTF-8 \(byte 3"):
        load_text_data(DataConfig(train_files=[str(path)], seq_len=4))
    data = load_text_data(DataConfig(train_files=[str(path)], seq_len=4, val_fraction=0.3,
                                      fallback_encoding="latin-1"))
    assert data.tokenizer.decode(data.train_tokens[:5]) == "caf\u00e9"


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="data file 'nope.txt' not found"):
        load_text_data(DataConfig(train_files=["nope.txt"]))
    with pytest.raises(ConfigError, match="holds no \\*.txt files"):
        load_text_data(DataConfig(train_files=[str(tmp_path)]))
    with pytest.raises(ConfigError, match="data.tokenizer: .*no_tok/tokenizer.json does not exist"):
        load_text_data(DataConfig(tokenizer=str(tmp_path / "no_tok")))


def test_too_little_text_for_a_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="fewer than one window"):
        load_text_data(DataConfig(train_files=[str(path)], seq_len=64, val_fraction=0.5))


def test_every_jsonl_reader_names_the_file_and_line_of_a_bad_record(tmp_path):
    """prepare's documents, post-training's examples and the sweep's results read JSONL alike."""
    from foundations.data.prepare import PrepareOptions, documents
    from foundations.post.data import read_jsonl
    from foundations.scaling.results import ResultsError, load_curve
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "prompt": "p", "response": "r", "step": 1, "loss": 2.0, '
                   '"tokens": 8}\n\n{"text": oops}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl, line 3: malformed JSON"):
        documents(bad, PrepareOptions(tokenizer="byte"))
    with pytest.raises(ConfigError, match=r"bad\.jsonl, line 3: malformed JSON"):
        read_jsonl(bad, ("prompt", "response"))
    with pytest.raises(ResultsError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load_curve(bad)
