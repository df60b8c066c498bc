"""``scorekit train`` stopped by real signals and by a full disk: one line, a checkpoint of the step
reached (or the previous one intact), no partial files, and ``--resume`` continues bit for bit."""
import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_main
from scorekit.train import list_checkpoints, load_checkpoint, read_metrics

#: a 2-D run of a few milliseconds per step; checkpoints only when stopped or at the end
ARGS = ["--data", "moons", "--data-option", "n=256", "--model-option", "hidden=16",
        "--model-option", "depth=1", "--batch-size", "16", "--log-every", "1",
        "--checkpoint-every", "1000000", "--sample-num", "50", "--sample-steps", "2", "--no-progress"]
NEVER_ENDS = 10 ** 6                                  # --steps of a run that only a signal stops
STOPPED = re.compile(r"^scorekit train: interrupted \((SIG[A-Z]+)\) at step (\d+); saved (\S+); "
                     r"continue with: scorekit train --out (\S+) --resume$")
WALL_CLOCK = ("seconds", "images_per_second")


def start(argv, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **popen)


def wait_for_step(proc, run, step, timeout=120.0):
    """Poll the metrics log until the run has logged ``step`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    path = os.path.join(run, "metrics.jsonl")
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        rows = read_metrics(path)
        if rows and rows[-1]["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {step} in {timeout} s")


def finish(proc, timeout=120.0):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def stopped_line(err):
    """The interruption report: the last line of standard error, and no traceback."""
    assert "Traceback" not in err, err
    match = STOPPED.match(err.strip().splitlines()[-1])
    assert match, err
    return match


def hidden_entries(run):
    return [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".")]


def assert_same_run(a_run, b_run, step):
    """Model, EMA and trainer tensors (optimiser, generators, data order) equal bit for bit, and
    the same metrics apart from wall-clock fields."""
    name = f"step-{step:07d}"
    for file in ("model", "ema", "trainer"):
        a = load_file(os.path.join(a_run, "checkpoints", name, f"{file}.safetensors"))
        b = load_file(os.path.join(b_run, "checkpoints", name, f"{file}.safetensors"))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{file}: {different[:5]}"

    def rows(run):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK}
                for r in read_metrics(os.path.join(run, "metrics.jsonl"))]
    assert rows(a_run) == rows(b_run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_reached_and_resume_continues_exactly(tmp_path, capsys, signum):
    run, straight = str(tmp_path / "run"), str(tmp_path / "straight")
    proc = start([sys.executable, "-m", "scorekit", "train", *ARGS, "--steps", str(NEVER_ENDS),
                  "--out", run])
    wait_for_step(proc, run, 3)
    proc.send_signal(signum)
    code, out, err = finish(proc)
    assert code == 128 + signum, err                         # 130 for SIGINT, 143 for SIGTERM
    name, step, saved, out_flag = stopped_line(err).groups()
    step = int(step)
    assert name == signal.Signals(signum).name and out_flag == run
    assert saved == os.path.join(run, "checkpoints", f"step-{step:07d}")
    assert load_checkpoint(run).step == step                 # `latest` names it, and it loads
    assert [s for s, _ in list_checkpoints(run)] == [step]
    assert not hidden_entries(run)
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == \
        list(range(1, step + 1))

    # continue 3 steps past the stop; an uninterrupted run of that length ends in the same state
    # (a constant learning rate after the warm-up, so the total number of steps changes nothing)
    code, _, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", step + 3,
                                     "--no-progress"])
    assert code == 0, err
    code, _, err = run_main(capsys, ["train", *ARGS, "--steps", step + 3, "--out", straight])
    assert code == 0, err
    assert_same_run(run, straight, step + 3)


SLOW_SAVE = textwrap.dedent("""\
    import sys, time
    from scorekit.train import checkpoint as io
    from scorekit.cli import main
    real = io.save_tensors

    def save_tensors(tensors, path, metadata=None):     # the first file of each save is slow
        if path.endswith("model.safetensors"):
            print("SAVING", flush=True)
            time.sleep(1.0)
        return real(tensors, path, metadata)

    io.save_tensors = save_tensors
    sys.exit(main(sys.argv[1:]))
    """)


def test_a_second_ctrl_c_during_the_save_corrupts_nothing(tmp_path):
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    run = str(tmp_path / "run")
    proc = start([sys.executable, str(script), "train", *ARGS, "--steps", str(NEVER_ENDS),
                  "--out", run])
    wait_for_step(proc, run, 3)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "SAVING"
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)                          # while model.safetensors is being written
    code, _, err = finish(proc)
    assert code == 130, err
    step = int(stopped_line(err).group(2))
    ckpt = load_checkpoint(run)
    assert ckpt.step == step and [s for s, _ in list_checkpoints(run)] == [step]
    assert not hidden_entries(run)
    assert torch.isfinite(ckpt.ema_net(torch.zeros(4, 2), torch.full((4,), 10))).all()


# --- a full disk: a file-size limit in the child process ---------------------------------------------

def file_size_limit(limit):
    """For ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored, so the
    process is not killed), as on a full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def one_error_line(err):
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("scorekit: error: "), err
    assert not [line for line in lines if "error" in line and line != lines[-1]], err
    return lines[-1]


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A run trained to step 2 (its only checkpoint) and the sizes of its checkpoint files."""
    from scorekit.cli import main

    run = str(tmp_path_factory.mktemp("disk") / "run")
    assert main(["train", *ARGS, "--steps", "2", "--out", run]) == 0
    ckpt = os.path.join(run, "checkpoints", "step-0000002")
    return run, {name: os.path.getsize(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(two_step_run, tmp_path,
                                                                                   capsys):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(two_step_run[0], run)
    sizes = two_step_run[1]
    # one byte less than the largest checkpoint file: everything written before it (run config,
    # metrics, the checkpoint's smaller files) fits, the largest file does not
    largest = max(sizes, key=sizes.get)
    limit = sizes[largest] - 1
    assert sorted(sizes.values())[-2] < limit and os.path.getsize(os.path.join(run, "config.json")) < limit
    proc = start([sys.executable, "-m", "scorekit", "train", "--out", run, "--resume", "--steps", "4"],
                 preexec_fn=file_size_limit(limit))
    code, _, err = finish(proc)
    assert code == 2, err
    line = one_error_line(err)
    assert line == (f"scorekit: error: cannot write checkpoint step-0000004 into "
                    f"{os.path.join(run, 'checkpoints')}: File too large (the disk is full or a "
                    f"file-size limit is set); the previous checkpoint step-0000002 is intact"), line
    assert open(os.path.join(run, "latest")).read().strip() == "checkpoints/step-0000002"
    assert load_checkpoint(run).step == 2 and [s for s, _ in list_checkpoints(run)] == [2]
    assert not hidden_entries(run)

    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", "4",
                                       "--no-progress"])
    assert code == 0 and "trained to step 4" in out, err
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]


@pytest.mark.parametrize("earlier", [False, True])
def test_a_full_disk_while_sampling_is_one_line_and_leaves_no_files(two_step_run, tmp_path, earlier):
    """The .npz fits under the limit, the PNG does not: one line naming the PNG, and the new .npz
    is not kept. Outputs of an earlier run under the same name stay as they were, both of them."""
    out = tmp_path / "out"
    out.mkdir()
    if earlier:
        (out / "x.png").write_bytes(b"an earlier png")
        (out / "x.npz").write_bytes(b"an earlier npz")
    proc = start([sys.executable, "-m", "scorekit", "sample", two_step_run[0], "--num", "20", "--steps",
                  "2", "--no-progress", "--out", str(out / "x.png")], preexec_fn=file_size_limit(4000))
    code, _, err = finish(proc)
    assert code == 2, err
    line = one_error_line(err)
    assert f"cannot write {out / 'x.png'}: File too large (the disk is full" in line, line
    if earlier:
        assert sorted(os.listdir(out)) == ["x.npz", "x.png"]
        assert (out / "x.png").read_bytes() == b"an earlier png" and (out / "x.npz").read_bytes() == b"an earlier npz"
    else:
        assert os.listdir(out) == []


class SafetensorError(Exception):
    """Named as safetensors' error class, which :func:`scorekit.errors.write_failure` recognises by name."""


