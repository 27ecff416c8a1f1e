"""Writes bert/vocab.txt (the tiny BERT's WordPiece vocabulary, from its tokenizer.json, one token
a line, id = line) and bert/retrieval.npz: the sentence embeddings transformers computes with
that BERT for the passages and questions of tests/test_rag.py (run once, by hand, after
make_references.py; torch and transformers are not project dependencies).

    pip install torch==2.13.0 transformers     # a separate environment
    python tests/data/hf/make_retrieval_reference.py

Each text alone: [CLS] WordPiece ids [SEP] (at most max_position_embeddings in all), the last
hidden states mean-pooled over its tokens, then L2-normalised (the sentence-transformers
recipe). tests/test_rag.py checks `DenseRetriever` (which batches and pads) against these.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers as tf

HERE = Path(__file__).parent / "bert"
# tests/test_rag.py's FACTS paragraphs, in load_passages' order, and its questions
PASSAGES = ["The capital of Freedonia is Zumbar, a city on the river Oss.",
            "Sylvania lies north of Freedonia; its capital is Ketterly.",
            "Freedonia was founded in 1821 by the merchant Rufus Firefly.",
            "The great flood of Zumbar happened in 1902 and lasted nine days.",
            "The spotted glimmer-newt lives only in the caves of Ketterly.",
            "A grown glimmer-newt weighs about forty grams."]
QUESTIONS = ["What is the capital of Freedonia?", "Who founded Freedonia?",
             "How much does a glimmer-newt weigh?", "When was the flood of Zumbar?"]


def main() -> None:
    vocab = json.loads((HERE / "tokenizer.json").read_text())["model"]["vocab"]
    ordered = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in ordered] == list(range(len(ordered)))
    (HERE / "vocab.txt").write_text("".join(t + "\n" for t in ordered))
    tokenizer = tf.BertTokenizer(str(HERE / "vocab.txt"), do_lower_case=True)
    model = tf.BertModel.from_pretrained(HERE).eval()
    limit = model.config.max_position_embeddings

    def embed(texts):
        out = []
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=limit)["input_ids"]
            with torch.no_grad():
                hidden = model(input_ids=torch.as_tensor([ids])).last_hidden_state[0].numpy()
            pooled = hidden.mean(axis=0)
            out.append(pooled / np.linalg.norm(pooled))
        return np.asarray(out, np.float32)

    passages, questions = embed(PASSAGES), embed(QUESTIONS)
    np.savez(HERE / "retrieval.npz", passages=np.array(PASSAGES), questions=np.array(QUESTIONS),
             passage_vectors=passages, question_vectors=questions)
    print((questions @ passages.T).round(3))


if __name__ == "__main__":
    main()
