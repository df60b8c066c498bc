"""The command line: help, the demo's outputs and numbers, one-line errors, atomic writes."""
import csv
import io
import math
import os
import subprocess
import sys

import pytest
import torch

from scorekit import ScorekitError, plotting
from scorekit.cli import main
from scorekit.demo import OUTPUT_FILES, run_demo
from scorekit.metrics.distribution import mode_weight_stderr
from scorekit.toy import eight_gaussians

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_main(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- help ----------------------------------------------------------------------------------------

def test_help_lists_the_commands(capsys):
    code, out, err = run_main(capsys, ["--help"])
    assert code == 0
    assert "demo" in out and "usage: scorekit" in out and "examples" in out


def test_demo_help_describes_every_option(capsys):
    code, out, _ = run_main(capsys, ["demo", "--help"])
    assert code == 0
    for option in ("--out", "--dataset", "--steps", "--samples", "--seed", "--no-progress",
                   "samples.png", "trajectories.png", "errors.md", "errors.csv"):
        assert option in out


@pytest.mark.parametrize("command", ["train", "sample", "nll", "eval", "demo", "restore", "edit", "tune"])
def test_help_shows_every_value_default_and_no_empty_ones(command, capsys):
    """An option's default is shown when it is a value -- 0 and 0.0 included (--seed 0), though
    they compare equal to False -- and not for flags (False) or repeatable options given no times."""
    import re

    code, out, _ = run_main(capsys, [command, "--help"])
    assert code == 0
    assert "(default: False)" not in out and "(default: True)" not in out and "(default: [])" not in out
    if command != "eval":
        assert re.search(r"--seed S(?:(?!\n  -).)*?\(default: 0\)", out, re.S), "--seed has no default shown"


def test_no_command_prints_help(capsys):
    code, out, _ = run_main(capsys, [])
    assert code == 0 and "demo" in out


@pytest.mark.parametrize("module", ["scorekit", "scorekit.cli"])
def test_python_m_scorekit_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and proc.stderr == ""


def test_every_command_module_adds_its_parser_and_runs_it():
    """``scorekit.cli.COMMANDS``: one module per command, each with ``add`` and ``run``, in the
    order of the help."""
    from scorekit import cli

    names = [m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS]
    assert names == ["demo", "train", "sample", "restore", "edit", "eval", "info", "nll", "tune"]
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(commands) == names
    for module in cli.COMMANDS:
        assert commands[module.__name__.rsplit(".", 1)[1]].get_default("handler") is module.run




# --- a small demo run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run through main(): two tiny step counts and the full 1000-step chain, 300 samples."""
    out = tmp_path_factory.mktemp("demo") / "nested" / "out"
    threads = torch.get_num_threads()
    capture = pytest.MonkeyPatch()
    stdout, stderr = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    capture.setattr(sys, "stderr", stderr)
    try:
        code = main(["demo", "--out", str(out), "--steps", "10,5,1000", "--samples", "300",
                     "--seed", "3", "--no-progress"])
    finally:
        capture.undo()
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "threads_before": threads, "threads_after": torch.get_num_threads()}


def test_demo_writes_all_files(demo_run):
    assert demo_run["code"] == 0, demo_run["stderr"]
    out = demo_run["out"]
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)      # and no temporary files left
    for name in ("samples.png", "trajectories.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    md = (out / "errors.md").read_text(encoding="utf-8")
    assert "| sampler |" in md and "SWD floor" in md
    for name in OUTPUT_FILES:
        assert str(out / name) in demo_run["stdout"]
    assert "| DDIM" in demo_run["stdout"]
    assert demo_run["stderr"] == ""                               # --no-progress: quiet


def test_demo_table_rows_and_numbers(demo_run):
    rows = read_rows(demo_run["out"] / "errors.csv")
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("exact", ""), ("DDPM", "5"), ("DDPM", "10"), ("DDPM", "1000"),
        ("DDIM", "5"), ("DDIM", "10"), ("DDIM", "1000")]
    for r in rows:
        assert int(r["nfe"]) == (int(r["steps"]) if r["steps"] else 0)
        for key in ("swd", "swd_floor", "swd_floor_std", "mode_weight_error", "within_mode_spread",
                    "seconds"):
            value = float(r[key])
            assert math.isfinite(value) and value >= 0, (key, r)
    assert len({r["swd_floor"] for r in rows}) == 1                # one floor for one n


def test_exact_denoiser_at_1000_steps_matches_the_data(demo_run):
    """With the exact model the only error left at 1000 steps is the samples' own noise: SWD
    within 4 std of its noise floor, mode weights within 4 multinomial standard errors, and the
    within-mode spread within a few standard errors of 1. At 5 steps the modes are visibly
    blurred."""
    rows = {(r["sampler"], r["steps"]): r for r in read_rows(demo_run["out"] / "errors.csv")}
    stderr = float(mode_weight_stderr(eight_gaussians(), 300).max())
    for sampler in ("DDPM", "DDIM"):
        r = rows[(sampler, "1000")]
        assert float(r["swd"]) < float(r["swd_floor"]) + 4 * float(r["swd_floor_std"]), r
        assert float(r["mode_weight_error"]) < 4 * stderr, r
        assert abs(float(r["within_mode_spread"]) - 1) < 0.15, r
        assert float(rows[(sampler, "5")]["within_mode_spread"]) > 1.5, rows[(sampler, "5")]


