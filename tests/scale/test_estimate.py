"""doctor --model: per-step memory and disk estimates and what this machine can do."""
from nextstep_trt.cli import main
from nextstep_trt.engines.estimate import estimate_steps, kv_cache_bytes, verdict
from nextstep_trt.ref.config import large


def test_large_estimates():
    steps = {s.name: s for s in estimate_steps(large(), "bf16")}
    whole = steps["export --low-memory --dtype bf16: all graphs in one run"]
    assert 3e9 < whole.ram < 8e9 and whole.disk < 2e9                 # measured: 4.13 GB peak, 1.14 GB written
    assert steps["export --low-memory --dtype fp32: backbone"].disk > 50e9   # 14.0 B backbone weights converted
    assert steps["export (ordinary, whole model in memory)"].ram > 100e9
    assert 10e9 < kv_cache_bytes(large()) < 11e9      # 48 layers x K,V x 12 rows x 8 heads x 2208 slots x 128 x 4 B


def test_verdicts_name_the_short_resource():
    steps = {s.name: s for s in estimate_steps(large(), "bf16")}
    assert verdict(steps["export --low-memory --dtype bf16: backbone"], ram=24 * 10**9, disk=50 * 10**9) == "yes"
    v = verdict(steps["init-model --dtype fp32"], ram=24 * 10**9, disk=50 * 10**9)
    assert v == "no: needs 60.2 GB disk, 50.0 GB free"


def test_doctor_model_flag(ckpts, capsys):
    assert main(["doctor", "--model", str(ckpts["bf16"])]) == 0
    out = capsys.readouterr().out
    assert "bf16 checkpoint" in out and "export --low-memory --dtype bf16: backbone" in out and ": yes" in out
