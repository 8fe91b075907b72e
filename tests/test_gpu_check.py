"""The prepared GPU run (benchmarks/gpu_check.py) runs here on the CPU at tiny sizes, and the
numbers the docs quote are those of its recorded report."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_cpu_smoke_runs_every_part(tmp_path):
    output = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--skip-tests",
                             "--output", str(output), "--mace-python", sys.executable],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    for series in ("float32", "float64", "float32, recompute=blocks"):
        rows = report["scaling"][series]
        assert rows and all("error" not in r and r["call_us_per_atom"] > 0 for r in rows), (series, rows)
    assert all(r["pairs_equal_count"] for r in report["neighbours"])
    assert [r["dtype"] for r in report["training"]] == ["float32", "float64"]
    epochs = report["training_epochs"]
    assert [r["returncode"] for r in epochs] == [0, 0] and all(len(r["epochs"]) == 1 for r in epochs), epochs
    assert all("error" not in r for r in report["torch_sim"]) or "not importable" in report["torch_sim"][0]["error"]
    # MACE (its own environment: mace-torch pins e3nn 0.4.4) ran, or the reason it did not is recorded
    assert "error" in report["mace"] or report["mace"]["rows"]
    assert output.with_suffix(".md").read_text() == gpu_check.render(report)


def test_the_docs_quote_the_recorded_gpu_report():
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu_check.json").read_text())
    assert report["environment"]["device"] == "cuda" and report["cuda_tests"]["returncode"] == 0
    million = next(r for r in report["scaling"]["float32"] if r["n_atoms"] == 1_000_188)
    row = (f"| 1,000,188 | {million['call_us_per_atom']:.2f} | {million['md_atom_steps_per_s']:,.0f} | "
           f"{million['peak_memory_kib_per_atom']:.1f}")
    assert row in (ROOT / "docs" / "model.md").read_text()
    readme = (ROOT / "README.md").read_text().replace("\n  ", " ")
    assert f"{round(million['md_atom_steps_per_s'], -3):,.0f} atom·steps/s" in readme
    mace = {r["n_atoms"]: r for r in report["mace"]["rows"]}
    ratio = mace[131_072]["call_us_per_atom"] / next(
        r for r in report["scaling"]["float32"] if r["n_atoms"] == 131_072)["call_us_per_atom"]
    assert re.search(rf"{round(ratio)}× faster per call", (ROOT / "docs" / "model.md").read_text())
    assert (ROOT / "benchmarks" / "results" / "gpu_check.md").read_text() == gpu_check.render(report)
