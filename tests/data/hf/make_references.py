"""Makes the tiny Hugging Face reference models under tests/data/hf/ (run once, by hand).

    pip install torch==2.13.0 transformers peft tokenizers sentencepiece   # not project deps
    python tests/data/hf/make_references.py

Each <name>/ holds config.json + model.safetensors written by transformers' save_pretrained,
a tokenizer trained on a few lines of text, and reference.npz: the inputs and the float32
outputs transformers (and PEFT, for the adapter) computes for them. tests/test_convert.py
compares our outputs with these, without torch.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers as tf

HERE = Path(__file__).parent
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
        "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.")


def fresh(name: str) -> Path:
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh (norm scales and biases too), so no mapping hides behind
    an initial value of 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 else 0.0))


def ids(seed: int, vocab: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int64)


def save(model, out: Path, **arrays) -> None:
    model.save_pretrained(out, safe_serialization=True)
    np.savez(out / "reference.npz", **{k: np.asarray(v) for k, v in arrays.items()})


def save_text_ids(out: Path) -> None:
    """TEXT's ids by transformers' fast tokenizer (tokenizer.json) or sentencepiece
    (tokenizer.model), without special tokens: what our tokenizer must give."""
    if (out / "tokenizer.json").is_file():
        tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
        text_ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    else:
        import sentencepiece as spm
        text_ids = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).encode(TEXT)
    with np.load(out / "reference.npz") as ref:
        arrays = dict(ref)
    np.savez(out / "reference.npz", **arrays, text_ids=np.asarray(text_ids))


def logits_of(model, **inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.numpy()


def bpe_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([TEXT], vocab_size=vocab, special_tokens=["<|endoftext|>"])
    tok.save(str(out / "tokenizer.json"))


def wordpiece_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator([TEXT], vocab_size=vocab)
    tok.save(str(out / "tokenizer.json"))


def unigram_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import SentencePieceUnigramTokenizer
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator([TEXT] * 4, vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"],
                            unk_token="<unk>")
    tok.save(str(out / "tokenizer.json"))


def spm_tokenizer(out: Path, vocab: int) -> None:
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.split(". ") * 8), model_writer=model,
                                   vocab_size=vocab, model_type="bpe", character_coverage=1.0,
                                   hard_vocab_limit=False, normalization_rule_name="identity")
    (out / "tokenizer.model").write_bytes(model.getvalue())


def gpt2() -> None:
    out = fresh("gpt2")
    cfg = tf.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        activation_function="gelu_new", layer_norm_epsilon=1e-5)
    model = tf.GPT2LMHeadModel(cfg).eval()
    randomize(model, 0)
    x = ids(0, 300, (2, 12))
    save(model, out, input_ids=x, logits=logits_of(model, input_ids=x))
    bpe_tokenizer(out, 300)


def llama() -> None:
    """GQA (4 query heads, 2 kv heads), head_dim 16 != 32/4, rope_theta 5e5 with linear
    scaling, an untied head."""
    out = fresh("llama")
    cfg = tf.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5,
                         rope_theta=5e5, rope_scaling={"rope_type": "linear", "factor": 2.0},
                         tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(cfg).eval()
    randomize(model, 1)
    x = ids(1, 128, (2, 16))
    save(model, out, input_ids=x, logits=logits_of(model, input_ids=x))
    spm_tokenizer(out, 128)
    lora(model, x)


def lora(base, x) -> None:
    """A PEFT LoRA adapter on LLaMA's q_proj and v_proj with non-zero B (PEFT starts it at 0)."""
    import peft
    out = fresh("llama_lora")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False)
    model = peft.get_peft_model(base, cfg).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(out)
    (out / "README.md").unlink()  # PEFT's model card template
    np.savez(out / "reference.npz", input_ids=x, logits=logits_of(model, input_ids=x))


def mixtral() -> None:
    out = fresh("mixtral")
    cfg = tf.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, num_local_experts=4,
                           num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=1e6,
                           sliding_window=None, tie_word_embeddings=False)
    model = tf.MixtralForCausalLM(cfg).eval()
    randomize(model, 2)
    x = ids(2, 64, (2, 16))
    save(model, out, input_ids=x, logits=logits_of(model, input_ids=x))
    spm_tokenizer(out, 64)


def mistral() -> None:
    """Multi-query attention (1 kv head) and a sliding window of 6 over 16 tokens."""
    out = fresh("mistral")
    cfg = tf.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           max_position_embeddings=64, sliding_window=6, rms_norm_eps=1e-6,
                           tie_word_embeddings=True)
    model = tf.MistralForCausalLM(cfg).eval()
    randomize(model, 8)
    x = ids(8, 64, (2, 16))
    save(model, out, input_ids=x, logits=logits_of(model, input_ids=x))


def bert() -> None:
    out = fresh("bert")
    cfg = tf.BertConfig(vocab_size=150, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    model = tf.BertForMaskedLM(cfg).eval()
    randomize(model, 3)
    x = ids(3, 150, (2, 12))
    segments = np.array([[0] * 6 + [1] * 6, [0] * 4 + [1] * 8])
    mask = np.array([[1] * 12, [1] * 9 + [0] * 3])
    with torch.no_grad():
        hidden = model.bert(input_ids=torch.as_tensor(x), attention_mask=torch.as_tensor(mask),
                            token_type_ids=torch.as_tensor(segments)).last_hidden_state.numpy()
    save(model, out, input_ids=x, token_type_ids=segments, attention_mask=mask,
         logits=logits_of(model, input_ids=x, token_type_ids=segments), hidden=hidden)
    wordpiece_tokenizer(out, 150)


def t5() -> None:
    """8 buckets up to distance 16: a 20-token input reaches the logarithmic and last buckets;
    2 decoder layers against 1 encoder layer; d_kv 4 != 32/4."""
    out = fresh("t5")
    cfg = tf.T5Config(vocab_size=120, d_model=32, d_kv=4, d_ff=32, num_layers=1,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, feed_forward_proj="relu",
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = tf.T5ForConditionalGeneration(cfg).eval()
    randomize(model, 4)
    x, dec = ids(4, 120, (2, 20)), ids(5, 120, (2, 7))
    save(model, out, input_ids=x, decoder_input_ids=dec,
         logits=logits_of(model, input_ids=x, decoder_input_ids=dec))
    unigram_tokenizer(out, 120)


def t5_gated() -> None:
    """T5 v1.1's feed-forward: gated-gelu, gelu_new(wi_0 x) * wi_1 x; one layer each."""
    out = fresh("t5_gated")
    cfg = tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu",
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = tf.T5ForConditionalGeneration(cfg).eval()
    randomize(model, 6)
    x, dec = ids(6, 64, (2, 20)), ids(7, 64, (2, 7))
    save(model, out, input_ids=x, decoder_input_ids=dec,
         logits=logits_of(model, input_ids=x, decoder_input_ids=dec))


if __name__ == "__main__":
    torch.manual_seed(0)
    for make in (gpt2, llama, mixtral, bert, t5):
        make()
        save_text_ids(HERE / make.__name__)
    t5_gated()
    mistral()
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"tests/data/hf: {total / 1e3:.0f} kB")
