"""Generated tokens equal transformers' `generate` on the committed tiny models (greedy and beam
search, a left-padded batch of two prompts of different lengths; tests/data/hf/generations.json
written by make_generations.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from foundations.convert import from_hf
from foundations.inference import generate

DATA = Path(__file__).parent / "data" / "hf"
EXPECTED = json.loads((DATA / "generations.json").read_text())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_greedy_and_beam_tokens_equal_transformers(name):
    expected = EXPECTED[name]
    model, params = from_hf(DATA / name)
    ids, mask = np.asarray(expected["input_ids"]), np.asarray(expected["attention_mask"]) > 0
    new = len(expected["greedy"][0])
    greedy = generate(model, params, ids, attention_mask=mask, max_new_tokens=new,
                      pad_token_id=0)
    assert greedy.tolist() == expected["greedy"]
    beams = generate(model, params, ids, attention_mask=mask, max_new_tokens=new, num_beams=2,
                     pad_token_id=0)
    assert beams.tolist() == expected["beam2"]
