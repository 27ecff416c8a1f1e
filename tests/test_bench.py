"""`foundations bench` on a tiny GPT-2: it runs the real step and the plain reference, and the
plain model it races has exactly the project's parameters, and the report's figures agree with
its step times and a hand count of the model's FLOPs (no speed is asserted)."""

import json
import time

import pytest
from conftest import TINY

from foundations.cli import main


@pytest.mark.slow  # two models benchmarked; test_bench_without_plain_reference is quick
def test_bench_reports_project_and_plain(capsys):
    start = time.perf_counter()
    assert main(["bench", "experiments/smoke.yaml", *TINY, "--steps", "2", "--rounds", "2",
                 "--json"]) == 0
    wall = time.perf_counter() - start
    report = json.loads(capsys.readouterr().out)
    # counted by hand: 2 layers x (4*32^2 + 4*32 attention, 8*32^2 + 5*32 MLP, 4*32 norms)
    # + 320*32 tokens (256 bytes and specials, padded to 64) + 32*32 positions + 2*32 final norm
    blocks = 2 * (4 * 32 * 32 + 4 * 32 + 8 * 32 * 32 + 4 * 32 + 32 + 4 * 32)
    parameters = blocks + 320 * 32 + 32 * 32 + 64
    assert report["parameters"] == report["plain"]["parameters"] == parameters
    assert report["steps"] == 2 and report["tokens_per_step"] == 8 * 32
    for timed in (report, report["plain"]):
        # throughput is the tokens of a step over the median step time
        assert timed["tokens_per_sec"] == pytest.approx(8 * 32 / (timed["step_ms_median"] / 1e3))
        assert timed["step_ms_p10"] <= timed["step_ms_median"] <= timed["step_ms_p90"]
        # compiling and the two timed steps happened inside the command, in seconds
        assert timed["compile_s"] + 2 * timed["step_ms_median"] / 1e3 < wall
        # the step holds the float32 parameters and Adam's two moments at least
        assert timed["peak_memory_bytes"] >= 3 * 4 * parameters
    # model FLOPs by hand: 6 per matmul weight (2 x 12*32^2 blocks + the 320 x 32 tied head)
    # + attention's 12 * layers * T * d, per token
    per_token = 6 * (2 * 12 * 32 * 32 + 320 * 32) + 12 * 2 * 32 * 32
    assert report["model_flops_per_sec"] == pytest.approx(report["tokens_per_sec"] * per_token)
    # project/plain throughput: the plain step's median time over the project's
    assert report["ratio"] == pytest.approx(report["plain"]["step_ms_median"]
                                            / report["step_ms_median"])
    assert report["mfu"] is None  # CPU: no datasheet peak


def test_bench_without_plain_reference(capsys):
    assert main(["bench", "experiments/smoke.yaml", *TINY, "model.norm=rmsnorm", "--steps", "1",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "no plain reference" in out
