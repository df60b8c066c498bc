"""benchmarks/image_tasks.py's choices that decide which model a task starts from and how long it
trains (the benchmark itself runs for hours; its --quick path is too slow for the suite)."""
import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("image_tasks", BENCHMARKS / "image_tasks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["image_tasks"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("image_tasks", None)
        sys.path.remove(str(BENCHMARKS))


def test_minutes_spec_gives_a_default_and_per_task_exceptions(bench):
    assert bench.minutes_spec("8") == {"default": 8.0}
    assert bench.minutes_spec("8, colorize=25,sr4=2.5") == {"default": 8.0, "colorize": 25.0, "sr4": 2.5}
    for bad in ("colorize=20", "8,paint=3", "8,sr4=0", "8,sr4=x", "8,8", "8,sr4=1,sr4=2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.minutes_spec(bad)


def test_defaults_run_every_task_and_colorize_starts_from_a_cifar_prior(bench):
    args = bench.parse_args([])
    assert args.tasks == list(bench.TASKS)
    assert args.task_init == "prior" and args.cifar_prior is None and args.cifar_prior_minutes == 60.0
    assert bench.task_minutes(args, "colorize") == 25.0 and bench.task_minutes(args, "sr4") == 8.0
    quick = bench.parse_args(["--quick"])
    assert quick.cifar_prior_minutes == quick.prior_minutes == quick.minutes["default"]


def test_each_task_starts_from_the_prior_of_its_own_images(bench):
    priors = {"mnist": {"checkpoint": "mnist-run/ckpt"}, "cifar": {"checkpoint": "cifar-run/ckpt"}}
    args = bench.parse_args([])
    for task in bench.MNIST_TASKS:
        assert bench.task_init(args, task, priors) == "mnist-run/ckpt"
    assert bench.task_init(args, "colorize", priors) == "cifar-run/ckpt"
    # no prior of a task's images: a random start, never the other data set's prior
    assert bench.task_init(args, "colorize", {"mnist": priors["mnist"]}) is None
    assert bench.task_init(args, "sr4", {"cifar": priors["cifar"]}) is None
    scratch = bench.parse_args(["--task-init", "scratch"])
    assert all(bench.task_init(scratch, t, priors) is None for t in bench.TASKS)
