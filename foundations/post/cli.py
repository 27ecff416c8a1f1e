"""`foundations sft|reward|dpo|ppo CONFIG [overrides] --run-dir DIR` and `merge` (LoRA into the
base weights); `foundations task answers` (exact-match accuracy) and `task addition-pairs` (the
synthetic task's JSONL) are mounted by tasks_cli.py."""

from __future__ import annotations

from pathlib import Path

STAGE_HELP = {"sft": "supervised fine-tuning on (prompt, response) JSONL",
              "reward": "a reward model on (prompt, chosen, rejected) JSONL",
              "dpo": "direct preference optimisation against the init_from policy",
              "ppo": "PPO (or GRPO) from a rule or reward-model reward on prompts JSONL"}


def _stage(args) -> None:
    from foundations.config import load_config
    from foundations.parallel import distributed
    config = load_config(args.config, args.overrides)
    if distributed.initialize(config.distributed):  # as `train`: before anything touches JAX
        print(distributed.describe(), flush=True)
    import jax
    from foundations.post.stages import Stage
    from foundations.train.evaluate import describe
    from foundations.train import log, train
    run_dir = Path(args.run_dir or Path("runs") / f"{Path(args.config).stem}_{args.command}")
    summary = train(config, run_dir, progress=not args.no_progress, stage=Stage(args.command, log))
    if jax.process_index() == 0:
        print(f"\nrun directory: {run_dir}\nstep {summary['step']}: {describe(summary)}")


def _merge(args) -> None:
    from foundations.post.merge import merge_run
    out = merge_run(args.run_dir, args.out, args.peft)
    print(f"merged {args.run_dir} into {out}"
          + (f"; PEFT adapter in {args.peft}" if args.peft else ""))


def _answers(args) -> None:
    from foundations.post.answers import run_accuracy
    accuracy = run_accuracy(args.run_dir, args.examples, args.limit)
    print(f"{args.run_dir}: exact-match accuracy {accuracy:.4f} on {args.examples}")


def _addition_pairs(args) -> None:
    from foundations.post.synthetic import write_addition
    for name, path in write_addition(args.out, args.count, args.digits, args.seed).items():
        print(f"{name}: {path}")


def add_post_parser(commands) -> None:
    for name, help_text in STAGE_HELP.items():
        p = commands.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML file, e.g. experiments/post/addition.yaml")
        p.add_argument("overrides", nargs="*", help="section.key=value, e.g. lora.rank=8")
        p.add_argument("--run-dir", help="output directory (default runs/<config>_<stage>); "
                                         "an existing one is resumed")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=_stage)
    p = commands.add_parser("merge", help="fold a LoRA run's adapters into its base weights")
    p.add_argument("--run-dir", required=True, help="a run trained with lora.rank > 0")
    p.add_argument("--out", required=True, help="the merged run directory to write")
    p.add_argument("--peft", help="also write the adapters here in PEFT's format")
    p.set_defaults(func=_merge)


def add_addition_pairs_parser(commands) -> None:
    p = commands.add_parser("addition-pairs", help="write the synthetic addition task's "
                                                  "sft.jsonl and pairs.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_addition_pairs)


def add_answers_parser(commands) -> None:
    p = commands.add_parser("answers", help="exact-match accuracy of a run's greedy answers "
                                            "on (prompt, response) JSONL")
    p.add_argument("examples", help="JSONL of {\"prompt\", \"response\"} lines")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--limit", type=int, default=0, help="the first N examples; 0: all")
    p.set_defaults(func=_answers)
