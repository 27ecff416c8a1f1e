"""Retrieval-augmented generation: a folder of passages, the top-k for a question (BM25, or
dense embeddings from the project's BERT encoder), written into the prompt before the question.

Passages: every *.txt file under the folder (sorted), split at blank lines; each passage is
named `file.txt#n` (n counts from 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from foundations.config import ConfigError
from foundations.prompting.bm25 import BM25Index


class Passage(NamedTuple):
    name: str
    text: str


def load_passages(directory: str | Path) -> list[Passage]:
    """The blank-line separated passages of the folder's *.txt files; a one-line ConfigError
    for a missing or empty folder or a file that is not UTF-8."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"passages: {directory} is not a directory")
    passages = []
    for path in sorted(directory.rglob("*.txt")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"passages: {path} is not UTF-8 (byte {e.start})") from None
        paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
        passages += [Passage(f"{path.relative_to(directory)}#{n}", p)
                     for n, p in enumerate((p for p in paragraphs if p), 1)]
    if not passages:
        raise ConfigError(f"passages: {directory} holds no *.txt file with text")
    return passages


class Retriever:
    """top_k(question, k) -> [(Passage, score)], best first, by BM25."""

    def __init__(self, passages: list[Passage], k1: float = 1.5, b: float = 0.75):
        self.passages = passages
        self.index = BM25Index([p.text for p in passages], k1, b)

    def top_k(self, question: str, k: int) -> list[tuple[Passage, float]]:
        if k < 1:
            raise ConfigError(f"top-k must be >= 1 (got {k})")
        return [(self.passages[i], s) for i, s in self.index.top_k(question, k)]


class DenseRetriever:
    """Cosine similarity of mean-pooled BERT embeddings (a sentence-transformers encoder such as
    all-MiniLM-L6-v2 converted by `from_hf`); the passages are embedded once."""

    def __init__(self, passages: list[Passage], encoder_dir: str | Path, batch_size: int = 32):
        from foundations.convert import from_hf
        from foundations.tokenizers.wordpiece import WordPieceTokenizer
        encoder_dir = Path(encoder_dir)
        if not (encoder_dir / "vocab.txt").is_file():
            raise ConfigError(f"dense retrieval: {encoder_dir} has no vocab.txt (a BERT "
                              "encoder directory)")
        self.passages = passages
        self.tokenizer = WordPieceTokenizer.from_vocab_file(encoder_dir / "vocab.txt")
        self.model, self.params = from_hf(encoder_dir)
        self.max_len = self.model.config.model.max_seq_len
        self.vectors = np.concatenate([self.embed([p.text for p in passages[i:i + batch_size]])
                                       for i in range(0, len(passages), batch_size)])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings (len(texts), d)."""
        from foundations.models.encoder import mean_pool
        cls, sep = self.tokenizer.cls_id, self.tokenizer.sep_id
        rows = [[cls] + self.tokenizer.encode(t)[:self.max_len - 2] + [sep] for t in texts]
        length = max(map(len, rows))
        ids = np.array([r + [0] * (length - len(r)) for r in rows], np.int32)
        mask = np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows], np.int32)
        hidden = self.model.apply(self.params, ids, attention_mask=mask,
                                  token_type_ids=np.zeros_like(ids), method="encode")
        pooled = np.asarray(mean_pool(hidden, mask.astype(bool)), np.float32)
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

    def top_k(self, question: str, k: int) -> list[tuple[Passage, float]]:
        if k < 1:
            raise ConfigError(f"top-k must be >= 1 (got {k})")
        similarity = self.vectors @ self.embed([question])[0]
        order = sorted(range(len(similarity)), key=lambda i: (-similarity[i], i))[:k]
        return [(self.passages[i], float(similarity[i])) for i in order]


RAG_TEMPLATE = "{passages}\nQuestion: {question}\nAnswer:"


def rag_prompt(question: str, passages: list[Passage], template: str = RAG_TEMPLATE) -> str:
    """The passages, one a line as 'Passage: ...', then the question (RAG_TEMPLATE)."""
    listed = "\n".join(f"Passage: {' '.join(p.text.split())}" for p in passages)
    return template.format(passages=listed, question=question)
