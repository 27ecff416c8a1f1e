"""The prompting package's commands: `rag`, `context-ppl`, and, under `foundations task`,
`addition-data`, `prompt-eval`, `facts-data` and `facts-eval` (the synthetic tasks' data and a
run's accuracy on them).

Flags are defined here without importing JAX (the parser is built before `compile` sets up
devices); the work imports it when a command runs.
"""

from __future__ import annotations


def add_rag_parser(commands) -> None:
    p = commands.add_parser("rag", help="retrieve passages for a question (BM25 or a BERT "
                                        "encoder) and let a run's model answer from them")
    p.add_argument("--run-dir", required=True, help="a decoder run that writes the answer")
    p.add_argument("--passages", required=True, help="a folder of *.txt files; passages are "
                                                     "split at blank lines")
    p.add_argument("--question", required=True)
    p.add_argument("--top-k", type=int, default=3, help="passages put in the prompt")
    p.add_argument("--encoder", default="", help="a converted BERT encoder directory (e.g. "
                                                 "all-MiniLM-L6-v2) for dense retrieval; "
                                                 "default: BM25")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="section.key=value applied to the run's config")
    p.set_defaults(func=rag_command)


def rag_command(args) -> None:
    """Prints the retrieved passages with their scores, then the model's answer (its first
    line)."""
    from foundations.config import ConfigError
    from foundations.prompting.rag import DenseRetriever, Retriever, load_passages, rag_prompt
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1 (got {args.top_k})")
    passages = load_passages(args.passages)
    retriever = (DenseRetriever(passages, args.encoder) if args.encoder
                 else Retriever(passages))
    retrieved = retriever.top_k(args.question, args.top_k)
    for passage, score in retrieved:
        print(f"[{score:.3f}] {passage.name}: {' '.join(passage.text.split())}")
    from foundations.inference.text import generate_text
    from foundations.run import context_length, load_run
    run = load_run(args.run_dir, args.overrides)
    if run.config.model.family != "decoder":
        raise ConfigError(f"{args.run_dir} is a model.family={run.config.model.family} run; "
                          "rag answers with a decoder run")
    prompt = rag_prompt(args.question, [p for p, _ in retrieved])
    answer = generate_text(run.model, run.params, run.tokenizer, prompt,
                           args.max_new_tokens, context_length(run.config),
                           temperature=args.temperature, seed=args.seed)
    print(f"answer: {answer.strip().splitlines()[0] if answer.strip() else ''}")


def add_context_parser(commands) -> None:
    p = commands.add_parser("context-ppl", help="perplexity of runs at several window lengths "
                                                "(context extension, before and after)")
    p.add_argument("files", nargs="+", help="text files or directories of *.txt")
    p.add_argument("--run-dir", dest="run_dirs", action="append", required=True,
                   help="a run to score (repeat: the base run and its extended runs)")
    p.add_argument("--lengths", type=int, nargs="+", required=True,
                   help="window lengths, e.g. the old and the new max_seq_len")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=0, help="0: the whole text")
    p.add_argument("--json", default="", help="also write {run: {length: ppl}} to this file")
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="section.key=value applied to every run's config")
    p.set_defaults(func=context_command)


def context_command(args) -> None:
    import json
    from pathlib import Path

    from foundations.prompting.context import format_table, perplexity_table
    table = perplexity_table(args.run_dirs, args.files, args.lengths, args.batch_size,
                             args.max_batches, args.overrides)
    print(format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")


def add_addition_data_parser(commands) -> None:
    p = commands.add_parser("addition-data", help="write the addition task ('Q: 12+35= A: 47') "
                                                  "as training text")
    p.add_argument("out", help="the text file to write")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chain-of-thought", action="store_true",
                   help="write the column sums before the answer")
    p.set_defaults(func=addition_data_command)


def add_prompt_eval_parser(commands) -> None:
    p = commands.add_parser("prompt-eval", help="addition accuracy of a run: zero-shot, "
                                                "few-shot, and self-consistency (majority vote)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--count", type=int, default=200, help="held-out questions")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="of the questions (the training data's "
                                                       "default seed is 0)")
    p.add_argument("--exclude", default="", help="a training text file: its questions are "
                                                 "not asked")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--samples", type=int, default=8, help="self-consistency's k")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--chain-of-thought", action="store_true")
    p.add_argument("--json", default="", help="also write the accuracies to this file")
    p.set_defaults(func=prompt_eval_command)


