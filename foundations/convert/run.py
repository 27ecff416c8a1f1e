"""Run directories from Hugging Face directories and back (`foundations convert`).

`hf_to_run` writes a run directory (run.py `write_run`: a checkpoint of the converted parameters
at step 0, the resolved config.yaml and tokenizer/), so that `eval`, `generate` and
`train.init_from` use it like any run. hf/ keeps the
HF directory's small files (config.json, tokenizer and generation files) so that `run_to_hf`
writes them back unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from foundations.config import ConfigError
from foundations.run import RUN_TOKENIZER, load_run, write_run, writing

HF_FILES = "hf"                      # a run's copy of the HF directory's non-weight files
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".npz")


def hf_tokenizer(directory: Path):
    """The tokenizer a transformers directory ships: tokenizer.json (tokenizers library) or a
    SentencePiece tokenizer.model."""
    from foundations.tokenizers.hf import HFTokenizer
    from foundations.tokenizers.spm import SentencePieceTokenizer
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer(directory / "tokenizer.json")
    if (directory / "tokenizer.model").is_file():
        return SentencePieceTokenizer(directory / "tokenizer.model")
    raise ConfigError(f"{directory} has neither tokenizer.json nor tokenizer.model: a run "
                      "directory needs the model's own tokenizer")


def hf_to_run(hf_dir: str | Path, run_dir: str | Path, adapter: str | Path | None = None) -> dict:
    """Converts a transformers directory (+ a PEFT adapter, merged) into a run directory."""
    import jax
    from foundations.convert import from_hf
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if (run_dir / "checkpoints").exists():
        raise ConfigError(f"{run_dir} already holds checkpoints; choose a new --run-dir")
    tokenizer = hf_tokenizer(hf_dir)   # refused before anything is written
    with writing(run_dir):
        spec = str(run_dir / RUN_TOKENIZER)
        tokenizer.save(spec)
        model, params = from_hf(hf_dir, adapter=adapter, tokenizer=spec)
        config = model.config
        write_run(run_dir, config, params["params"], step=0)
        keep = run_dir / HF_FILES
        keep.mkdir(exist_ok=True)
        for path in hf_dir.iterdir():
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) \
                    and path.name != "model.safetensors.index.json":
                shutil.copy2(path, keep / path.name)
    return {"family": config.model.family,
            "parameters": sum(x.size for x in jax.tree.leaves(params["params"])),
            "tokenizer": tokenizer.kind}


def run_to_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes a run's latest parameters as a transformers directory (+ its kept HF files)."""
    from foundations.convert import HFModel, to_hf
    run_dir, out = Path(run_dir), Path(out_dir)
    run = load_run(run_dir)
    if run.method in ("prompt", "prefix"):   # LoRA runs load merged, so they export
        raise ConfigError(f"{run_dir} is a {run.method}-tuned run: a transformers checkpoint has "
                          f"no place for its learned {run.method}; export its base "
                          f"(train.init_from), or generate from the run itself")
    keep = run_dir / HF_FILES
    original = json.loads((keep / "config.json").read_text()) \
        if (keep / "config.json").is_file() else None
    to_hf(HFModel(run.config, original), {"params": run.params}, out)
    if keep.is_dir():
        for path in keep.iterdir():
            if path.name != "config.json":
                shutil.copy2(path, out / path.name)
    else:  # a run trained here: its tokenizer, in the file transformers reads
        kept = run_dir / RUN_TOKENIZER
        for ours, theirs in (("hf_tokenizer.json", "tokenizer.json"),
                             ("tokenizer.model", "tokenizer.model")):
            if (kept / ours).is_file():
                shutil.copy2(kept / ours, out / theirs)
    return out
