"""Hugging Face interop: `from_hf` builds the project's own model from a transformers directory,
`to_hf` writes one back, `merge_lora` folds a PEFT LoRA adapter into the weights (convert/hf.py).

    from foundations.convert import from_hf, to_hf
    model, params = from_hf("dir")                  # config.json + model.safetensors (or sharded)
    logits = model.apply(params, input_ids)         # GPT-2, LLaMA, Mixtral
    to_hf(model, params, "out")                     # config.json + model.safetensors

Run directories (`foundations convert`): convert/run.py; PEFT adapters, both ways: convert/lora.py.
"""

from foundations.convert.hf import HFModel, from_hf, merge_lora, read_safetensors, to_hf

__all__ = ["HFModel", "from_hf", "to_hf", "merge_lora", "read_safetensors"]
