"""benchmarks/attention_layout.py: a tiny run on the CPU times both layouts and names the kernel
PyTorch picks for each (the timings themselves come from a real run)."""
import json

from bench_helpers import load_benchmark

from scorekit.models.layers import AttentionBlock


def test_tiny_run_times_both_layouts(tmp_path):
    bench = load_benchmark("attention_layout")
    argv = ["--device", "cpu", "--presets", "tiny", "--batch", "2", "--rounds", "1", "--iters", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "attention_layout.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert r["fused_ms"] > 0 and r["plain_ms"] > 0 and r["ratio"] > 0
        assert r["kernel_plain"] in ("math", "?") and r["kernel_fused"] != "math"
    assert AttentionBlock.fused_layout == "auto"                 # put back
    assert "| tiny | 2x32x8x8 | fp32 |" in (tmp_path / "attention_layout.md").read_text()
