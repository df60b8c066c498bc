"""benchmarks/gpu_sync_check.py: every scenario runs on a CPU (where nothing is detected; the
waits themselves are found on a GPU) and the report lists them all."""
import json

from bench_helpers import load_benchmark


def test_quick_run_covers_every_group(tmp_path):
    check = load_benchmark("gpu_sync_check")
    assert check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_sync_check.json").read_text())["rows"]
    assert {r["group"] for r in rows} == {"training", "sampling", "tasks"}
    assert {"projection", "pigdm", "elbo", "cfg rescaled, image", "sample_batches", "dpmpp_2m, bf16"} \
        <= {r["scenario"] for r in rows}
    assert all(r["error"] is None and r["waits"] == 0 for r in rows)
    assert "| training | unconditional | 0 | 6 steps |" in (tmp_path / "gpu_sync_check.md").read_text()