@pytest.mark.parametrize("message", [
    "Error while serializing: I/O error: File too large (os error 27)",                  # safetensors 0.8
    'Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, message: "File too large" })',  # 0.4
])
def test_write_failure_reads_the_system_error_in_both_safetensors_formats(message):
    """safetensors reports a failed write as its own error with the OS error code in its text; the
    format changed between releases, and both give the same cause. Another of its errors is none."""
    from scorekit.errors import write_failure

    assert write_failure(SafetensorError(message)) == (
        f"{os.strerror(errno.EFBIG)} (the disk is full or a file-size limit is set)")
    assert write_failure(SafetensorError("Error while serializing: invalid dtype")) is None
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device (the disk is full)")


APPEND_UNTIL_FULL = textwrap.dedent("""\
    import sys
    from scorekit.errors import FileWriteError
    from scorekit.train.logging import MetricsLog
    log = MetricsLog(sys.argv[1])
    for step in range(1, 10 ** 6):
        try:
            log.append({"step": step, "loss": 0.125, "note": "x" * 50})
        except FileWriteError as err:
            print(err)
            break
    """)


def test_a_full_disk_cuts_the_half_written_metrics_line_back_off(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    proc = start([sys.executable, "-c", APPEND_UNTIL_FULL, path], preexec_fn=file_size_limit(1000))
    code, out, err = finish(proc)
    assert code == 0, err
    assert out.strip() == f"cannot write {path}: File too large (the disk is full or a file-size limit is set)"
    text = open(path).read()
    rows = read_metrics(path)
    assert text.endswith("\n") and len(text.splitlines()) == len(rows) > 1   # only complete lines
    assert os.path.getsize(path) <= 1000 and [r["step"] for r in rows] == list(range(1, len(rows) + 1))


def test_sigterm_stops_other_commands_like_ctrl_c_without_leaving_files(two_step_run, tmp_path):
    """SIGTERM during ``scorekit sample``: exit status 143, one line, no output files (before,
    the process died at once, leaving whatever it was writing)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = start([sys.executable, "-m", "scorekit", "sample", two_step_run[0], "--sampler", "ddpm",
                  "--steps", "1000", "--num", "4000", "--out", str(out / "x.png")])
    assert proc.stderr.read(1)                            # the progress bar: sampling has begun
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143, err
    assert err.strip().splitlines()[-1].endswith("scorekit: interrupted (SIGTERM)") and "Traceback" not in err
    assert os.listdir(out) == []
