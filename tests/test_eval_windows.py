"""The validation set is a fixed number of windows (train.eval_windows), whatever
train.batch_size: two batch sizes see the same windows and give the same loss on the same
parameters. A config that sets only the old train.eval_batches keeps its old meaning."""

import numpy as np
import pytest

from foundations.config import config_from_tree
from foundations.data.pipeline import eval_window_batches, eval_windows
from foundations.train.evaluate import evaluate
from foundations.train.loop import build


def test_chosen_windows_do_not_depend_on_the_batch():
    tokens = np.arange(10_000, dtype=np.int32)
    _, chosen = eval_windows(tokens, 16, num_windows=20)
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    assert chosen[0] == 0 and chosen[-1] == (len(tokens) - 1) // 16 - 1   # spread over the split
    seen = {}
    for batch in (3, 8, 20, 64):
        rows = [b for b, _ in eval_window_batches(tokens, 16, batch, 20)]
        seen[batch] = np.concatenate(rows)
        assert sum(count for _, count in eval_window_batches(tokens, 16, batch, 20)) == 20
    for batch in (8, 20, 64):
        np.testing.assert_array_equal(seen[batch], seen[3])
    # rounded down to a multiple of the mesh's batch axes; 0: every window
    assert len(eval_windows(tokens, 16, 22, multiple=4)[1]) == 20
    assert len(eval_windows(tokens, 16, 0)[1]) == (len(tokens) - 1) // 16


def test_two_batch_sizes_give_the_same_validation_loss(tiny_config):
    data, small = build(tiny_config("train.batch_size=4", "train.eval_windows=12"))
    _, large = build(tiny_config("train.batch_size=8", "train.eval_windows=12"), data=data)
    params = small.init_state()["params"]
    a = evaluate(small, params, data.val_tokens, data.bytes_per_token, 4, 12)
    b = evaluate(large, params, data.val_tokens, data.bytes_per_token, 8, 12)  # 8 + a batch of 4
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    c = evaluate(large, params, data.val_tokens, data.bytes_per_token, 8, 24)
    assert c["val_loss"] != pytest.approx(a["val_loss"], rel=1e-7)  # a different set: it counts


def test_old_eval_batches_key_keeps_its_meaning():
    assert config_from_tree({}).train.eval_windows == 256
    old = config_from_tree({"train": {"eval_batches": 5, "batch_size": 8}}).train
    assert old.eval_windows == 40 and old.eval_batches == 5
    assert config_from_tree({"train": {"eval_batches": 3}}).train.eval_windows == 48
    new = config_from_tree({"train": {"eval_batches": 5, "eval_windows": 100,
                                      "batch_size": 8}}).train
    assert new.eval_windows == 100
    assert config_from_tree({"train": {"eval_batches": 0}}).train.eval_windows == 0
