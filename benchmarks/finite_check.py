"""The cost of ``scorekit.sample``'s NaN/Inf check (``check_finite=True``) per network evaluation.

    .venv/bin/python benchmarks/finite_check.py

Every evaluation of every sampler goes through :class:`scorekit.samplers._common.FiniteStates`,
which checks the state before and the model output after. A zero model is called bare and through
the wrapper (best of 7 runs of many calls, torch.set_num_threads(1): the best run is the one
least disturbed by other processes), and, for scale, one forward pass of the "tiny" U-Net on the
same batch. Prints one line per shape.
"""
from __future__ import annotations

import timeit

import torch

from scorekit.models import build_model, preset
from scorekit.samplers._common import FiniteStates


def best_microseconds(fn, calls: int) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=7)) / calls * 1e6


def main() -> None:
    torch.set_num_threads(1)

    def zeros(x, t):
        return torch.zeros_like(x)

    for shape in ((64, 2), (64, 3, 8, 8), (64, 3, 32, 32), (16, 1, 32, 32)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        checked = FiniteStates(zeros, "ddim")
        calls = 2000 if x.numel() < 10 ** 5 else 300
        bare = best_microseconds(lambda: zeros(x, 0.5), calls)
        wrapped = best_microseconds(lambda: checked(x, 0.5), calls)
        line = f"{shape}: check {wrapped - bare:.0f} us per evaluation"
        if len(shape) == 4:
            net = build_model(preset("tiny", in_channels=shape[1])).eval()
            t = torch.full((shape[0],), 500, dtype=torch.long)
            with torch.no_grad():
                forward = best_microseconds(lambda: net(x, t), 3)
            line += f"; tiny U-Net forward {forward / 1e3:.1f} ms ({100 * (wrapped - bare) / forward:.2f} %)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
