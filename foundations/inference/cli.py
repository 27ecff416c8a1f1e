"""`foundations generate`: a run's model writes after a prompt, token by token as they come.

Imports nothing heavy at module level (the flags are defined in foundations/cli.py, which builds
its parser before JAX may load: importing any module of this package loads JAX).
"""

from __future__ import annotations

import sys
import time


def generate_command(args) -> None:
    """Loads the run, checks the flags (one line for a bad one), streams each sample to stdout
    and its speed to stderr."""
    from foundations.config import ConfigError
    from foundations.inference.generate import Sampling, check_sampling
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, repetition_penalty=args.repetition_penalty)
    check_sampling(Sampling(**sampling), args.max_new_tokens, as_flags=True)
    if args.num_beams < 1:
        raise ConfigError(f"--num-beams must be >= 1 (got {args.num_beams})")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1 (got {args.num_samples})")
    if args.num_beams > 1 and (args.temperature or args.top_k or args.top_p < 1 or args.min_p):
        raise ConfigError("--num-beams > 1 searches, it does not sample: leave --temperature, "
                          "--top-k, --top-p and --min-p off")
    sampling.update(num_beams=args.num_beams, length_penalty=args.length_penalty)
    from foundations.inference.text import generate_text
    from foundations.run import context_length, load_run, read_config
    saved = read_config(args.run_dir, args.overrides)  # refused before the restore
    if saved.model.family == "encoder":
        raise ConfigError(f"{args.run_dir} is a model.family=encoder run (objective.kind="
                          f"{saved.objective.kind}): it has no generative head; generate runs "
                          "decoder and encdec runs (eval scores encoders)")
    # mesh.* overrides: restored onto that mesh and generated sharded, as training shards
    on_mesh = any(o.split("=")[0].strip().startswith("mesh.") for o in args.overrides)
    run = load_run(args.run_dir, args.overrides, single_device=not on_mesh)
    if on_mesh:
        sampling["mesh"] = run.mesh
    decoder = run.config.model.family == "decoder"
    for i in range(args.num_samples):
        if decoder:
            print(args.prompt, end="", flush=True)
        arrivals = []   # when each token came
        start = time.perf_counter()
        generate_text(run.model, run.params, run.tokenizer, args.prompt,
                      args.max_new_tokens, context_length(run.config),
                      on_text=lambda piece: print(piece, end="", flush=True),
                      on_token=lambda _: arrivals.append(time.perf_counter()),
                      seed=args.seed + i, **sampling)
        print(flush=True)
        if args.num_beams > 1:   # the best beam is known only at the end
            print(f"[{len(arrivals)} tokens in {arrivals[-1] - start:.2f} s: "
                  f"{len(arrivals) / (arrivals[-1] - start):,.1f} tokens/s, compilation included]",
                  file=sys.stderr, flush=True)
        else:   # the first two tokens wait for the prefill and the compilation of the step
            steady = (f", then {(len(arrivals) - 2) / (arrivals[-1] - arrivals[1]):,.1f} "
                      "tokens/s" if len(arrivals) > 2 else "")
            print(f"[{len(arrivals)} tokens; the first after {arrivals[0] - start:.2f} s{steady}]",
                  file=sys.stderr, flush=True)
        if i + 1 < args.num_samples:
            print("-" * 40)
