"""Few-shot and chain-of-thought prompts, answer extraction and the self-consistency vote on
hand-made examples; batched completion of left-padded prompts equals each prompt alone."""

import jax
import numpy as np
import pytest

from foundations.config import ConfigError, load_config
from foundations.models.families import build_model
from foundations.prompting.consistency import (answer_questions, complete, majority_vote,
                                               self_consistency)
from foundations.prompting.fewshot import CHAIN_OF_THOUGHT, Example, few_shot_prompt
from foundations.prompting.tasks import (accuracy, addition_examples, addition_reasoning,
                                         extract_answer)
from foundations.tokenizers.byte import ByteTokenizer

POOL = [Example("12+35=", "47", "2+5=7, 1+3=4."), Example("8+9=", "17", "8+9=17."),
        Example("40+2=", "42", "0+2=2, 4+0=4.")]


def test_majority_vote_ignores_no_answer_and_breaks_ties_by_first_seen():
    assert majority_vote(["47", "46", None, "47", None, None]) == "47"
    assert majority_vote(["46", "47", "47", "46"]) == "46"
    assert majority_vote(["47", "46", "46", "47"]) == "47"
    assert majority_vote([None, None]) is None and majority_vote([]) is None


def test_few_shot_prompt_shows_k_other_examples_then_the_open_question():
    prompt = few_shot_prompt(POOL, "12+35=", k=2, seed=0)
    assert prompt in ("Q: 8+9= A: 17\nQ: 40+2= A: 42\nQ: 12+35= A:",
                      "Q: 40+2= A: 42\nQ: 8+9= A: 17\nQ: 12+35= A:")   # never its own answer
    assert few_shot_prompt(POOL, "12+35=", k=2, seed=0) == prompt   # seeded
    orders = {few_shot_prompt(POOL, "1+1=", k=3, seed=s).split("\n")[0] for s in range(20)}
    assert len(orders) == 3                                          # seeds choose differently
    assert few_shot_prompt(POOL, "1+1=", k=0) == "Q: 1+1= A:"
    with pytest.raises(ConfigError, match="k=3 examples asked from a pool of 2"):
        few_shot_prompt(POOL, "8+9=", k=3)


def test_chain_of_thought_prompt_and_its_reasoning():
    prompt = few_shot_prompt(POOL[:1], "8+9=", k=1, template=CHAIN_OF_THOUGHT)
    assert prompt == ("Q: 12+35= Let's think step by step. 2+5=7, 1+3=4. The answer is 47.\n"
                      "Q: 8+9= Let's think step by step.")
    assert addition_reasoning(12, 35) == "2+5=7, 1+3=4."
    assert addition_reasoning(58, 67) == "8+7=15, 5+6+1=12, 0+0+1=1."
    assert addition_reasoning(0, 0) == "0+0=0."
    examples = addition_examples(50, digits=3, seed=1)
    assert examples == addition_examples(50, digits=3, seed=1)
    for e in examples:
        a, b = map(int, e.question[:-1].split("+"))
        assert int(e.answer) == a + b < 2000


def test_answer_extraction_and_accuracy():
    assert extract_answer(" 47\nQ: 3+4= A: 7") == "47"
    assert extract_answer(" 2+5=7, 1+3=4. The answer is 47.\nQ: 1+1= ... answer is 2.") == "47"
    assert extract_answer(" 2+5=7, 1+3=4. The answer is\nQ: answer is 9") == "2"
    assert extract_answer(" none\n47") is None
    assert accuracy(["47", None, "3"], ["47", "17", "4"]) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def tiny_decoder():
    config = load_config(None, ["model.num_layers=2", "model.d_model=32", "model.num_heads=4",
                                "model.max_seq_len=64", "data.seq_len=64", "model.init_std=0.3",
                                "model.positions.kind=rope"])
    model = build_model(config)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))


def test_batched_completion_of_padded_prompts_equals_each_alone(tiny_decoder):
    model, params = tiny_decoder
    tokenizer = ByteTokenizer()
    prompts = ["Q: 12+35= A:", "Q: 1+2= A:"]
    together = complete(model, params, tokenizer, prompts, max_new_tokens=6)
    assert together == [complete(model, params, tokenizer, [p], max_new_tokens=6)[0]
                        for p in prompts]


def test_self_consistency_votes_over_k_samples(tiny_decoder):
    model, params = tiny_decoder
    tokenizer = ByteTokenizer()
    first = lambda text: text[:1]   # noqa: E731  the first character as the "answer"
    vote, answers = self_consistency(model, params, tokenizer, "Q: 1+2= A:", first, k=12,
                                     temperature=2.0, max_new_tokens=2, seed=3)
    assert len(answers) == 12 and len(set(answers)) > 1    # samples differ at temperature 2
    assert answers.count(vote) == max(answers.count(a) for a in answers)
    greedy, _ = answer_questions(model, params, tokenizer, ["Q: 1+2= A:"], first)
    assert greedy == [complete(model, params, tokenizer, ["Q: 1+2= A:"], 16)[0][:1]]
    with pytest.raises(ConfigError, match="temperature > 0"):
        self_consistency(model, params, tokenizer, "Q:", first, k=4, temperature=0.0)


def test_addition_data_writes_the_task_as_text(tmp_path):
    from foundations.cli import main as cli
    out = tmp_path / "sums.txt"
    assert cli(["addition-data", str(out), "--count", "5", "--seed", "4"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    for line in lines:
        question, answer = line[3:].split(" A: ")
        a, b = map(int, question[:-1].split("+"))
        assert extract_answer(" " + answer) == str(a + b)
    assert cli(["addition-data", str(out), "--count", "2", "--chain-of-thought"]) == 0
    assert all("Let's think step by step." in line and extract_answer(line.split("step.")[1])
               for line in out.read_text().splitlines())
