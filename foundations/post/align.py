"""`foundations align ALIGN.yaml --out DIR [--seed N]`: the whole lifecycle on a synthetic task.

One command, one directory: it writes the task's data under DIR/data, pre-trains a small base
(or reads `stages.base.init_from`), then SFT from the base, a reward model, DPO and PPO (rule
reward: exact match) from the SFT run, each stage the project's own command on the shared loop
(`train(config, DIR/<stage>, stage=Stage(kind))`), and measures every model on the SAME held-out
prompts: greedy exact match (`post/answers.run_accuracy`, the answer read up to end-of-text or
a newline) for the base, SFT, DPO and PPO runs,
held-out pairwise accuracy for the reward model (the reward stage's own validation on the
held-out pairs), and self-consistency (k samples, majority vote) and few-shot prompts on the SFT
model (`prompting/consistency.answer_questions`, `prompting/fewshot.few_shot_prompt`). It writes
DIR/results.json, DIR/stages.png and DIR/measurements.json (the measurements with the checkpoint
step they were taken at, so a rerun reuses them).

Resuming: a stage whose run holds its last step's checkpoint and summary is skipped; an
interrupted stage resumes through the loop's own resume. `--seed` changes every stage's seeds
and the training data; the held-out prompts (task.eval_seed) stay the same across seeds, and no
held-out question is in any training set.

The align YAML is typed (`AlignConfig`): a wrong key is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from foundations.config import ConfigError, build_section, knob, load_config, read_tree

STAGES = ("base", "sft", "reward", "dpo", "ppo")
RESULT_NAMES = {"reward": "reward_model"}   # results.json's name of a stage


@dataclass(frozen=True)
class AlignTask:
    """The synthetic task: 'a+b=' -> 'c' with up to `digits` digits."""
    name: str = knob("addition", "the task (only addition for now)")
    digits: int = knob(2, "digits of each addend", ">= 1")
    pretrain_examples: int = knob(20000, "solved problems in the base's pre-training text",
                                  ">= 1")
    train_examples: int = knob(4000, "problems of the SFT, preference and PPO data", ">= 1")
    eval_prompts: int = knob(256, "held-out problems every stage is measured on", ">= 1")
    eval_seed: int = knob(12345, "seed of the held-out problems (not changed by --seed)")
    seed: int = knob(0, "seed of the training data and of every stage (--seed overrides it)")
    max_new_tokens: int = knob(8, "tokens an answer may take (end-of-text included)", ">= 1")


@dataclass(frozen=True)
class AlignStage:
    """One training stage: overrides applied to the recipe after the ones align sets itself
    (data files, train.init_from, seeds)."""
    overrides: tuple[str, ...] = knob((), "section.key=value overrides of this stage")
    init_from: str = knob("", "base only: an existing run to use as the base (not trained)")


@dataclass(frozen=True)
class AlignStages:
    base: AlignStage = field(default_factory=AlignStage)
    sft: AlignStage = field(default_factory=AlignStage)
    reward: AlignStage = field(default_factory=AlignStage)
    dpo: AlignStage = field(default_factory=AlignStage)
    ppo: AlignStage = field(default_factory=AlignStage)


@dataclass(frozen=True)
class SelfConsistency:
    k: int = knob(8, "samples voted on per question", ">= 1")
    temperature: float = knob(0.7, "their sampling temperature", "> 0")


@dataclass(frozen=True)
class FewShot:
    shots: int = knob(3, "solved training problems before each question", ">= 0")


@dataclass(frozen=True)
class AlignConfig:
    task: AlignTask = field(default_factory=AlignTask)
    recipe: str = knob("", "the stage config every stage starts from (model, optimizer, ...); "
                       "relative paths: from the working directory, else from this file's")
    overrides: tuple[str, ...] = knob((), "overrides of the recipe for every stage")
    stages: AlignStages = field(default_factory=AlignStages)
    self_consistency: SelfConsistency = field(default_factory=SelfConsistency)
    few_shot: FewShot = field(default_factory=FewShot)


def load_align(path: str | Path, seed: int | None = None) -> AlignConfig:
    """The checked AlignConfig of an align YAML (`seed`, if given, replaces task.seed); the
    recipe path resolved."""
    path = Path(path)
    config = build_section(AlignConfig, read_tree(path), "")
    if not config.recipe:
        raise ConfigError(f"{path}: set recipe, the stage config every stage starts from")
    recipe = Path(config.recipe)
    if not recipe.is_file() and not recipe.is_absolute() and (path.parent / recipe).is_file():
        recipe = path.parent / recipe
    if not recipe.is_file():
        raise ConfigError(f"{path}: recipe {config.recipe} does not exist")
    if config.task.name != "addition":
        raise ConfigError(f"{path}: task.name={config.task.name!r}: only 'addition' is made")
    task = config.task if seed is None else dataclasses.replace(config.task, seed=seed)
    return dataclasses.replace(config, recipe=str(recipe), task=task)


# ------------------------------------------------------------------ the task's data

def write_data(task: AlignTask, out: Path) -> dict[str, Path]:
    """The held-out problems (task.eval_seed) and the training data (task.seed), no held-out
    question among the training ones: pretrain.txt ('Q: 12+35= A: 47' lines), sft.jsonl,
    pairs.jsonl (the right sum chosen over a near miss), heldout.jsonl, heldout_pairs.jsonl."""
    import numpy as np

    from foundations.post.synthetic import near_miss
    from foundations.prompting.fewshot import DIRECT
    from foundations.prompting.tasks import addition_examples
    out.mkdir(parents=True, exist_ok=True)
    held, seen = [], set()
    for e in addition_examples(8 * task.eval_prompts, task.digits, task.eval_seed):
        if e.question not in seen and len(held) < task.eval_prompts:
            held.append(e)
            seen.add(e.question)
    if len(held) < task.eval_prompts:
        raise ConfigError(f"task.eval_prompts={task.eval_prompts} exceeds the distinct "
                          f"{task.digits}-digit problems drawn")

    def training(count: int, stream: int):
        # seeds of the training data: [task.seed, stream] through one integer per stream
        drawn = addition_examples(2 * count + 64, task.digits, 1_000_003 * task.seed + stream)
        kept = [e for e in drawn if e.question not in seen][:count]
        if len(kept) < count:
            raise ConfigError(f"too few {task.digits}-digit problems outside the held-out ones")
        return kept

    rng = np.random.default_rng([task.seed, 7])
    pre, train = training(task.pretrain_examples, 1), training(task.train_examples, 2)
    held_rng = np.random.default_rng([task.eval_seed, 7])
    rows = {
        "pretrain.txt": "\n".join(DIRECT.solved.format(**e._asdict()) for e in pre) + "\n",
        "sft.jsonl": [{"prompt": e.question, "response": e.answer} for e in train],
        "pairs.jsonl": [{"prompt": e.question, "chosen": e.answer,
                         "rejected": str(near_miss(int(e.answer), rng))} for e in train],
        "heldout.jsonl": [{"prompt": e.question, "response": e.answer} for e in held],
        "heldout_pairs.jsonl": [{"prompt": e.question, "chosen": e.answer,
                                 "rejected": str(near_miss(int(e.answer), held_rng))}
                                for e in held]}
    paths = {}
    for name, content in rows.items():
        text = content if isinstance(content, str) else "".join(json.dumps(r) + "\n"
                                                                for r in content)
        path = out / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        paths[name.split(".")[0]] = path
    return paths


# ------------------------------------------------------------------ the stages' configs

def stage_overrides(config: AlignConfig, name: str, out: Path, data: dict[str, Path]
                    ) -> list[str]:
    """What align sets for a stage (data, init_from, seeds), then the YAML's overrides."""
    seed = config.task.seed
    own = [f"train.seed={seed}", f"data.shuffle_seed={seed}", "train.sample_tokens=0"]
    parent = {"base": None, "sft": "base", "reward": "sft", "dpo": "sft", "ppo": "sft"}[name]
    if parent:
        own.append(f"train.init_from={run_dir(config, out, parent)}")
    own += {"base": [f"data.train_files=[{data['pretrain']}]"],
            "sft": [f"sft.train_file={data['sft']}"],
            # the reward model is validated on the held-out pairs, all of them
            "reward": [f"reward.train_file={data['pairs']}",
                       f"reward.val_file={data['heldout_pairs']}", "train.eval_batches=0"],
            "dpo": [f"dpo.train_file={data['pairs']}"],
            "ppo": [f"ppo.prompts_file={data['sft']}", "ppo.reward=rule"]}[name]
    return own + list(config.overrides) + list(getattr(config.stages, name).overrides)


