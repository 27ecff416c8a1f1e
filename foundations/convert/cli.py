"""`foundations convert from-hf DIR --run-dir OUT` and `foundations convert to-hf --run-dir RUN
OUT`: Hugging Face directories to run directories and back (convert/run.py)."""

from __future__ import annotations


def _from_hf(args) -> None:
    from foundations.convert.run import hf_to_run
    info = hf_to_run(args.dir, args.run_dir, adapter=args.adapter)
    print(f"{args.dir} -> {args.run_dir}: {info['family']}, {info['parameters']:,} parameters, "
          f"tokenizer {info['tokenizer']}")


def _to_hf(args) -> None:
    from foundations.convert.run import run_to_hf
    print(f"{args.run_dir} -> {run_to_hf(args.run_dir, args.out)}")


def add_convert_parser(commands) -> None:
    p = commands.add_parser("convert", help="Hugging Face directories <-> run directories")
    sub = p.add_subparsers(dest="direction", required=True)
    q = sub.add_parser("from-hf", help="a transformers directory -> a run directory")
    q.add_argument("dir", help="config.json + model.safetensors (or sharded + index)")
    q.add_argument("--run-dir", required=True, help="the run directory to write")
    q.add_argument("--adapter", help="a PEFT LoRA directory, merged into the weights")
    q.set_defaults(func=_from_hf)
    q = sub.add_parser("to-hf", help="a run directory -> a transformers directory")
    q.add_argument("--run-dir", required=True)
    q.add_argument("out", help="the directory to write config.json + model.safetensors to")
    q.set_defaults(func=_to_hf)
