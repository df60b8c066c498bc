"""benchmarks/bf16_training.py at toy size: three runs that differ only in precision or seed, a
report whose paired held-out differences are computed on shared (t, eps) draws, and reuse of
finished runs."""
import json
import math
import os

from bench_helpers import load_benchmark


def test_three_runs_one_change_each_and_a_paired_report(tmp_path):
    bench = load_benchmark("bf16_training")
    argv = ["--steps", "4", "--log-every", "1", "--train-size", "64", "--holdout", "12", "--draws", "2",
            "--batch-size", "8", "--warmup", "1", "--no-progress", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["run"] for r in report["rows"]] == ["fp32", "bf16", "fp32 seed 1"]
    configs = {name: json.loads((tmp_path / name / "config.json").read_text())["train"]
               for name in ("fp32", "bf16", "fp32-seed-1")}
    assert [(c["mixed_precision"], c["seed"]) for c in configs.values()] == [("no", 0), ("bf16", 0), ("no", 1)]
    drop = {"mixed_precision", "seed"}
    assert len({json.dumps({k: v for k, v in c.items() if k not in drop}, sort_keys=True)
                for c in configs.values()}) == 1                        # nothing else differs
    ref, bf16, seed1 = report["rows"]
    for row in report["rows"]:
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("train_loss", "heldout_loss", "heldout_se"))
    assert "heldout_diff" not in ref and "first_interval_rel_u" not in seed1
    # the paired difference is the difference of the means (same images, same draws)
    assert math.isclose(bf16["heldout_diff"], bf16["heldout_loss"] - ref["heldout_loss"], rel_tol=1e-9,
                        abs_tol=1e-12)
    assert math.isfinite(bf16["first_interval_rel_u"])
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    assert "| bf16 |" in (tmp_path / "report.md").read_text()
    stamp = os.path.getmtime(tmp_path / "bf16" / "metrics.jsonl")
    assert bench.main(argv) == 0                                        # finished runs are reused
    assert os.path.getmtime(tmp_path / "bf16" / "metrics.jsonl") == stamp
