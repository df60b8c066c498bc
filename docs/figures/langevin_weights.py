"""Draw docs/images/langevin-weights.png: plain Langevin, annealed Langevin and the reverse SDE on
a two-mode 1-D mixture with weights 0.2 / 0.8, against the true density.

Run from the repository root:  python docs/figures/langevin_weights.py   (about half a minute on
one core). Prints the weight each sampler gives the right-hand mode.
"""
import math
import os

import numpy as np
import torch

from scorekit import VESDE, annealed_langevin, langevin, make_timesteps, reverse_sde
from scorekit.metrics.distribution import mode_weight_stderr, mode_weights
from scorekit.plotting import _new_figure, save_figure
from scorekit.toy import GaussianMixture

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "images", "langevin-weights.png")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def main() -> None:
    torch.set_num_threads(1)
    mix = GaussianMixture([0.2, 0.8], [[-5.0], [5.0]], stds=1.0)
    n = 5000
    x_init = 20 * torch.rand(n, 1, generator=gen(0), dtype=torch.float64) - 10     # uniform on [-10, 10]

    plain = langevin(mix.score, x_init, step_size=0.1, num_steps=300, generator=gen(1))
    sigmas = torch.logspace(math.log10(20), math.log10(0.1), 20, dtype=torch.float64).tolist()
    annealed = annealed_langevin(lambda x, sigma: mix.score(x, 1.0, sigma), x_init, sigmas,
                                 steps_per_sigma=50, epsilon=0.002, generator=gen(2))
    p = VESDE(0.01, 50.0)
    x_T = p.prior_sample((n, 1), generator=gen(3), dtype=torch.float64)
    sde = reverse_sde(mix.denoiser(p), p, x_T, make_timesteps(p, 200, "log_snr"), generator=gen(4))

    grid = torch.linspace(-10, 10, 801, dtype=torch.float64)[:, None]
    density = mix.log_prob(grid).exp().numpy()
    se = mode_weight_stderr(mix, n)[1].item()
    panels = [("plain Langevin (300 steps)", plain),
              ("annealed Langevin (20 levels x 50 steps)", annealed),
              ("reverse SDE, VE (200 steps)", sde)]
    fig = _new_figure((11, 3.2))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (title, x) in zip(axes, panels):
        w = mode_weights(x, mix)[1].item()
        print(f"{title}: weight of the right mode {w:.3f} (true 0.800, standard error {se:.3f})")
        ax.hist(x.numpy().ravel(), bins=np.linspace(-10, 10, 81), density=True, color="#1f6fb4",
                alpha=0.6, label="samples")
        ax.plot(grid.numpy().ravel(), density, color="#4d4d4d", lw=1.5, label="true density")
        ax.set_title(f"{title}\nright-mode weight {w:.2f} (true 0.80)", fontsize=9)
        ax.set_xlabel("x")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8, loc="upper left")
    save_figure(fig, OUT)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