def run_dir(config: AlignConfig, out: Path, name: str) -> Path:
    if name == "base" and config.stages.base.init_from:
        return Path(config.stages.base.init_from)
    return out / RESULT_NAMES.get(name, name)   # DIR/base, DIR/sft, DIR/reward_model, ...


def stage_configs(config: AlignConfig, out: Path, data: dict[str, Path]) -> dict:
    """Every training stage's checked Config, before anything trains (a bad override of the
    last stage fails at once, in one line)."""
    configs = {}
    for name in STAGES:
        if name == "base" and config.stages.base.init_from:
            continue
        try:
            configs[name] = load_config(config.recipe, stage_overrides(config, name, out, data))
        except ConfigError as e:
            raise ConfigError(f"stage {name}: {e}") from None
    return configs


def complete(run: Path, steps: int) -> bool:
    """Whether a run finished: its summary written and a checkpoint at its last step."""
    from foundations.run import checkpoint_steps
    return (run / "summary.json").is_file() and steps in checkpoint_steps(run)


def settings_changed(config, run: Path) -> list:
    """What the stage's config changes against the one its run was trained with (the layer
    scan's unroll aside: the trainer resolves model.scan_unroll=0 before saving)."""
    from foundations.run import changed_settings
    saved = load_config(run / "config.yaml")
    return [c for c in changed_settings(saved, config)
            if not (c[0] == "model.scan_unroll" and c[2] == 0)]


