"""data.newlines: text reading (the files path and `foundations prepare`) turns \r\n and lone \r
into \n unless told to keep them; the bundled corpora are UTF-8 with \n line endings."""

from pathlib import Path

import pytest

from foundations.config import ConfigError, DataConfig, config_from_tree
from foundations.data.files import BUNDLED_CORPORA, read_text
from foundations.data.pipeline import load_text_data
from foundations.data.prepare import PrepareOptions, documents, prepare

TEXT = "first line\r\nsecond line\r\nold mac\rend\n" * 40
NORMALIZED = "first line\nsecond line\nold mac\nend\n" * 40


@pytest.fixture
def crlf(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    return path


def test_read_text_normalizes_by_default_and_keeps_when_told(crlf):
    assert read_text(crlf) == NORMALIZED
    assert read_text(crlf, newlines="normalize") == NORMALIZED
    assert read_text(crlf, newlines="keep") == TEXT
    with pytest.raises(ConfigError, match="newlines"):
        read_text(crlf, newlines="unix")


def test_files_path_honours_data_newlines(crlf):
    kept = load_text_data(DataConfig(train_files=(str(crlf),), val_files=(str(crlf),),
                                     seq_len=8, newlines="keep"))
    normalized = load_text_data(DataConfig(train_files=(str(crlf),), val_files=(str(crlf),),
                                           seq_len=8))
    assert kept.tokenizer.decode(kept.val_tokens.tolist()).startswith(TEXT)
    assert normalized.tokenizer.decode(normalized.val_tokens.tolist()).startswith(NORMALIZED)
    assert 13 not in normalized.train_tokens.tolist() and 13 in kept.train_tokens.tolist()


def test_config_knob_defaults_to_normalize_and_checks_its_choices():
    assert config_from_tree({}).data.newlines == "normalize"
    assert config_from_tree({"data": {"newlines": "keep"}}).data.newlines == "keep"
    with pytest.raises(ConfigError):
        config_from_tree({"data": {"newlines": "dos"}})


def test_prepare_honours_newlines(crlf, tmp_path):
    assert documents(crlf, PrepareOptions("byte")) == [NORMALIZED]
    assert documents(crlf, PrepareOptions("byte", newlines="keep")) == [TEXT]
    other = tmp_path / "other.txt"
    other.write_bytes(TEXT.upper().encode("utf-8"))
    counts = {}
    for mode in ("keep", "normalize"):
        manifest = prepare([str(crlf), str(other)], tmp_path / mode,
                           PrepareOptions("byte", val_fraction=0.5, newlines=mode), progress=False)
        counts[mode] = sum(manifest["splits"][s]["tokens"] for s in ("train", "val"))
    assert counts["keep"] - counts["normalize"] == 2 * TEXT.count("\r\n")


def test_every_bundled_corpus_file_is_utf8_with_unix_newlines():
    files = [p for p in sorted(BUNDLED_CORPORA.rglob("*")) if p.is_file()]
    assert len(files) >= 15
    for path in files:
        data = path.read_bytes()
        data.decode("utf-8")  # raises on a non-UTF-8 file
        assert b"\r" not in data, f"{path} has \\r line endings"



def test_tokenizer_trainers_read_files_with_line_endings_as_data_newlines_does(crlf):
    from foundations.tokenizers.corpus import with_newlines
    with with_newlines([crlf]) as normalized, with_newlines([crlf], "keep") as kept:
        assert Path(normalized[0]).read_bytes() == NORMALIZED.encode("utf-8")
        assert kept == [str(crlf)]
    assert not Path(normalized[0]).exists()  # the scratch copy lives for the block only
    with pytest.raises(ValueError, match="newlines"):
        with with_newlines([crlf], "dos"):
            pass


def test_sentencepiece_trained_on_crlf_text_learns_no_carriage_returns_by_default(crlf, tmp_path):
    """SentencePiece reads its files itself: by default it sees the normalised copy, and the
    result equals training on the \\n file; --newlines keep lets it learn the \\r pieces."""
    from foundations.tokenizers.cli import train_tokenizer
    unix = tmp_path / "unix.txt"
    unix.write_text(NORMALIZED, encoding="utf-8")
    normalized = train_tokenizer("spm", [str(crlf)], 300)
    reference = train_tokenizer("spm", [str(unix)], 300)
    kept = train_tokenizer("spm", [str(crlf)], 300, newlines="keep")
    assert normalized.encode(TEXT) == reference.encode(TEXT)
    assert len(kept.encode(TEXT)) < len(reference.encode(TEXT))
