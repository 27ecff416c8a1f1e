"""SentencePiece (parity with the library, byte fallback, training) and WordPiece (BERT behaviour)."""

import pytest
import sentencepiece
from hypothesis import given, settings, strategies as st
from sentencepiece import sentencepiece_model_pb2

from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.spm import SentencePieceTokenizer
from foundations.tokenizers.wordpiece import WordPieceTokenizer, basic_tokenize
from tokenizer_cases import BERT_VOCAB, EDGE_CASES, SHAKESPEARE


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_head.txt"
    path.write_text(SHAKESPEARE.read_text()[:200_000])
    return path


@pytest.fixture(scope="module")
def llama_like(small_corpus, tmp_path_factory):
    """A model trained with LLaMA's settings (BPE, byte fallback, dummy prefix), saved as a .model."""
    tok = SentencePieceTokenizer.train([small_corpus], vocab_size=600, model_type="bpe")
    model_file = tmp_path_factory.mktemp("spm") / "llama_like.model"
    model_file.write_bytes(tok.model_proto)
    return model_file


def model_spec(tok):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    return proto


# ----- SentencePiece ---------------------------------------------------------------------------

def test_spm_loads_model_file_with_llama_features(llama_like):
    tok = SentencePieceTokenizer(llama_like)
    spec = model_spec(tok)
    assert spec.trainer_spec.model_type == spec.trainer_spec.BPE
    assert spec.trainer_spec.byte_fallback and spec.normalizer_spec.add_dummy_prefix
    assert tok.vocab_size == 600
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2} and tok.eos_id == 2


@pytest.mark.parametrize("text", EDGE_CASES)
def test_spm_parity_with_sentencepiece(llama_like, text):
    tok = SentencePieceTokenizer(llama_like)
    library = sentencepiece.SentencePieceProcessor(model_file=str(llama_like))
    ids = tok.encode(text)
    assert ids == library.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids  # no BOS/EOS added
    if "\u2581" not in text:
        assert tok.decode(ids) == text


def test_spm_byte_fallback_and_dummy_prefix(llama_like):
    tok = SentencePieceTokenizer(llama_like)
    pieces = [tok.id_to_piece(i) for i in tok.encode("🎉")]
    assert pieces == ["▁", "<0xF0>", "<0x9F>", "<0x8E>", "<0x89>"]
    assert tok.id_to_piece(tok.encode("the")[0]).startswith("▁")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60).map(lambda s: s.replace("\u2581", "")))
def test_spm_round_trip_on_random_unicode(llama_like, text):
    tok = SentencePieceTokenizer(llama_like)
    assert tok.decode(tok.encode(text)) == text


def test_spm_unigram_training_save_and_load(small_corpus, tmp_path):
    text = small_corpus.read_text()[:50_000]
    (tmp_path / "in.txt").write_text(text)
    tok = SentencePieceTokenizer.train([tmp_path / "in.txt"], 500, model_type="unigram")
    assert model_spec(tok).trainer_spec.model_type == model_spec(tok).trainer_spec.UNIGRAM
    assert model_spec(tok).trainer_spec.byte_fallback
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.encode(text[:2000]) == tok.encode(text[:2000])
    assert loaded.decode(loaded.encode(text[:2000])) == text[:2000]
    again = SentencePieceTokenizer.train([tmp_path / "in.txt"], 500, model_type="unigram")
    pieces = lambda t: [t.id_to_piece(i) for i in range(t.vocab_size)]
    assert pieces(again) == pieces(tok)  # deterministic (the proto also holds the temp path)


def test_spm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="junk.model.*not a valid SentencePiece model"):
        SentencePieceTokenizer(tmp_path / "junk.model")
    (tmp_path / "bad.txt").write_bytes(b"hello\nw\xffrld\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 7"):
        SentencePieceTokenizer.train([tmp_path / "bad.txt"], 100)
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer.train([tmp_path / "bad.txt"], 100, model_type="char")


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