def _template(chain_of_thought: bool):
    from foundations.prompting.fewshot import CHAIN_OF_THOUGHT, DIRECT
    return CHAIN_OF_THOUGHT if chain_of_thought else DIRECT


def addition_data_command(args) -> None:
    from pathlib import Path

    from foundations.prompting.tasks import addition_examples
    template = _template(args.chain_of_thought)
    lines = [template.solved.format(**e._asdict())
             for e in addition_examples(args.count, args.digits, args.seed)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {len(lines)} examples")


def prompt_eval_command(args) -> None:
    import json
    from pathlib import Path

    from foundations.config import ConfigError
    from foundations.prompting.tasks import addition_examples, evaluate_addition
    from foundations.run import load_run
    if args.samples < 1 or args.temperature <= 0:
        raise ConfigError("--samples must be >= 1 and --temperature > 0 (self-consistency "
                          "samples)")
    seen = set(Path(args.exclude).read_text().splitlines()) if args.exclude else set()
    template = _template(args.chain_of_thought)
    pool = addition_examples(1000, args.digits, args.seed + 1000)
    questions = [q for q in addition_examples(4 * args.count, args.digits, args.seed)
                 if template.solved.format(**q._asdict()) not in seen][:args.count]
    run = load_run(args.run_dir)
    tokens = 8 if not args.chain_of_thought else 24 + 12 * args.digits
    result = evaluate_addition(run.model, run.params, run.tokenizer, questions, pool,
                               args.shots, args.samples, args.temperature, template, args.seed,
                               max_new_tokens=tokens)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def add_facts_commands(commands) -> None:
    """`facts-data` and `facts-eval`: the RAG measurement on made-up entities (prompting/facts)."""
    p = commands.add_parser("facts-data", help="write the facts task: training text, a passage "
                                               "folder and held-out questions (eval.jsonl)")
    p.add_argument("out", help="the folder to write train.txt, passages/ and eval.jsonl into")
    p.add_argument("--train-entities", type=int, default=2000)
    p.add_argument("--heldout-entities", type=int, default=200, help="one question each")
    p.add_argument("--examples-per-entity", type=int, default=3)
    p.add_argument("--max-passages", type=int, default=1,
                   help="passages per training example (the others are distractors)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=facts_data_command)

    p = commands.add_parser("facts-eval", help="accuracy of a run on the facts questions with no "
                                               "retrieval, BM25 top-k passages and the oracle "
                                               "passage; BM25 recall@k")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--questions", required=True, help="eval.jsonl of facts-data (question, "
                                                      "answer, passage)")
    p.add_argument("--passages", required=True, help="the passage folder (as for `rag`)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default="", help="also write the JSON to this file")
    p.set_defaults(func=facts_eval_command)


def facts_data_command(args) -> None:
    from foundations.config import ConfigError
    from foundations.prompting.facts import write_facts
    if min(args.train_entities, args.heldout_entities, args.examples_per_entity,
           args.max_passages) < 1 or args.max_passages > args.train_entities:
        raise ConfigError("facts-data: entity and example counts must be >= 1, and "
                          "--max-passages at most --train-entities")
    paths = write_facts(args.out, args.train_entities, args.heldout_entities, args.seed,
                        args.examples_per_entity, args.max_passages)
    print(" ".join(str(p) for p in paths.values()))


def facts_eval_command(args) -> None:
    import json
    import time
    from pathlib import Path

    from foundations.config import ConfigError
    from foundations.post.data import read_jsonl
    from foundations.prompting.facts import evaluate_facts
    from foundations.prompting.rag import load_passages
    from foundations.run import load_run
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1 (got {args.top_k})")
    rows = read_jsonl(args.questions, ("question", "answer", "passage"))
    passages = load_passages(args.passages)
    run = load_run(args.run_dir)
    start = time.perf_counter()
    result = evaluate_facts(run.model, run.params, run.tokenizer, rows, passages, args.top_k,
                            args.max_new_tokens)
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    for condition in ("no_retrieval", "bm25", "oracle"):
        r = result[condition]
        print(f"{condition:>12}: {r['accuracy']:.3f} ({r['correct']}/{result['questions']}), "
              f"95% CI [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    print(f"BM25 recall@{args.top_k}: {result['recall_at_k']['accuracy']:.3f}")
