"""Byte-level BPE: the merge loop, the trainer, GPT-2 parity with tiktoken, file formats, errors."""

import json
from collections import Counter

import pytest
import tiktoken
from hypothesis import given, settings, strategies as st

from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.bpe import (GPT2_PATTERN, BPETokenizer, bytes_to_unicode,
                                        gpt2_byte_order)
from foundations.tokenizers.bpe_train import learn_merges, merge_pair
from foundations.tokenizers.byte import ByteTokenizer
from tokenizer_cases import EDGE_CASES, GPT2_ENCODER, GPT2_VOCAB_BPE, SHAKESPEARE


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.from_gpt2_files(GPT2_ENCODER, GPT2_VOCAB_BPE)


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """OpenAI's GPT-2 encoding built offline from the two files, exactly as tiktoken's registry does."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache: read the local files directly
        ranks = data_gym_to_mergeable_bpe_ranks(str(GPT2_VOCAB_BPE), str(GPT2_ENCODER))
    return tiktoken.Encoding("gpt2-offline", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def shakespeare_bpe():
    return BPETokenizer.train([SHAKESPEARE], vocab_size=512)


# ----- the merge loop ------------------------------------------------------------------------------

def test_merge_pair_is_left_to_right_without_overlap():
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([2, 1], (1, 2), 9) == [2, 1]


def test_wikipedia_worked_example():
    """aaabdaaabac: Z=aa -> ZabdZabac; Y=ab -> ZYdZYac (ab beats Za on bytes); X=ZY -> XdXac."""
    vocab = [bytes([b]) for b in range(256)]
    merges = learn_merges({tuple(b"aaabdaaabac"): 1}, vocab, num_merges=3)
    assert merges == [(ord("a"), ord("a")), (ord("a"), ord("b")), (256, 257)]
    assert vocab[256:] == [b"aa", b"ab", b"aaab"]
    names = {256: "Z", 257: "Y", 258: "X"}
    sequence, steps = list(b"aaabdaaabac"), []
    for new_id, pair in enumerate(merges, start=256):
        sequence = merge_pair(sequence, pair, new_id)
        steps.append("".join(names.get(i) or chr(i) for i in sequence))
    assert steps == ["ZabdZabac", "ZYdZYac", "XdXac"]


def test_ties_go_to_the_smallest_bytes_and_counts_weight_words():
    vocab = [bytes([b]) for b in range(256)]
    assert learn_merges({tuple(b"cd"): 1, tuple(b"ab"): 1}, vocab, 1) == [(ord("a"), ord("b"))]
    vocab = [bytes([b]) for b in range(256)]
    assert learn_merges({tuple(b"ab"): 1, tuple(b"cd"): 5}, vocab, 1) == [(ord("c"), ord("d"))]
    vocab = [bytes([b]) for b in range(256)]
    assert learn_merges({tuple(b"ab"): 1}, vocab, 10) == [(ord("a"), ord("b"))]  # runs out


def naive_merges(word_counts, vocab, num_merges):
    """The textbook O(N V) loop, recounting everything each step, with the same tie-break."""
    words = {tuple(word): count for word, count in word_counts.items()}
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        pairs = {p: c for p, c in pairs.items() if vocab[p[0]] + vocab[p[1]] not in vocab}
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], vocab[p[0]], vocab[p[1]]))
        vocab.append(vocab[best[0]] + vocab[best[1]])
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            merged[tuple(merge_pair(list(word), best, len(vocab) - 1))] += count
        words = merged
    return merges


def test_incremental_trainer_matches_naive_loop():
    import regex
    text = SHAKESPEARE.read_text()[:30_000]
    byte_ids = {b: i for i, b in enumerate(gpt2_byte_order())}
    counts = Counter(tuple(byte_ids[b] for b in piece.encode()) for piece in
                     regex.findall(GPT2_PATTERN, text))
    fast = learn_merges(counts, [bytes([b]) for b in gpt2_byte_order()], 150)
    slow = naive_merges(counts, [bytes([b]) for b in gpt2_byte_order()], 150)
    assert len(fast) == 150
    assert fast == slow


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text("aab", min_size=1, max_size=12), st.integers(1, 5), max_size=8))
def test_incremental_trainer_matches_naive_loop_on_repetitive_words(words):
    """Runs like "aaaa" and "abab" exercise overlapping and back-to-back merges."""
    counts = {tuple(word.encode()): count for word, count in words.items()}
    fast = learn_merges(counts, [bytes([b]) for b in range(256)], 12)
    assert fast == naive_merges(counts, [bytes([b]) for b in range(256)], 12)


# ----- the trainer -----------------------------------------------------------------------------

def test_trainer_is_deterministic_and_ignores_file_order(tmp_path):
    text = SHAKESPEARE.read_text()[:60_000]
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(text[:30_000])
    second.write_text(text[30_000:])
    one = BPETokenizer.train([first, second], 400)
    two = BPETokenizer.train([first, second], 400)
    swapped = BPETokenizer.train([second, first], 400)
    assert one.merges == two.merges == swapped.merges
    assert one.vocab_size == 400 and one.special_tokens == {"<|endoftext|>": 399}
    assert one.eos_id == 399


def test_trained_vocab_in_tiktoken_matches_reference_on_tiny_shakespeare(shakespeare_bpe):
    text = SHAKESPEARE.read_text()
    tok = shakespeare_bpe
    assert tok._tiktoken is not None
    reference = tok.encode_reference(text)
    assert tok._tiktoken.encode_ordinary(text) == reference
    assert tok.encode(text) == reference
    assert tok.decode(reference) == text
    assert len(reference) < 0.6 * len(text.encode())  # merges actually compress
    assert tok.id_to_piece(tok.merge_ids[tok.merges[0]]) in (" t", "he", "th", "e ")


def test_save_load_all_formats(shakespeare_bpe, tmp_path):
    tok = shakespeare_bpe
    tok.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["kind"] == "bpe"
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert isinstance(loaded, BPETokenizer)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.vocab_size == tok.vocab_size and loaded.eos_id == tok.eos_id
    from_ranks = BPETokenizer.from_tiktoken_file(tmp_path / "tok" / "tokenizer.tiktoken",
                                                 tok.special_tokens)
    assert from_ranks.merges == tok.merges
    sample = SHAKESPEARE.read_text()[:20_000]
    assert loaded.encode(sample) == from_ranks.encode_reference(sample) == tok.encode(sample)
    # tiktoken's own reader accepts our GPT-2-format files and agrees on every rank
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = data_gym_to_mergeable_bpe_ranks(str(tmp_path / "tok" / "vocab.bpe"),
                                                str(tmp_path / "tok" / "encoder.json"))
    assert ranks == {token: i for i, token in tok.token_bytes.items()}


# ----- GPT-2 parity ----------------------------------------------------------------------------

def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {"<|endoftext|>": 50256} and gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode_reference("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>") != [50256]  # special text is not a special token


@pytest.mark.parametrize("text", EDGE_CASES)
def test_gpt2_parity_with_tiktoken(gpt2, tiktoken_gpt2, text):
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode_reference(text) == expected
    assert gpt2.encode(text) == expected
    assert gpt2.decode(expected) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_gpt2_parity_and_round_trip_on_random_unicode(gpt2, tiktoken_gpt2, text):
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode_reference(text) == expected
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_trained_bpe_round_trip_on_random_unicode(shakespeare_bpe, text):
    ids = shakespeare_bpe.encode_reference(text)
    assert shakespeare_bpe.encode(text) == ids
    assert shakespeare_bpe.decode(ids) == text


def test_byte_map_is_gpt2s():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256)) and len(set(mapping.values())) == 256
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("a")] == "a"


# ----- errors and the interface ----------------------------------------------------------------

def test_non_utf8_training_file_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc\xe9def")
    with pytest.raises(ValueError, match=r"latin1\.txt.*byte offset 3"):
        BPETokenizer.train([bad], 300)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BPETokenizer.train([tmp_path / "missing.txt"], 300)
    with pytest.raises(ValueError, match="vocab_size 100"):
        BPETokenizer.train([SHAKESPEARE], 100)


def test_corrupt_files_give_clear_errors(tmp_path):
    (tmp_path / "encoder.json").write_text("{not json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="encoder.json.*not valid JSON"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        BPETokenizer.from_gpt2_files(tmp_path / "nothere.json", tmp_path / "vocab.bpe")
    (tmp_path / "encoder.json").write_text(GPT2_ENCODER.read_text())
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nnot-a-token zzzzqqq\n")
    with pytest.raises(ValueError, match=r"vocab.bpe:3"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "bad.tiktoken").write_text("!!!notbase64 1\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:1"):
        BPETokenizer.from_tiktoken_file(tmp_path / "bad.tiktoken")
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(str(tmp_path / "no_such_dir"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="broken.*kind"):
        load_tokenizer(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match="not in this vocabulary"):
        BPETokenizer.from_gpt2_files(GPT2_ENCODER, GPT2_VOCAB_BPE).decode([10**6])


def test_byte_tokenizer_still_loads():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.eos_id == 256
    assert tok.decode(tok.encode("héllo 🎉")) == "héllo 🎉"