def train_stage(name: str, config, run: Path, log) -> None:
    """One stage through the shared loop (resumed where its run stopped), or skipped when its
    run is complete with the same settings; complete with other settings is an error (the run
    is kept: remove it to retrain, or use a new --out)."""
    if complete(run, config.train.steps):
        changes = settings_changed(config, run)
        if changes:
            listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:4])
            raise ConfigError(f"stage {name}: {run} is complete but was trained with other "
                              f"settings ({listed}); remove it to retrain, or use a new --out")
        log(f"align: {name}: {run} is complete at step {config.train.steps}; skipped")
        return
    from foundations.train import train
    start = time.perf_counter()
    stage = None
    if name != "base":
        from foundations.post.stages import Stage
        from foundations.train import log as train_log
        stage = Stage(name, train_log)
    log(f"align: {name}: training {run} to step {config.train.steps}")
    train(config, run, progress=False, stage=stage)
    log(f"align: {name}: trained in {time.perf_counter() - start:.0f} s")


# ------------------------------------------------------------------ measurements

def first_line(text: str) -> str:
    """A sampled answer as exact match reads it: the text up to end-of-text (already cut) or the
    first newline (a few-shot prompt invites the model to write the next example)."""
    return text.split("\n", 1)[0]


def prompting_accuracy(config: AlignConfig, run: Path, data: dict[str, Path]) -> dict:
    """Self-consistency (k samples at temperature, majority vote on the answer's first line,
    ties to the greedy answer, empty answers not voting) and
    greedy few-shot accuracy of a run on the held-out problems, with the run's sft.template."""
    from foundations.inference.complete import answer_line
    from foundations.post.data import read_jsonl
    from foundations.prompting.consistency import answer_questions
    from foundations.prompting.fewshot import Example, Template, few_shot_prompt
    from foundations.prompting.tasks import accuracy
    from foundations.run import load_run
    loaded = load_run(run)
    query = loaded.config.sft.template.replace("{prompt}", "{question}")
    template = Template(query + "{answer}", query)
    held = read_jsonl(data["heldout"], ("prompt", "response"))
    answers = [e["response"] for e in held]
    pool = [Example(e["prompt"], e["response"]) for e in read_jsonl(data["sft"],
                                                                    ("prompt", "response"))]
    zero = [template.query.format(question=e["prompt"]) for e in held]
    few = [few_shot_prompt(pool, e["prompt"], config.few_shot.shots, config.task.seed + i,
                           template) for i, e in enumerate(held)]
    sc, tokens = config.self_consistency, config.task.max_new_tokens
    model = (loaded.model, loaded.params, loaded.tokenizer)
    # the vote's ties go to the greedy answer: a tie that greedy decoding would win is not lost
    greedy, _ = answer_questions(*model, zero, answer_line, max_new_tokens=tokens)
    voted, _ = answer_questions(*model, zero, answer_line, samples=sc.k,
                                temperature=sc.temperature, max_new_tokens=tokens,
                                seed=config.task.seed, prefer=greedy)
    shot, _ = answer_questions(*model, few, first_line, max_new_tokens=tokens)
    return {"self_consistency": {"accuracy": accuracy(voted, answers), "k": sc.k},
            "few_shot": {"accuracy": accuracy(shot, answers)}}


