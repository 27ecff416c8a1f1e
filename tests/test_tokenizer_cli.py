"""The `tokenize` sub-commands, run through their argparse parser as the main CLI will run them."""

import argparse

import pytest

from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.cli import add_tokenize_parser
from tokenizer_cases import SHAKESPEARE


def run(argv):
    parser = argparse.ArgumentParser(prog="foundations")
    add_tokenize_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.func(args)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.txt"
    path.write_text(SHAKESPEARE.read_text()[:40_000])
    return path


@pytest.mark.parametrize("kind,vocab_size", [("bpe", 300), ("spm", 400), ("wordpiece", 200)])
def test_train_then_encode(kind, vocab_size, corpus, tmp_path, capsys):
    out = tmp_path / kind
    run(["tokenize", "train", "--kind", kind, "--vocab-size", str(vocab_size), "--out", str(out),
         str(corpus)])
    assert f"trained {kind}" in capsys.readouterr().out
    tok = load_tokenizer(str(out))
    assert tok.kind == kind and tok.vocab_size == vocab_size
    run(["tokenize", "encode", "--tokenizer", str(out), "First Citizen, speak"])
    lines = capsys.readouterr().out.strip().splitlines()
    ids = tok.encode("First Citizen, speak")
    assert lines[0] == f"{len(ids)} tokens"
    assert [int(line.split()[0]) for line in lines[1:]] == ids


def test_encode_byte_shows_pieces(capsys):
    run(["tokenize", "encode", "--tokenizer", "byte", "hé!"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["4 tokens", "     104  'h'", "     195  b'\\xc3'", "     169  b'\\xa9'",
                     "      33  '!'"]


def test_stats_side_by_side(corpus, tmp_path, capsys):
    run(["tokenize", "train", "--kind", "bpe", "--vocab-size", "400", "--out",
         str(tmp_path / "bpe"), str(corpus)])
    capsys.readouterr()
    run(["tokenize", "stats", "--tokenizer", "byte", "--tokenizer", str(tmp_path / "bpe"),
         str(corpus)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["tokenizer", "vocab", "tokens", "tok/word", "bytes/tok", "vocab",
                                "used"]
    byte_row, bpe_row = lines[2].split(), lines[3].split()
    num_bytes = len(corpus.read_bytes())
    assert byte_row[0] == "byte" and int(byte_row[2]) == num_bytes and byte_row[4] == "1.000"
    bpe_tokens = len(load_tokenizer(str(tmp_path / "bpe")).encode(corpus.read_text()))
    assert int(bpe_row[2]) == bpe_tokens < num_bytes
    assert float(bpe_row[3]) == pytest.approx(bpe_tokens / len(corpus.read_text().split()),
                                              abs=1e-3)


def test_train_rejects_non_utf8(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3\x28")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 3"):
        run(["tokenize", "train", "--kind", "bpe", "--vocab-size", "300", "--out",
             str(tmp_path / "x"), str(tmp_path / "bad.txt")])


def test_main_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from foundations.cli import main
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3\x28")
    assert main(["tokenize", "train", "--kind", "bpe", "--vocab-size", "300", "--out",
                 str(tmp_path / "x"), str(tmp_path / "bad.txt")]) == 2
    assert main(["tokenize", "encode", "--tokenizer", str(tmp_path / "missing"), "hi"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("foundations tokenize: error: ")
                                   for line in lines)
    assert "bad.txt" in lines[0] and "byte offset 3" in lines[0]
    assert "missing" in lines[1] and "tokenizer.json" in lines[1]
