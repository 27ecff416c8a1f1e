"""A task whose answers are only in the passages: facts of made-up entities, to measure RAG.

Every entity has a made-up name (seeded, pronounceable), a made-up city, a colour and a number of
goats, written as one passage: "Zorvaki lives in Tembra, likes teal and has 42 goats." Training
text teaches the *format* (passages, a question about one of them, its answer) on training
entities; the evaluation asks about held-out entities whose passages are only in the retrieval
corpus, never in the training text, so a model can answer them only by reading a passage.
Prompts are rag.rag_prompt's: "Passage: ...\\nQuestion: ...\\nAnswer:", and the answer follows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from foundations.prompting.rag import Passage, rag_prompt

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
COLOURS = ("red", "blue", "green", "teal", "amber", "violet", "grey", "pink", "gold", "black",
           "white", "orange")
QUESTIONS = {"city": "Where does {name} live?", "colour": "What colour does {name} like?",
             "goats": "How many goats does {name} have?"}
PASSAGE = "{name} lives in {city}, likes {colour} and has {goats} goats."


class Entity(NamedTuple):
    name: str
    city: str
    colour: str
    goats: str


def made_up_name(rng: np.random.Generator, syllables: int) -> str:
    """Capitalized consonant-vowel syllables and a final consonant ('Zorvak' shapes)."""
    letters = [CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))]
               for _ in range(syllables)]
    return ("".join(letters) + CONSONANTS[rng.integers(len(CONSONANTS))]).capitalize()


def make_entities(count: int, seed: int = 0, cities: int = 24) -> list[Entity]:
    """`count` entities with distinct 3-syllable names; cities (2 syllables, so never a name)
    come from a pool of `cities`; goats 2..99."""
    rng = np.random.default_rng([seed, 26])
    pool = list(dict.fromkeys(made_up_name(rng, 2) for _ in range(4 * cities)))[:cities]
    names: dict[str, None] = {}
    while len(names) < count:
        names[made_up_name(rng, 3)] = None
    return [Entity(n, pool[rng.integers(len(pool))], COLOURS[rng.integers(len(COLOURS))],
                   str(rng.integers(2, 100))) for n in names]


def passage(entity: Entity) -> str:
    return PASSAGE.format(**entity._asdict())


def question(entity: Entity, attribute: str) -> tuple[str, str]:
    """(question, exact answer) about one attribute of the entity."""
    return QUESTIONS[attribute].format(name=entity.name), getattr(entity, attribute)


def split_entities(train: int, heldout: int, seed: int = 0) -> tuple[list[Entity], list[Entity]]:
    """(training entities, held-out entities): one draw, so the names never overlap."""
    entities = make_entities(train + heldout, seed)
    return entities[:train], entities[train:]


def training_text(entities: list[Entity], seed: int = 0, examples_per_entity: int = 3,
                  max_passages: int = 1, closed_book: float = 0.1) -> str:
    """Examples separated by blank lines: 1..max_passages passages (the entity's, at a random
    place, among other training entities'), a question about the entity and its answer; a
    `closed_book` share has no passage (so that the no-retrieval prompt is a known format)."""
    rng = np.random.default_rng([seed, 27])
    attributes = list(QUESTIONS)
    examples = []
    for i in range(examples_per_entity * len(entities)):
        entity = entities[i % len(entities)]
        q, answer = question(entity, attributes[rng.integers(len(attributes))])
        if rng.random() < closed_book:
            shown = []
        else:
            others = [entities[j] for j in rng.choice(len(entities), max_passages, replace=False)
                      if entities[j] != entity][:rng.integers(max_passages)]
            shown = others[:]
            shown.insert(int(rng.integers(len(others) + 1)), entity)
        examples.append(rag_prompt(q, [Passage("", passage(e)) for e in shown]) + f" {answer}")
    order = rng.permutation(len(examples))
    return "\n\n".join(examples[i] for i in order) + "\n"


def eval_questions(entities: list[Entity], seed: int = 0) -> list[dict]:
    """One question a held-out entity, about a random attribute, with its oracle passage."""
    rng = np.random.default_rng([seed, 28])
    rows = []
    for entity in entities:
        q, answer = question(entity, list(QUESTIONS)[rng.integers(len(QUESTIONS))])
        rows.append({"question": q, "answer": answer, "passage": passage(entity)})
    return rows


def write_facts(out_dir: str | Path, train: int = 2000, heldout: int = 200, seed: int = 0,
                examples_per_entity: int = 3, max_passages: int = 1) -> dict[str, Path]:
    """Writes train.txt, passages/facts.txt (every entity's passage, blank-line separated: the
    folder `foundations rag --passages` reads) and eval.jsonl (held-out questions)."""
    out = Path(out_dir)
    (out / "passages").mkdir(parents=True, exist_ok=True)
    train_entities, heldout_entities = split_entities(train, heldout, seed)
    everyone = sorted(train_entities + heldout_entities)   # by name: held-out ones interleaved
    paths = {"train": out / "train.txt", "passages": out / "passages",
             "eval": out / "eval.jsonl"}
    paths["train"].write_text(training_text(train_entities, seed, examples_per_entity,
                                                max_passages))
    (out / "passages" / "facts.txt").write_text("\n\n".join(map(passage, everyone)) + "\n")
    paths["eval"].write_text("".join(json.dumps(r) + "\n"
                                     for r in eval_questions(heldout_entities, seed)))
    return paths


def evaluate_facts(model, params, tokenizer, rows: list[dict], passages: list[Passage],
                   top_k: int = 1, max_new_tokens: int = 12, batch_size: int = 64) -> dict:
    """Exact-match accuracy (with a 95% Wilson interval) of greedy answers to `rows` with no
    passage, with the BM25 top_k passages and with the oracle passage; and BM25's recall@k."""
    from foundations.inference.complete import answer_line, complete
    from foundations.prompting.rag import Retriever
    from foundations.scaling.probe import wilson_interval
    retriever = Retriever(passages)
    retrieved = [[p for p, _ in retriever.top_k(r["question"], top_k)] for r in rows]
    prompts = {"no_retrieval": [rag_prompt(r["question"], []) for r in rows],
               "bm25": [rag_prompt(r["question"], ps) for r, ps in zip(rows, retrieved)],
               "oracle": [rag_prompt(r["question"], [Passage("oracle", r["passage"])])
                          for r in rows]}

    def share(hits: int) -> dict:
        lo, hi = wilson_interval(hits, len(rows))
        return {"accuracy": hits / max(len(rows), 1), "correct": hits, "ci95": [lo, hi]}
    result = {"questions": len(rows), "top_k": top_k}
    for condition, texts in prompts.items():
        answers = complete(model, params, tokenizer, texts, max_new_tokens,
                           batch_size=batch_size)
        result[condition] = share(sum(answer_line(a) == r["answer"]
                                      for a, r in zip(answers, rows)))
    found = sum(any(p.text == r["passage"] for p in ps) for r, ps in zip(rows, retrieved))
    result["recall_at_k"] = share(found)
    return result
