"""benchmarks/gpu_throughput.py: its --quick path on a CPU writes a report with every part's rows
and finite positive numbers (the GPU numbers themselves come from a GPU run)."""
import json
import math

from bench_helpers import load_benchmark


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_reports_every_part(tmp_path):
    bench = load_benchmark("gpu_throughput")
    assert bench.main(["--quick", "--measure-peak", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_throughput-quick.json").read_text())
    assert (tmp_path / "gpu_throughput-quick.md").read_text().startswith("# GPU throughput")

    steps = report["train_step"]
    ours = {(r["compiled"], r["precision"]) for r in steps if r["library"] == "scorekit"}
    assert ours == {(False, "fp32"), (True, "fp32"), (False, "bf16"), (True, "bf16")}
    if bench.DIFFUSERS_MISSING is None:
        assert {(r["compiled"], r["precision"]) for r in steps if r["library"] == "diffusers"} == \
            {(False, "fp32"), (False, "bf16")}
    for r in steps:
        assert r["preset"] == "tiny" and r["batch"] == 4
        for key in ("images_per_s", "step_ms", "tflops", "mfu_nominal", "mfu_measured"):
            assert positive(r[key]), (key, r)
    flops = report["flops"]["tiny"]["scorekit"]
    assert positive(flops["forward"]) and flops["forward_backward"] > flops["forward"]

    (loop,) = report["loop"]
    for key in ("steady_images_per_s", "end_to_end_images_per_s", "vs_compiled_step", "tflops"):
        assert positive(loop[key]), (key, loop)
    assert loop["steps"] == 20

    assert [r["precision"] for r in report["forward"]] == ["fp32"]
    assert {(r["sampler"], r["steps"]) for r in report["sampling"]} == {("ddim", 50), ("dpmpp_2m", 20)}
    for r in report["sampling"]:
        assert r["nfe"] == r["steps"]
        for key in ("samples_per_s", "nfe_images_per_s", "vs_compiled_forward", "tflops"):
            assert positive(r[key]), (key, r)

    assert positive(report["peak"]["measured_tflops"])
    goals = {g["goal"].split(" >=")[0]: g for g in report["goals"]}
    assert set(goals) == {"loop", "compiled bf16 step", "sampling"}
    assert all(g["value"] is None or positive(g["value"]) for g in report["goals"])
