"""benchmarks/cpu_before_after.py: both commits' sources exported and measured in their own
processes; one commit against itself gives a report with both columns filled."""
import json
import math
import subprocess
from pathlib import Path

import pytest

from bench_helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


def in_git_checkout() -> bool:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not in_git_checkout(), reason="exports commits with git archive")
def test_a_commit_against_itself(tmp_path):
    bench = load_benchmark("cpu_before_after")
    assert bench.main(["--before", "HEAD", "--after", "HEAD", "--workloads", "sample", "--quick",
                       "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cpu_before_after-quick.json").read_text())
    assert report["before"] == report["after"] and len(report["before"]) == 40
    (row,) = report["rows"]
    assert row["workload"] == "sample" and row["metric"] == "samples_per_cpu_s"
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("before", "after", "ratio"))
    assert row["before_extra"]["mean_abs"] == row["after_extra"]["mean_abs"] and row["same_output"]   # same code, same samples
    assert row["control_ratio"] > 0                            # the network alone, timed beside it


def test_unknown_workload_is_refused(capsys):
    bench = load_benchmark("cpu_before_after")
    with pytest.raises(SystemExit):
        bench.main(["--before", "HEAD", "--workloads", "warp"])
    assert "unknown workload(s) warp" in capsys.readouterr().err
