"""`benchmarks/train_step.py` (`equirecon bench train-step`): recon on vs off, interleaved."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.gpu_suite import TINY_OVERRIDES
from benchmarks.train_step import StepBench, format_table, run_interleaved, variant_configs
from equirecon.cli import main as cli_main


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    """The benchmarks set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_variants_differ_only_in_recon() -> None:
    cfgs = variant_configs(None, TINY_OVERRIDES, {"dp": ["bench.drop_path=mask"]})
    recon, no_recon = cfgs["recon"][0], cfgs["no_recon"][0]
    assert recon.recon.enabled and not no_recon.recon.enabled
    assert recon.model == no_recon.model
    assert recon.data.backend == "synthetic"
    assert cfgs["dp"][1] == {"drop_path": "mask"} and cfgs["recon"][1] == {}
    with pytest.raises(ValueError, match="bench.nope"):
        variant_configs(None, ["bench.nope=1"])


def test_interleaved_steps_train_and_report_finite_numbers() -> None:
    torch.set_num_threads(1)  # restored by the fixture
    cfgs = variant_configs(None, TINY_OVERRIDES)
    benches = {name: StepBench(cfg, torch.device("cpu")) for name, (cfg, _) in cfgs.items()}
    student = benches["recon"].method.student
    before = [p.detach().clone() for p in student.parameters()]
    results = run_interleaved(benches, rounds=2, steps_per_round=1, warmup=1)
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, student.parameters()))
    assert changed, "a timed step must update the student"
    for r in results.values():
        assert len(r.step_s) == 2 and len(r.round_s) == 2
        assert math.isfinite(r.img_per_s) and r.img_per_s > 0
        assert r.mfu is None  # no peak FLOP/s on a CPU
    table = format_table(results, reference="no_recon")
    assert "| recon | 4 |" in table and "1.000x" in table


@pytest.mark.parametrize(
    "extra", [[], ["--variant", "bf16:train.precision=bf16,bench.drop_path=mask"]]
)
def test_cli_verb_prints_table_and_overhead(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "train-step", "--rounds", "1", "--steps", "1", "--warmup", "1"]
    argv += ["--threads", "1", *extra, *TINY_OVERRIDES]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "recon overhead:" in out and "| no_recon |" in out
    if extra:
        assert "| bf16 |" in out and "bf16: step time" in out