def test_demo_restores_torch_threads(demo_run):
    assert demo_run["threads_after"] == demo_run["threads_before"]


def test_run_demo_is_reproducible(tmp_path):
    a = run_demo(tmp_path / "a", steps=(3,), num_samples=50, seed=7, progress=False)
    b = run_demo(tmp_path / "b", steps=(3,), num_samples=50, seed=7, progress=False)
    for key in a.samples:
        assert torch.equal(a.samples[key], b.samples[key])
    assert (tmp_path / "a" / "errors.csv").read_text().split("seconds")[0] == \
        (tmp_path / "b" / "errors.csv").read_text().split("seconds")[0]


# --- errors --------------------------------------------------------------------------------------

BAD_ARGS = [
    ["demo", "--steps", "10,abc"],
    ["demo", "--steps", "10.5"],
    ["demo", "--steps", "5000"],
    ["demo", "--steps", "0"],
    ["demo", "--steps", ""],
    ["demo", "--steps", "10,,50"],
    ["demo", "--samples", "0"],
    ["demo", "--samples", "many"],
    ["demo", "--seed", "-1"],
    ["demo", "--dataset", "swiss_roll"],
    ["demo", "--unknown-option"],
    ["no-such-command"],
]


def assert_one_line_error(code, out, err):
    assert code == 2
    assert err.startswith("scorekit: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv", BAD_ARGS, ids=lambda a: " ".join(a) or "empty")
def test_bad_arguments_give_one_line_and_no_files(capsys, tmp_path, argv):
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, argv + ["--out", str(out)] if argv[0] == "demo" else argv)
    assert_one_line_error(code, stdout, err)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_output_path_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code, out, err = run_main(capsys, ["demo", "--out", str(target), "--steps", "2", "--samples", "50"])
    assert_one_line_error(code, out, err)
    assert "--out" in err and "existing file" in err
    assert target.read_text() == "keep me" and os.listdir(tmp_path) == ["results.txt"]


def test_output_folder_that_cannot_be_created(capsys, tmp_path):
    """The library's ScorekitError also ends as one line (here: a folder inside a file)."""
    (tmp_path / "file").write_text("x")
    code, out, err = run_main(capsys, ["demo", "--out", str(tmp_path / "file" / "sub"), "--steps", "2",
                                       "--samples", "50", "--no-progress"])
    assert_one_line_error(code, out, err)
    assert "cannot create output folder" in err


def test_library_checks_raise_scorekit_error(tmp_path):
    for kwargs in ({"steps": (0,)}, {"steps": (1001,)}, {"steps": ()}, {"num_samples": 5},
                   {"dataset": "nope"}, {"seed": -3}, {"num_threads": 0}):
        with pytest.raises(ScorekitError):
            run_demo(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


# --- atomic writes -------------------------------------------------------------------------------

def test_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "table.md"
    with pytest.raises(KeyboardInterrupt):
        with plotting.atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half a ta")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []

    plotting.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with plotting.atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("new but broken")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["table.md"]


def test_interrupted_figure_leaves_no_file(tmp_path, monkeypatch):
    pts = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(PNG_MAGIC)
        raise KeyboardInterrupt

    from matplotlib.figure import Figure
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(KeyboardInterrupt):
        plotting.scatter_grid([[plotting.Panel("a", pts)]], tmp_path / "grid.png")
    assert os.listdir(tmp_path) == []


def test_plot_helpers_check_their_input(tmp_path):
    with pytest.raises(ScorekitError):
        plotting.scatter_grid([[plotting.Panel("3-d", torch.zeros(5, 3))]], tmp_path / "a.png")
    with pytest.raises(ScorekitError):
        plotting.trajectory_plot([("one point", torch.zeros(1, 4, 2))], tmp_path / "b.png")
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_is_reported_briefly(capsys, monkeypatch, tmp_path):
    import scorekit.demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scorekit.demo, "run_demo", interrupted)
    code, out, err = run_main(capsys, ["demo", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 130 and err == "scorekit: interrupted\n" and "Traceback" not in err


def test_keyboard_interrupt_while_starting_up_is_reported_briefly(capsys, monkeypatch):
    """Ctrl-C while the commands' modules are imported (building the parser takes a moment)."""
    import scorekit.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(scorekit.cli, "build_parser", interrupted)
    code, _, err = run_main(capsys, ["demo", "--help"])
    assert code == 130 and err == "scorekit: interrupted\n"


def test_running_out_of_memory_is_one_line(capsys, monkeypatch, tmp_path):
    """numpy's MemoryError for an impossible size (e.g. --data-option pad_to=100000) is named."""
    import scorekit.demo

    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 90.9 TiB for an array with shape (70000, 1, 100000, 100000)")

    monkeypatch.setattr(scorekit.demo, "run_demo", too_big)
    code, _, err = run_main(capsys, ["demo", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and "not enough memory: Unable to allocate 90.9 TiB" in err