def measure(config: AlignConfig, name: str, run: Path, data: dict[str, Path]) -> dict:
    """{result name: metrics} of a finished stage's run on the held-out problems."""
    if name == "reward":   # the stage's own validation on the held-out pairs (summary.json)
        summary = json.loads((run / "summary.json").read_text())
        return {"reward_model": {"pairwise_accuracy": summary["val_pairwise_accuracy"]}}
    from foundations.post.answers import run_accuracy
    # every stage's answer is read up to end-of-text or a newline (the base's pre-training lines
    # have no end-of-text, so it goes on to write the next problem)
    out = {name: {"accuracy": run_accuracy(run, str(data["heldout"]), stop="\n")}}
    if name == "sft":
        out.update(prompting_accuracy(config, run, data))
    return out


def measurement_key(config: AlignConfig, run: Path) -> dict:
    """What a cached measurement must match to be reused: the run's step and config (a hash of
    its config.yaml) and the evaluation."""
    import hashlib

    from foundations.run import checkpoint_steps
    steps = checkpoint_steps(run)
    trained = hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()[:16]
    # "vote": how self-consistency votes (a measurement of an older vote is not reused)
    return {"step": steps[-1] if steps else None, "config": trained, "stop": "\n",
            "vote": "first line stripped, ties to greedy",
            "task": dataclasses.asdict(config.task),
            "self_consistency": dataclasses.asdict(config.self_consistency),
            "few_shot": dataclasses.asdict(config.few_shot)}


# ------------------------------------------------------------------ the command

def align(config: AlignConfig, out: str | Path, log=print) -> dict:
    """Runs (or resumes) the lifecycle into `out`; returns results.json's contents."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = write_data(config.task, out / "data")
    configs = stage_configs(config, out, data)
    cache_file = out / "measurements.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    stages = {}
    for name in STAGES:
        run = run_dir(config, out, name)
        if name in configs:
            train_stage(name, configs[name], run, log)
        key = measurement_key(config, run)
        if cache.get(name, {}).get("key") == key:
            log(f"align: {name}: measured before at step {key['step']}; reused")
        else:
            cache[name] = {"key": key, "results": measure(config, name, run, data)}
            cache_file.write_text(json.dumps(cache, indent=1) + "\n")
        stages.update(cache[name]["results"])
        log(f"align: {name}: " + ", ".join(f"{k} {v}" for k, v in cache[name]["results"].items()))
    order = ("base", "sft", "reward_model", "dpo", "ppo", "self_consistency", "few_shot")
    results = {"task": config.task.name, "seed": config.task.seed,
               "stages": {k: stages[k] for k in order}}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_stages(results, out / "stages.png")
    log(f"align: {out / 'results.json'} and {out / 'stages.png'} written "
        f"({time.perf_counter() - start:.0f} s)")
    return results


def plot_stages(results: dict, path: Path) -> None:
    """A bar per stage: exact-match accuracy on the held-out problems (the reward model's bar:
    its pairwise accuracy on the held-out pairs, hatched)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, values, hatches = [], [], []
    for name, metrics in results["stages"].items():
        pairwise = "pairwise_accuracy" in metrics
        names.append(name.replace("_", "\n") + ("\n(pairwise)" if pairwise else ""))
        values.append(metrics["pairwise_accuracy" if pairwise else "accuracy"])
        hatches.append("//" if pairwise else "")
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    bars = ax.bar(names, values, color="#4c72b0")
    for bar, hatch, value in zip(bars, hatches, values):
        bar.set_hatch(hatch)
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}", ha="center",
                fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{results['task']}, seed {results['seed']}", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_align_parser(commands) -> None:
    p = commands.add_parser("align", help="the lifecycle on a synthetic task: base, SFT, reward "
                                          "model, DPO, PPO, self-consistency, few-shot")
    p.add_argument("config", help="align YAML, e.g. experiments/align/addition.yaml")
    p.add_argument("--out", required=True, help="the directory of every stage's run and the "
                                                "results; an existing one is resumed")
    p.add_argument("--seed", type=int, default=None, help="replaces task.seed: every stage's "
                                                          "seeds and the training data")

    def command(args) -> None:
        align(load_align(args.config, args.seed), args.out)
    p.set_defaults(func=command)
