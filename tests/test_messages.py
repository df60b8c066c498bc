"""Every message speaks its reader's interface: the library names Python arguments
(``resume=True``), the command line names its flags (``--resume``), never the other's."""
import ast
import pathlib
import re

import pytest
import torch

from cli_helpers import assert_one_line_error, run_main
from scorekit import ScorekitError
from scorekit.train import TrainConfig, load_checkpoint, train

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "scorekit"
FLAG = re.compile(r"(?<![\w-])--[a-z]")                     # --resume, --out, ...
ARGUMENT = re.compile(r"\b[a-z_]+=(True|False|None|'|\"|\w+\()")   # resume=True, device='cpu', ...


def raised_messages():
    """``(where, python message, cli message)`` of every ScorekitError the library raises with a
    literal message: the string pieces of the message and of its ``cli=`` keyword."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "cli":         # the command line's own messages
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "func", None)
            name = getattr(name, "id", getattr(name, "attr", None))
            if isinstance(node, ast.Call) and name in ("ScorekitError", "FileWriteError") and node.args:
                def text(expr):
                    return "".join(n.value for n in ast.walk(expr)
                                   if isinstance(n, ast.Constant) and isinstance(n.value, str))
                cli = [text(k.value) for k in node.keywords if k.arg == "cli"]
                found.append((f"{path.relative_to(SRC)}:{node.lineno}", text(node.args[0]),
                              cli[0] if cli else None))
    return found


def test_library_messages_name_no_command_line_flags_and_cli_variants_no_python_arguments():
    found = raised_messages()
    assert len(found) > 100 and sum(cli is not None for _, _, cli in found) >= 10
    for where, python, cli in found:
        assert not FLAG.search(python), f"{where}: {python!r} names a command-line flag"
        if cli is not None:
            assert not ARGUMENT.search(cli), f"{where}: {cli!r} names a Python argument"


def flag_strings_outside_cli_texts():
    """``where: text`` of every string in the library (the command line's package aside) that names a
    flag but is neither a docstring, nor inside a keyword argument or an assignment whose name holds
    ``cli``: pieces of messages built before the raise, which the scan above cannot see."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text())
        exempt = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant):
                exempt.add(id(body[0].value))                       # a docstring
            cli_text = (isinstance(node, ast.keyword) and "cli" in (node.arg or "")) or (
                isinstance(node, ast.Assign) and any("cli" in getattr(t, "id", "") for t in node.targets))
            if cli_text:
                exempt.update(id(n) for n in ast.walk(node.value))
        found += [f"{path.relative_to(SRC)}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in exempt
                  and FLAG.search(n.value)]
    return found


def test_no_library_string_names_a_flag_outside_a_cli_text():
    assert flag_strings_outside_cli_texts() == []


def speaks_python(message):
    assert not FLAG.search(message), message


def speaks_cli(message):
    assert not ARGUMENT.search(message) and "()" not in message, message


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("messages") / "run")
    train(TrainConfig(data="moons", data_options={"n": 64}, model="mlp",
                      model_options={"hidden": 8, "depth": 1}, steps=1, batch_size=8,
                      sample_num=8, sample_steps=2), folder, progress=False)
    return folder


def test_a_used_run_folder_says_resume_true_in_python_and_dash_dash_resume_on_the_command_line(
        run, capsys):
    with pytest.raises(ScorekitError, match="already holds a training run") as info:
        train(TrainConfig(data="moons"), run, progress=False)
    assert "resume=True" in str(info.value) and "out_dir" in str(info.value)
    speaks_python(str(info.value))
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--out", run, "--no-progress"])
    assert_one_line_error(code, err, "already holds a training run", "--resume", "--out")
    speaks_cli(err)


def test_a_missing_checkpoint_folder(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ScorekitError, match="does not exist") as info:
        load_checkpoint(missing)
    assert "out_dir of scorekit.train.train" in str(info.value)
    speaks_python(str(info.value))
    code, _, err = run_main(capsys, ["info", missing])
    assert_one_line_error(code, err, "does not exist", "the --out of scorekit train")


def test_a_missing_tuned_schedule(run, capsys, tmp_path):
    from scorekit.schedule_tuning import load_tuned

    with pytest.raises(ScorekitError, match="no tuned schedule for ddim at NFE 3") as info:
        load_tuned(run, "ddim", 3)
    assert "save_tuned(" in str(info.value) and "tune_timesteps(" in str(info.value)
    speaks_python(str(info.value))
    code, _, err = run_main(capsys, ["sample", run, "--steps", "3", "--spacing", "tuned", "--no-progress",
                                     "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, "no tuned schedule for ddim at NFE 3", "scorekit tune", "--nfe 3")
    speaks_cli(err)


def test_learned_variances_of_a_model_without_a_variance_head(run, capsys, tmp_path):
    from scorekit.samplers import ddpm
    from scorekit.train import checkpoint_denoiser

    ckpt = load_checkpoint(run)
    with pytest.raises(ScorekitError, match="variance head") as info:
        ddpm(checkpoint_denoiser(ckpt), ckpt.process, torch.zeros(2, 2), None,
             generator=torch.Generator().manual_seed(0), variance="learned")
    assert "variance='learned'" in str(info.value)
    speaks_python(str(info.value))
    code, _, err = run_main(capsys, ["sample", run, "--sampler", "ddpm", "--variance", "learned",
                                     "--steps", "2", "--no-progress", "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, "--variance learned needs a model trained with --variance learned")
    speaks_cli(err)


@pytest.mark.parametrize("flags, python, cli", [
    (["--batch-size", "10", "--grad-accum", "3"], "batch_size 10 must be a multiple of grad_accum 3",
     "--batch-size 10 must be a multiple of --grad-accum 3"),
    (["--label-dropout", "0.25"], "label_dropout=0.25 needs labelled data",
     "--label-dropout 0.25 needs labelled data"),
])
def test_training_settings_are_named_as_the_caller_gave_them(tmp_path, capsys, flags, python, cli):
    from scorekit.cli import build_parser
    from scorekit.cli.train import train_config

    argv = ["train", "--data", "swiss_roll", "--data-option", "n=64", "--steps", "1", *flags,
            "--no-progress", "--out", str(tmp_path / "run")]           # unlabelled 2-D points
    with pytest.raises(ScorekitError) as info:             # the same settings through Python
        train(train_config(build_parser().parse_args(argv)), str(tmp_path / "run"), progress=False)
    assert python in str(info.value)
    speaks_python(str(info.value))
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, cli)
    speaks_cli(err)
    assert not (tmp_path / "run").exists()
