"""Names that say one thing each: the `task` command group (its old top-level verbs still parse
but are not listed), convert/'s re-exports, and post/answers.py in place of post/evaluate.py."""

import importlib
import importlib.util

import pytest

from foundations.cli import build_parser, main

OLD_VERBS = ("addition-data", "addition-pairs", "prompt-eval", "answers")


def test_help_lists_the_task_group_and_not_the_old_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("    ") and line.split()]
    assert "task" in listed and "train" in listed
    assert not set(OLD_VERBS) & set(listed)
    usage = build_parser().format_usage()
    assert "task" in usage and not any(verb in usage for verb in OLD_VERBS)


def test_the_task_group_has_each_command_with_the_old_verbs_flags():
    parser = build_parser()
    for verb, args in [("addition-data", ["out.txt", "--count", "3"]),
                       ("addition-pairs", ["--out", "d", "--digits", "3"]),
                       ("prompt-eval", ["--run-dir", "r", "--shots", "2"]),
                       ("answers", ["x.jsonl", "--run-dir", "r", "--limit", "4"])]:
        new, old = parser.parse_args(["task", verb, *args]), parser.parse_args([verb, *args])
        assert new.task_command == verb and old.command == verb
        assert {k: v for k, v in vars(new).items() if k not in ("command", "task_command")} \
            == {k: v for k, v in vars(old).items() if k != "command"}


def test_task_addition_data_writes_what_the_old_alias_writes(tmp_path):
    new, old = tmp_path / "new.txt", tmp_path / "old.txt"
    assert main(["task", "addition-data", str(new), "--count", "7", "--seed", "3"]) == 0
    assert main(["addition-data", str(old), "--count", "7", "--seed", "3"]) == 0
    assert new.read_bytes() == old.read_bytes() and len(new.read_text().splitlines()) == 7


def test_task_addition_pairs_writes_what_the_old_alias_writes(tmp_path):
    assert main(["task", "addition-pairs", "--out", str(tmp_path / "new"), "--count", "20"]) == 0
    assert main(["addition-pairs", "--out", str(tmp_path / "old"), "--count", "20"]) == 0
    for name in ("sft.jsonl", "pairs.jsonl"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()


def test_convert_reexports_each_name_from_convert_hf():
    import foundations.convert as convert
    import foundations.convert.hf as hf
    assert set(convert.__all__) == {"HFModel", "from_hf", "to_hf", "merge_lora",
                                    "read_safetensors"}
    for name in convert.__all__:
        assert getattr(convert, name) is getattr(hf, name)
    from foundations.convert import HFModel, from_hf, merge_lora, read_safetensors, to_hf
    assert callable(from_hf) and callable(to_hf) and callable(merge_lora)
    assert callable(read_safetensors) and isinstance(HFModel, type)


def test_peft_export_and_import_live_in_convert_lora():
    from foundations.convert import lora
    assert callable(lora.export_peft) and callable(lora.add_lora) and callable(lora.lora_deltas)


def test_post_answers_replaces_post_evaluate():
    answers = importlib.import_module("foundations.post.answers")
    assert callable(answers.run_accuracy) and callable(answers.answer_accuracy)
    assert importlib.util.find_spec("foundations.post.evaluate") is None
