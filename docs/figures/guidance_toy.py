"""Draw docs/images/guidance-toy.png: classifier-free and classifier guidance of the exact model
of a labelled 2-D mixture (eight Gaussians on a ring, alternating classes), class 1 requested.

Run from the repository root:  python docs/figures/guidance_toy.py   (about a minute on one core).
Prints, for each scale, the mean probability the exact clean classifier gives class 1. The two rows
agree: with exact models, D(c) - D(null) = (sigma^2 / alpha) grad log p(c | x_t), so classifier-free
guidance at weight w is classifier guidance with the exact classifier at scale w.
"""
import os

import torch

import scorekit
from scorekit import DDPM, Denoiser
from scorekit.plotting import _new_figure, save_figure, square_limits
from scorekit.toy import labelled_eight_gaussians

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "images", "guidance-toy.png")
SCALES = (0.0, 1.0, 3.0, 8.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def main() -> None:
    torch.set_num_threads(1)
    lm = labelled_eight_gaussians(2, radius=2.0, std=0.45)
    process = DDPM(schedule="cosine")
    n = 1500
    x_T = process.prior_sample((n, 2), generator=gen(0), dtype=torch.float64)
    conditional = Denoiser(lm.model(process, "eps"), process, "eps")
    unconditional = Denoiser(lm.mixture.eps_model(process), process, "eps")
    data, labels = lm.sample(4000, generator=gen(1), dtype=torch.float64)
    rows = [("classifier-free guidance, w =", lambda w: dict(guidance_scale=w), conditional),
            ("classifier guidance (exact classifier), s =",
             lambda s: dict(classifier=lm.classifier(process), classifier_scale=s), unconditional)]
    fig = _new_figure((12, 6.2))
    axes = fig.subplots(2, len(SCALES), sharex=True, sharey=True)
    limits = square_limits(data.numpy())
    for r, (title, options, model) in enumerate(rows):
        for c, scale in enumerate(SCALES):
            x = scorekit.sample(model, x_T, sampler="ddim", num_steps=50, condition=1, **options(scale))
            fidelity = lm.log_class_posterior(x)[:, 1].exp().mean().item()
            print(f"{title} {scale:g}: mean p(class 1 | x) {fidelity:.3f}")
            ax = axes[r, c]
            ax.scatter(*data[labels == 0].T.numpy(), s=2, color="#c8c8c8", alpha=0.5)
            ax.scatter(*data[labels == 1].T.numpy(), s=2, color="#f2b8a2", alpha=0.5)
            ax.scatter(*x.T.numpy(), s=2, color="#1f6fb4", alpha=0.6)
            ax.set_xlim(*limits[0])
            ax.set_ylim(*limits[1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title} {scale:g}\nmean p(class 1 | x) = {fidelity:.2f}", fontsize=9)
    fig.suptitle("exact model of 8 Gaussians (grey: class 0, orange: class 1); blue: samples for class 1",
                 fontsize=10)
    save_figure(fig, OUT)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
