"""benchmarks/gpu.py runs on a GPU machine once in a while; its CPU-sized smoke mode runs here,
so the script never rots between those runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_cpu_sized(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), str(tmp_path), "--smoke"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert set(results) == {"env", "fp16", "resume", "fsdp", "throughput", "profile"}
    assert not [name for name, r in results.items() if "error" in r]
    assert results["resume"]["losses_bit_identical"] and results["resume"]["weights_bit_identical"]
    assert results["fsdp"]["close"] and results["fsdp"]["resume_close"] and results["fp16"]["losses_finite"]
    assert {".metadata", "__0_0.distcp", "state.pt"} <= set(results["fsdp"]["checkpoint_files"])
    (run,) = results["throughput"]["runs"]
    assert run["raw_step_ms"] > 0 and run["engine_step_ms"] > 0
    profiled = results["profile"]["off"]  # eager only, on a CPU
    assert profiled["step_ms"]["raw"] > 0 and profiled["step_ms"]["engine"] > 0 and profiled["host_ops_self_ms_per_step"]["engine"]
    assert "engine / raw" in (tmp_path / "gpu.md").read_text()
