"""`foundations` command line: train, eval, generate (and the other issues' sub-commands).

Configuration problems (unknown key, wrong type, a batch that does not divide the mesh, a missing
or non-UTF-8 data file, a corrupt checkpoint) print one line naming the problem and exit 2. A run
stopped by SIGTERM or SIGINT prints where it stopped and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _train(args) -> None:
    from foundations.config import load_config
    from foundations.parallel import distributed
    config = load_config(args.config, args.overrides)
    if distributed.initialize(config.distributed):  # before anything else touches JAX
        print(distributed.describe(), flush=True)
    import jax
    from foundations.train import train
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    summary = train(config, run_dir, progress=not args.no_progress)
    if jax.process_index() != 0:
        return
    print(f"\nrun directory: {run_dir}")
    if "val_bpb" in summary:
        print(f"step {summary['step']}: validation loss {summary['val_loss']:.4f}, "
              f"perplexity {summary['val_ppl']:.2f}, bits per byte {summary['val_bpb']:.3f}")
    else:
        from foundations.train.evaluate import describe
        print(f"step {summary['step']}: {describe(summary)}")
    if summary["sample"]:
        print(f"sample:\n{summary['sample']}")


def _eval(args) -> None:
    from foundations.config import ConfigError
    from foundations.data.files import expand_files
    from foundations.data.text import tokenize_files
    from foundations.run import load_run
    from foundations.train.score import score_run
    run = load_run(args.run_dir, args.overrides)
    tokens, n_bytes = tokenize_files(expand_files(args.files), run.tokenizer)
    names = ", ".join(args.files)
    try:
        result = score_run(run, tokens, n_bytes / len(tokens),
                           args.batch_size or run.config.train.batch_size, args.stride,
                           args.max_batches)
    except ConfigError as e:
        raise ConfigError(f"{names}: {e}") from None
    step = run.step
    if "ppl" not in result:   # BERT: the masked-LM loss of the masked tokens
        print(f"{names} at step {step}: masked-LM loss {result['loss']:.4f} over "
              f"{result['tokens']} masked tokens")
        return
    print(f"{names} at step {step}: loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}, "
          f"bits per byte {result['bpb']:.3f} over {result['tokens']} tokens")


def _config(args) -> None:
    import yaml
    from foundations.config import (ConfigError, describe_keys, load_config, to_dict,
                                    validate_for)
    if args.keys:
        print(describe_keys())
        return
    if args.config is None:
        raise ConfigError("give a CONFIG file to resolve, or --keys to list every key")
    config = load_config(args.config, args.overrides)
    validate_for(config, args.for_command)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")


def _generate(args) -> None:
    from foundations.inference.cli import generate_command
    generate_command(args)


def _bench(args) -> None:
    from foundations.config import load_config
    from foundations.train.bench import bench, format_report
    report = bench(load_config(args.config, args.overrides), args.steps, args.rounds,
                   not args.no_plain)
    print(json.dumps(report) if args.json else format_report(report))


def add_sampling_arguments(p) -> None:
    """The sampling flags (Hugging Face's names and defaults: every processor off)."""
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0: off")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="keep the most likely tokens whose probabilities sum to p; 1: off")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="keep tokens at least min-p times as likely as the best; 0: off")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 makes tokens already written less likely; 1: off")
    p.add_argument("--num-beams", type=int, default=1, help="1: no beam search")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: a hypothesis scores sum log p / length ** this")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML file, e.g. experiments/smoke.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=80")
    p.add_argument("--run-dir", help="output directory (default runs/<config name>); "
                                     "an existing one is resumed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = commands.add_parser("config", help="print the resolved config, or list every key")
    p.add_argument("config", nargs="?", help="YAML file, e.g. experiments/smoke.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.moe.num_experts=8")
    p.add_argument("--keys", action="store_true",
                   help="list every key with its type, default and doc")
    from foundations.config.validate import COMMAND_CHECKS   # no JAX: yaml and dataclasses
    p.add_argument("--for", dest="for_command", default="train", choices=tuple(COMMAND_CHECKS),
                   help="also make the config-only checks of this command (default train; the "
                        "post-training stages need a decoder on one stage, ppo its settings)")
    p.set_defaults(func=_config)

    p = commands.add_parser("eval", help="loss of a run on text, in sliding windows (decoders "
                                         "and T5: LM loss; BERT: masked-LM loss)")
    p.add_argument("files", nargs="+", help="text files or directories of *.txt")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--batch-size", type=int, default=0, help="default: the run's batch size")
    p.add_argument("--max-batches", type=int, default=0, help="0: the whole text")
    p.add_argument("--stride", type=int, default=0,
                   help="tokens a sliding window advances; each scores only its new tokens "
                        "(0: the context length, windows side by side)")
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="section.key=value applied to the run's config")
    p.set_defaults(func=_eval)

    p = commands.add_parser("generate", help="sample text from a trained run (KV-cached, "
                                             "streamed)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="section.key=value applied to the run's config")
    add_sampling_arguments(p)
    p.set_defaults(func=_generate)

    p = commands.add_parser("bench", help="time the real train step on synthetic tokens against "
                                          "a plain Flax step of the same shape")
    p.add_argument("config", help="YAML file, e.g. experiments/smoke.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.batch_size=8")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each, after a warm-up")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds to split them into")
    p.add_argument("--no-plain", action="store_true", help="skip the plain reference step")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_bench)

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands) -> None:
    """Sub-commands that live with their own package (tokenizers, scaling, ...)."""
    from foundations.compile import add_compile_parser
    from foundations.convert.cli import add_convert_parser
    from foundations.data.prepare import add_prepare_parser
    from foundations.post.align import add_align_parser
    from foundations.post.cli import add_post_parser
    from foundations.prompting.cli import (add_addition_parsers, add_context_parser,
                                           add_facts_commands, add_rag_parser)
    from foundations.scaling.cli import add_fit_parser, add_plot_parser
    from foundations.scaling.sweep import add_sweep_parser
    from foundations.tokenizers.cli import add_tokenize_parser
    add_tokenize_parser(commands)
    add_sweep_parser(commands)
    add_fit_parser(commands)
    add_plot_parser(commands)
    add_compile_parser(commands)
    add_convert_parser(commands)
    add_rag_parser(commands)
    add_context_parser(commands)
    add_addition_parsers(commands)
    add_facts_commands(commands)   # moves under `foundations task` at the merge
    add_prepare_parser(commands)
    add_post_parser(commands)
    add_align_parser(commands)


def main(argv: list[str] | None = None) -> int:
    from foundations.config import ConfigError
    parser = build_parser()
    # Overrides may come after options (`train X.yaml --run-dir D train.steps=80`), which
    # argparse's positional matching does not allow; collect such key=value words ourselves.
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        # light imports only: `compile` sets XLA_FLAGS before anything imports JAX
        from foundations.config import CheckpointError
        from foundations.scaling.results import ResultsError
        from foundations.train.preemption import TrainingStopped
        args.func(args)
    except (ConfigError, ResultsError) as e:
        print(f"foundations {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:  # SIGTERM/SIGINT: the checkpoint is written, a rerun resumes
        print(f"foundations {args.command}: {e}", flush=True)
        return 0
    except (ValueError, OSError) as e:
        if args.command != "tokenize":  # elsewhere these are bugs: keep their traceback
            raise
        # the tokenizers raise these for the files they are given (missing, not UTF-8, corrupt)
        print(f"foundations tokenize: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"foundations {args.command}: error: {e}", file=sys.stderr)
        # orbax's reads of the other arrays are still failing in background threads; a normal
        # exit would print each of their tracebacks as they are torn down, burying this line
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
