"""Writes the SentencePiece reference files next to this script, with the `sentencepiece`
library alone (not the project's wrapper): a small corpus, two tiny models trained on it and what
the library gives for a few strings. Run once; tests/test_spm_wordpiece.py checks the wrapper
against the files.

    python tests/data/spm/make_reference.py

bpe.model: the options SentencePieceTokenizer.train documents as its defaults (LLaMA-like: BPE,
byte fallback, dummy prefix, identity normalization, whitespace kept, digits split).
unigram_pad0.model: a layout the wrapper did not make: T5's special ids (pad 0, eos 1, unk 2,
no BOS), no byte fallback, runs of whitespace collapsed.
"""

import json
import os
from pathlib import Path

import sentencepiece

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parents[2] / "foundations/data/corpora/tinyshakespeare/input.txt"
YEARS = " ".join(str(year) for year in range(1590, 1650)) + "\n"   # digits to merge, or not


def corpus_text() -> str:
    """15,000 characters of Tiny Shakespeare (which has almost no digits), then years 5 times."""
    return SHAKESPEARE.read_text(encoding="utf-8")[:15_000] + YEARS * 5


MODELS = {
    "bpe.model": dict(
        vocab_size=400, model_type="bpe", byte_fallback=True, character_coverage=0.9995,
        split_digits=True, num_threads=2, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
    "unigram_pad0.model": dict(
        vocab_size=200, model_type="unigram", byte_fallback=False, num_threads=2,
        normalization_rule_name="identity", pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
}

CASES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Hello, world!",
    "",
    "   leading spaces, trailing   ",
    "a  b   c\n\n\td",
    "1234567890 and 1616-04-23",
    "café naïve",
    "🎉",
    "日本語",
    "ﬁne ＡＢＣ",                 # NFKC would make these "fine ABC"
    "e\u0301 é",                 # combining accent, precomposed é
    "<s> </s> <unk> <pad>",      # the special pieces' names as plain text
    "\u2581meta\u2581symbol",    # the library's own space symbol
    "MiXeD CaSe",
]


def main():
    os.chdir(HERE)  # relative paths: the models record their input and prefix, so bytes repeat
    Path("corpus.txt").write_text(corpus_text(), encoding="utf-8")
    reference = {"sentencepiece": sentencepiece.__version__, "corpus": "corpus.txt", "models": {}}
    for name, options in MODELS.items():
        prefix = name.removesuffix(".model")
        sentencepiece.SentencePieceTrainer.train(input="corpus.txt", model_prefix=prefix,
                                                 minloglevel=2, **options)
        Path(prefix + ".vocab").unlink()
        sp = sentencepiece.SentencePieceProcessor(model_file=name)
        reference["models"][name] = {
            "options": options, "vocab_size": sp.get_piece_size(),
            "unk_id": sp.unk_id(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "pad_id": sp.pad_id(),
            "cases": [{"text": text, "ids": sp.encode(text),
                       "pieces": [sp.id_to_piece(i) for i in sp.encode(text)],
                       "decoded": sp.decode(sp.encode(text))} for text in CASES]}
    Path("reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n",
                                      encoding="utf-8")


if __name__ == "__main__":
    main()
