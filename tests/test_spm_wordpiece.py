"""SentencePiece against fixed reference outputs (tests/data/spm, written by the library itself
with make_reference.py), the options the wrapper trains with; WordPiece (BERT behaviour)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sentencepiece import sentencepiece_model_pb2

from foundations.data.text import tokenize_files
from foundations.objectives.mlm import special_ids
from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.spm import SentencePieceTokenizer
from foundations.tokenizers.wordpiece import WordPieceTokenizer, basic_tokenize
from tokenizer_cases import BERT_VOCAB, DATA, EDGE_CASES, SHAKESPEARE

SPM = DATA / "spm"
REFERENCE = json.loads((SPM / "reference.json").read_text(encoding="utf-8"))["models"]
CASES = [pytest.param(name, case, id=f"{name}-{i}")
         for name, model in REFERENCE.items() for i, case in enumerate(model["cases"])]


def model_spec(tok):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    return proto


def vocabulary(tok):
    return [(tok.id_to_piece(i), tok.processor.get_score(i)) for i in range(tok.vocab_size)]


def learned_pieces(tok):
    """The pieces training chose (not the specials, nor the 256 byte-fallback pieces)."""
    sp = tok.processor
    return [sp.id_to_piece(i) for i in range(tok.vocab_size)
            if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]


@pytest.fixture(scope="module")
def bpe():
    """LLaMA-like: BPE, byte fallback, dummy prefix, identity normalization, digits split."""
    return SentencePieceTokenizer(SPM / "bpe.model")


# ----- SentencePiece ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, case", CASES)
def test_spm_gives_the_reference_ids_pieces_and_text(name, case):
    tok = SentencePieceTokenizer(SPM / name)
    ids = tok.encode(case["text"])
    assert ids == case["ids"]
    assert [tok.id_to_piece(i) for i in ids] == case["pieces"]
    assert tok.decode(ids) == case["decoded"]
    assert tok.decode(np.array(ids, np.int32)) == case["decoded"]  # ids straight from a batch


def test_spm_special_ids_as_the_project_uses_them(bpe, tmp_path):
    assert bpe.vocab_size == 400
    assert bpe.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}  # no pad piece
    assert (bpe.bos_id, bpe.eos_id) == (1, 2)
    assert 1 not in bpe.encode("Hello") and 2 not in bpe.encode("Hello")  # no BOS/EOS added
    # a model with T5's layout: pad 0, eos 1, unk 2 and no BOS
    t5_like = SentencePieceTokenizer(SPM / "unigram_pad0.model")
    assert t5_like.special_tokens == {"<pad>": 0, "</s>": 1, "<unk>": 2}
    assert (t5_like.bos_id, t5_like.eos_id) == (None, 1)
    # MLM takes the model's <pad> and puts [CLS] [SEP] [MASK] just above its 200 ids
    assert special_ids(t5_like, 256) == {"cls": 200, "sep": 201, "mask": 202, "pad": 0,
                                         "first_free": 203}
    # the training data puts </s> after each document
    (tmp_path / "a.txt").write_text("First Citizen:")
    (tmp_path / "b.txt").write_text("Hello")
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    tokens, _ = tokenize_files(files, bpe)
    assert tokens.tolist() == bpe.encode("First Citizen:") + [2] + bpe.encode("Hello") + [2]
    # ... and nothing for a model without an end-of-sentence piece
    spec = model_spec(bpe)
    spec.trainer_spec.eos_id = -1
    spec.pieces[2].type = spec.pieces[2].NORMAL
    no_eos = SentencePieceTokenizer(model_proto=spec.SerializeToString())
    assert no_eos.eos_id is None and no_eos.special_tokens == {"<unk>": 0, "<s>": 1}
    tokens, _ = tokenize_files(files, no_eos)
    assert tokens.tolist() == no_eos.encode("First Citizen:") + no_eos.encode("Hello")


def test_spm_byte_fallback_by_hand(bpe):
    # the 256 byte pieces follow the 3 special ones: byte b is id 3 + b
    space = bpe.processor.piece_to_id("▁")   # the dummy prefix
    assert bpe.encode("🎉") == [space] + [3 + b for b in "🎉".encode("utf-8")]
    assert [bpe.id_to_piece(i) for i in bpe.encode("🎉")] == ["▁", "<0xF0>", "<0x9F>", "<0x8E>",
                                                             "<0x89>"]
    assert bpe.decode([3 + 0xC3, 3 + 0xA9]) == "é"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60).map(lambda s: s.replace("\u2581", "")))
def test_spm_round_trip_on_random_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_spm_save_load_and_model_proto(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.model").read_bytes() == (SPM / "bpe.model").read_bytes()
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text()) == {
        "kind": "spm", "model_file": "tokenizer.model", "vocab_size": 400}
    loaded = load_tokenizer(str(tmp_path / "tok"))
    from_proto = SentencePieceTokenizer(model_proto=(SPM / "bpe.model").read_bytes())
    for tok in (loaded, from_proto):
        assert isinstance(tok, SentencePieceTokenizer)
        assert [tok.encode(case["text"]) for case in REFERENCE["bpe.model"]["cases"]] == [
            case["ids"] for case in REFERENCE["bpe.model"]["cases"]]


def test_spm_trains_with_the_documented_options(tmp_path):
    tok = SentencePieceTokenizer.train([SPM / "corpus.txt"], 400)
    trainer, normalizer = model_spec(tok).trainer_spec, model_spec(tok).normalizer_spec
    assert trainer.model_type == trainer.BPE and trainer.vocab_size == tok.vocab_size == 400
    assert trainer.byte_fallback and trainer.split_digits and trainer.allow_whitespace_only_pieces
    assert trainer.character_coverage == pytest.approx(0.9995)
    assert trainer.max_sentence_length == 1 << 16   # long lines are trained on, not skipped
    assert (trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id) == (0, 1, 2, -1)
    assert normalizer.name == "identity" and not normalizer.remove_extra_whitespaces
    assert normalizer.add_dummy_prefix
    # the library trained the reference model with those options on the same corpus
    assert vocabulary(tok) == vocabulary(SentencePieceTokenizer(SPM / "bpe.model"))
    # ... and they show: text kept as is (no NFKC), digits only ever single pieces
    for text in ("ﬁne ＡＢＣ", "a  b\n\n\tc  "):
        assert tok.decode(tok.encode(text)) == text
    digits = [piece for piece in learned_pieces(tok) if any(c.isdigit() for c in piece)]
    assert sorted(digits) == list("0123456789")
    assert len(tok.encode("1616")) == 5   # "▁" and four digits

    # other keyword options reach the trainer, and override the defaults
    tok = SentencePieceTokenizer.train([SPM / "corpus.txt"], 400, split_digits=False,
                                       user_defined_symbols=["<|sep|>"])
    assert not model_spec(tok).trainer_spec.split_digits
    assert any(len(piece.strip("▁")) > 1 and piece.strip("▁").isdigit()
               for piece in learned_pieces(tok))
    sep = tok.processor.piece_to_id("<|sep|>")
    assert sep not in (0, 1, 2) and sep in tok.encode("a<|sep|>b")


def test_spm_unigram_training_save_and_load(tmp_path):
    text = SHAKESPEARE.read_text()[:50_000]
    (tmp_path / "in.txt").write_text(text)
    tok = SentencePieceTokenizer.train([tmp_path / "in.txt"], 500, model_type="unigram")
    assert model_spec(tok).trainer_spec.model_type == model_spec(tok).trainer_spec.UNIGRAM
    assert model_spec(tok).trainer_spec.byte_fallback and tok.vocab_size == 500
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.encode(text[:2000]) == tok.encode(text[:2000])
    assert loaded.decode(loaded.encode(text[:2000])) == text[:2000]
    again = SentencePieceTokenizer.train([tmp_path / "in.txt"], 500, model_type="unigram")
    assert vocabulary(again) == vocabulary(tok)  # deterministic (the proto also holds the path)


def test_spm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="junk.model.*not a valid SentencePiece model"):
        SentencePieceTokenizer(tmp_path / "junk.model")
    with pytest.raises(ValueError, match="exactly one of model_file and model_proto"):
        SentencePieceTokenizer()
    with pytest.raises(ValueError, match="exactly one of model_file and model_proto"):
        SentencePieceTokenizer(SPM / "bpe.model", model_proto=b"")
    (tmp_path / "bad.txt").write_bytes(b"hello\nw\xffrld\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 7"):
        SentencePieceTokenizer.train([tmp_path / "bad.txt"], 100)
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer.train([tmp_path / "bad.txt"], 100, model_type="char")
    with pytest.raises(ValueError, match="no training files"):
        SentencePieceTokenizer.train([], 100)
    (tmp_path / "small.txt").write_text("a few words only\n")
    with pytest.raises(ValueError, match="SentencePiece training failed.*[Vv]ocab"):
        SentencePieceTokenizer.train([tmp_path / "small.txt"], 100_000, byte_fallback=False)


# ----- WordPiece (bert-base-uncased vocab) -----------------------------------------------------

@pytest.fixture(scope="module")
def bert():
    return WordPieceTokenizer.from_vocab_file(BERT_VOCAB)


def test_bert_known_ids(bert):
    assert bert.vocab_size == 30522
    assert bert.special_tokens == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                                   "[MASK]": 103}
    assert bert.encode("hello world") == [7592, 2088]
    assert bert.eos_id == 102


def test_bert_greedy_longest_match_first(bert):
    # BERT's README shows "un ##aff ##able" for its own example vocab; with bert-base-uncased the
    # longest prefix in the vocabulary is "una", so greedy longest-match-first gives this:
    assert bert.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    assert bert.tokenize("embeddings") == ["em", "##bed", "##ding", "##s"]
    assert bert.tokenize("playing") == ["playing"]
    assert bert.tokenize("tokenization") == ["token", "##ization"]


def test_bert_basic_tokenizer(bert):
    assert bert.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert bert.tokenize("Héllo naïve CAFÉ") == ["hello", "naive", "cafe"]  # accents stripped
    assert bert.tokenize("北京abc") == ["北", "京", "abc"]  # CJK characters split
    assert basic_tokenize("ab\x00c\u200bd e\tf\u3000g") == ["abcd", "e", "f", "g"]  # clean-up
    assert basic_tokenize("$5.00 a-b") == ["$", "5", ".", "00", "a", "-", "b"]
    assert basic_tokenize("Héllo", lowercase=False) == ["Héllo"]


def test_bert_long_words_and_unknowns(bert):
    assert bert.tokenize("a" * 101) == ["[UNK]"]
    assert bert.tokenize("x" * 100)[0] != "[UNK]"
    assert bert.encode("\U0001F600") == [100]
    assert bert.tokenize("a" * 101 + " ok") == ["[UNK]", "ok"]


def test_bert_encode_pair(bert):
    ids, types = bert.encode_pair("hello world", "how are you")
    assert ids == [101, 7592, 2088, 102, 2129, 2024, 2017, 102]
    assert types == [0, 0, 0, 0, 1, 1, 1, 1]
    ids, types = bert.encode_pair("hello")
    assert ids == [101, 7592, 102] and types == [0, 0, 0]
    assert bert.decode(bert.encode("embeddings are playing")) == "embeddings are playing"


@pytest.mark.parametrize("text", EDGE_CASES)
def test_bert_edge_cases_never_crash(bert, text):
    ids = bert.encode(text)
    assert all(0 <= i < bert.vocab_size for i in ids)
    assert not set(ids) & {101, 102, 0}


def test_wordpiece_trainer(tmp_path):
    (tmp_path / "in.txt").write_text(SHAKESPEARE.read_text()[:20_000])
    tok = WordPieceTokenizer.train([tmp_path / "in.txt"], 300)
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.vocab_size == 300 and len(set(tok.vocab)) == 300
    assert tok.vocab == WordPieceTokenizer.train([tmp_path / "in.txt"], 300).vocab
    assert "[UNK]" not in tok.tokenize("First Citizen: before we proceed any further")
    tok.save(tmp_path / "wp")
    loaded = load_tokenizer(str(tmp_path / "wp"))
    assert loaded.vocab == tok.vocab
    assert loaded.encode("speak, speak") == tok.encode("speak, speak")


def test_wordpiece_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_vocab.txt"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "missing_vocab.txt")
    with pytest.raises(ValueError, match="unknown token"):
        WordPieceTokenizer(["a", "b"])
