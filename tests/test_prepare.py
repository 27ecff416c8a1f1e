"""`foundations prepare`: shards read back with array_record equal each document tokenized on its
own; duplicates and near-empty documents are dropped and counted; reruns are no-ops; bad input
is one line naming the file."""

import json
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from foundations.cli import main
from foundations.config import ConfigError
from foundations.data.prepare import MANIFEST, PrepareOptions, prepare
from foundations.tokenizers.bpe import BPETokenizer

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three text files (one split into documents by a separator) and a JSONL file, with one
    exact duplicate and one blank document."""
    from foundations.data.files import BUNDLED_CORPORA
    text = (BUNDLED_CORPORA / "tinyshakespeare" / "input.txt").read_text()[:40_000]
    root = tmp_path_factory.mktemp("inputs")
    (root / "a.txt").write_text(text[:9000])
    (root / "b.txt").write_text(text[9000:15000] + "\n\n\n" + text[15000:22000] + "\n\n\n   ")
    (root / "c.txt").write_text(text[:9000])  # a duplicate of a.txt
    records = [{"text": text[i:i + 3000], "id": i} for i in range(22000, 40000, 3000)]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    docs = [text[:9000], text[9000:15000], text[15000:22000]] + [r["text"] for r in records]
    return root, docs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    BPETokenizer.from_gpt2_files(DATA / "gpt2" / "encoder.json", DATA / "gpt2" / "vocab.bpe",
                                 {"<|endoftext|>": 50256}).save(directory)
    return directory


def read_split(out: Path, manifest: dict, split: str) -> list[np.ndarray]:
    """A split's documents, read straight from its ArrayRecord files."""
    records = []
    for shard in manifest["splits"][split]["shards"]:
        reader = ArrayRecordReader(str(out / shard["file"]))
        records += [np.frombuffer(r, manifest["dtype"]) for r in reader.read_all()]
        reader.close()
    stream = np.concatenate(records)
    ends = np.cumsum(manifest["splits"][split]["document_tokens"])
    assert ends[-1] == len(stream) == manifest["splits"][split]["tokens"]
    return np.split(stream, ends[:-1])


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
def test_round_trip(inputs, gpt2, tmp_path, tokenizer):
    root, docs = inputs
    spec = "byte" if tokenizer == "byte" else str(gpt2)
    encode = (lambda t: list(t.encode())) if tokenizer == "byte" else \
        BPETokenizer.load(gpt2).encode_reference  # the pure-Python encoder, not tiktoken
    eos = 256 if tokenizer == "byte" else 50256
    out = tmp_path / "shards"
    manifest = prepare([str(root)], out, PrepareOptions(spec, val_fraction=0.3, separator="\n\n\n",
                                                        shard_tokens=4096 * 2,
                                                        workers=2 if tokenizer != "byte" else 1),
                       progress=False)
    written = read_split(out, manifest, "train") + read_split(out, manifest, "val")
    expected = {tuple(encode(d)) + (eos,) for d in docs}
    assert {tuple(int(t) for t in w) for w in written} == expected
    assert len(written) == len(docs) and manifest["splits"]["val"]["documents"] >= 1
    assert manifest["duplicates_dropped"] == 1 and manifest["too_short_dropped"] == 1
    assert sum(s["tokens"]["train"] + s["tokens"]["val"] for s in manifest["sources"]) == \
        sum(len(w) for w in written)
    if tokenizer == "byte":
        assert len(manifest["splits"]["train"]["shards"]) > 1  # small shards: several files
    assert (out / "tokenizer" / "tokenizer.json").is_file()


def test_rerun_is_a_no_op_and_other_settings_are_refused(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "shards"
    options = PrepareOptions("byte", separator="\n\n\n")
    first = prepare([str(root)], out, options, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare([str(root)], out, options, progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(ConfigError, match="other inputs or settings"):
        prepare([str(root)], out, PrepareOptions("byte", min_chars=50), progress=False)


def test_interrupted_prepare_leaves_no_dataset_and_reruns_cleanly(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "shards"
    out.mkdir()
    (out / "train-00000.arrayrecord.tmp").write_bytes(b"half a shard")
    manifest = prepare([str(root)], out, PrepareOptions("byte"), progress=False)
    assert not list(out.glob("*.tmp")) and (out / MANIFEST).is_file()
    assert manifest["splits"]["val"]["documents"] == 1  # val_fraction 0.01 of 6 documents


def test_val_split_is_never_empty_and_a_single_document_is_refused(tmp_path):
    (tmp_path / "one.txt").write_text("only one document here")
    with pytest.raises(ConfigError, match="at least two"):
        prepare([str(tmp_path / "one.txt")], tmp_path / "out", PrepareOptions("byte"),
                progress=False)


def test_non_utf8_is_one_line_naming_file_and_offset(tmp_path, capsys):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9 au lait\n\n\nun autre".encode("latin-1"))
    code = main(["prepare", str(bad), "--tokenizer", "byte", "--out", str(tmp_path / "o"),
                 "--separator", r"\n\n\n", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(bad) in err and "byte 3" in err
    assert main(["prepare", str(bad), "--tokenizer", "byte", "--out", str(tmp_path / "o"),
                 "--separator", r"\n\n\n", "--fallback-encoding", "latin-1",
                 "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert manifest["sources"][0]["bytes"] == len("caf\xe9 au laitun autre".encode())


def test_jsonl_without_the_text_key_is_refused(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(ConfigError, match=r"x.jsonl:1: no string field 'text'"):
        prepare([str(tmp_path)], tmp_path / "out", PrepareOptions("byte"), progress=False)


def test_flags_come_from_the_config_system(tmp_path, capsys):
    """`foundations prepare`'s defaults, choices and checks are config.PrepareConfig's knobs."""
    import dataclasses
    from foundations.cli import build_parser
    from foundations.config import PrepareConfig
    args = vars(build_parser().parse_args(["prepare", "x", "--tokenizer", "byte", "--out", "o"]))
    for f in dataclasses.fields(PrepareConfig):
        assert args[f.name] == (f.default if f.name != "tokenizer" else "byte")
    assert main(["prepare", "x", "--tokenizer", "byte", "--out", str(tmp_path / "o"),
                 "--shard-tokens", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "foundations prepare: error: --shard-tokens=0 must be > 0"
