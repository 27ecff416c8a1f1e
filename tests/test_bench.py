"""`foundations bench` on a tiny GPT-2: it runs the real step and the plain reference, and the
plain model it races has exactly the project's parameters (no timing is asserted)."""

import json

from conftest import TINY

from foundations.cli import main


def test_bench_reports_project_and_plain(capsys):
    assert main(["bench", "experiments/smoke.yaml", *TINY, "--steps", "2", "--rounds", "2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # counted by hand: 2 layers x (4*32^2 + 4*32 attention, 8*32^2 + 5*32 MLP, 4*32 norms)
    # + 320*32 tokens (256 bytes and specials, padded to 64) + 32*32 positions + 2*32 final norm
    blocks = 2 * (4 * 32 * 32 + 4 * 32 + 8 * 32 * 32 + 4 * 32 + 32 + 4 * 32)
    assert report["parameters"] == report["plain"]["parameters"] == (blocks + 320 * 32
                                                                     + 32 * 32 + 64)
    assert report["steps"] == 2 and report["tokens_per_step"] == 8 * 32
    for timed in (report, report["plain"]):
        assert timed["tokens_per_sec"] > 0 and timed["step_ms_p10"] <= timed["step_ms_p90"]
        assert timed["compile_s"] > 0 and timed["peak_memory_bytes"] > 0
    assert report["ratio"] == report["tokens_per_sec"] / report["plain"]["tokens_per_sec"]
    assert report["mfu"] is None  # CPU: no datasheet peak


def test_bench_without_plain_reference(capsys):
    assert main(["bench", "experiments/smoke.yaml", *TINY, "model.norm=rmsnorm", "--steps", "1",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "no plain reference" in out
