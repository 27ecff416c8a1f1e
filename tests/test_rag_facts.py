"""The facts task (prompting/facts.py): deterministic per seed; held-out names never in the
training text; each answer is in its entity's one passage; BM25 finds that passage; facts-eval
runs end to end through the CLI on a tiny model and its intervals are Wilson's; bad input is
refused in one line."""

import json
import math
import re

import pytest

from foundations.cli import main as cli
from foundations.prompting.facts import PASSAGE, QUESTIONS, split_entities, write_facts
from foundations.prompting.rag import Retriever, load_passages

TRAIN, HELDOUT = 300, 60


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    """facts-data's files for 300 training and 60 held-out entities, written through the CLI."""
    out = tmp_path_factory.mktemp("facts")
    assert cli(["task", "facts-data", str(out), "--train-entities", str(TRAIN),
                "--heldout-entities", str(HELDOUT), "--max-passages", "2"]) == 0
    return out


def read_rows(facts):
    return [json.loads(line) for line in (facts / "eval.jsonl").read_text().splitlines()]


def test_the_generator_is_deterministic_per_seed(facts, tmp_path):
    again = write_facts(tmp_path / "again", TRAIN, HELDOUT, seed=0, max_passages=2)
    other = write_facts(tmp_path / "other", TRAIN, HELDOUT, seed=1, max_passages=2)
    for name in ("train.txt", "eval.jsonl", "passages/facts.txt"):
        assert (tmp_path / "again" / name).read_text() == (facts / name).read_text(), name
        assert (tmp_path / "other" / name).read_text() != (facts / name).read_text(), name
    assert set(again) == set(other) == {"train", "passages", "eval"}


def test_no_heldout_entity_occurs_in_the_training_text(facts):
    train, heldout = split_entities(TRAIN, HELDOUT, seed=0)
    text = (facts / "train.txt").read_text()
    assert len({e.name for e in train + heldout}) == TRAIN + HELDOUT
    assert not [e.name for e in heldout if e.name in text]
    assert all(e.name in text for e in train)
    assert "\nQuestion: " in text and "\nAnswer: " in text and "Passage: " in text


def test_each_answer_is_in_exactly_its_entitys_passage(facts):
    passages = [p.text for p in load_passages(facts / "passages")]
    assert len(passages) == TRAIN + HELDOUT
    rows = read_rows(facts)
    assert len(rows) == HELDOUT
    slot = re.compile(PASSAGE.replace(".", r"\.").format(
        name=r"(?P<name>\w+)", city=r"(?P<city>\w+)", colour=r"(?P<colour>\w+)",
        goats=r"(?P<goats>\d+)"))
    for row in rows:
        name = re.search(r"\b[A-Z][a-z]{6}\b", row["question"]).group(0)
        attribute = next(a for a, q in QUESTIONS.items() if q.format(name=name) == row["question"])
        holders = [p for p in passages if name in p]
        assert holders == [row["passage"]], row
        assert slot.fullmatch(row["passage"])[attribute] == row["answer"], row
    assert {r["question"].split()[0] for r in rows} == {"Where", "What", "How"}


def test_bm25_retrieves_the_right_passage(facts):
    """Measured: recall@1 is 1.0 on this corpus (the made-up name is the rare word)."""
    retriever = Retriever(load_passages(facts / "passages"))
    rows = read_rows(facts)
    hits = sum(retriever.top_k(r["question"], 1)[0][0].text == r["passage"] for r in rows)
    assert hits / len(rows) >= 0.95


def wilson(k, n, z=1.96):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.slow  # trains a run, then the facts-eval command end to end
def test_facts_eval_runs_end_to_end(facts, tiny_config, tmp_path, capsys):
    from foundations.train.loop import train
    run = tmp_path / "run"
    train(tiny_config(f"data.train_files=[{facts / 'train.txt'}]", "model.positions.kind=rope",
                      "model.max_seq_len=128", "data.seq_len=128", "train.steps=1",
                      "schedule.warmup_steps=0"), run, progress=False)
    capsys.readouterr()
    out = tmp_path / "facts.json"
    assert cli(["task", "facts-eval", "--run-dir", str(run),
                "--questions", str(facts / "eval.jsonl"), "--passages", str(facts / "passages"),
                "--top-k", "2", "--max-new-tokens", "4", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert {k: v for k, v in printed.items() if k != "eval_seconds"} == {
        k: v for k, v in written.items() if k != "eval_seconds"}
    assert written["questions"] == HELDOUT and written["top_k"] == 2
    for condition in ("no_retrieval", "bm25", "oracle", "recall_at_k"):
        r = written[condition]
        assert r["accuracy"] == r["correct"] / HELDOUT
        assert r["ci95"] == pytest.approx(wilson(r["correct"], HELDOUT), abs=1e-12)
    assert written["recall_at_k"]["accuracy"] >= 0.95
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)   # the hand formula


def test_bad_input_is_refused_in_one_line(facts, tmp_path, capsys):
    args = ["task", "facts-eval", "--run-dir", str(tmp_path), "--passages", str(facts / "passages"),
            "--questions"]
    assert cli(args + [str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "Where?", "answer": "Tembra"}) + "\n")
    assert cli(args + [str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrong.jsonl:1: expected an object with string fields question, answer, passage" \
        in err and "\n" not in err
    assert cli(args + [str(facts / "eval.jsonl"), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
