"""Draw docs/images/evaluation-toy.png: what FID, KID, precision and recall say about three sets
of samples of a two-cluster 2-D distribution -- a good one, one that drops a cluster, and one
that is too diffuse.

Run from the repository root:  python docs/figures/evaluation_toy.py   (a few seconds).
The points are 2-channel 1x1 "images" and the features are their pixels, so the scores are
:func:`scorekit.evaluation.evaluate`'s on the points themselves; the discs are the k-NN balls
(k = 3) whose union is the reference's manifold in the precision/recall of Kynkaenniemi et al.
"""
import os

import torch
from matplotlib.patches import Circle
from torch import nn

from scorekit.evaluation import evaluate, reference_statistics
from scorekit.metrics import ModuleExtractor, knn_radii
from scorekit.plotting import _new_figure, save_figure

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "images", "evaluation-toy.png")
CENTRES = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])


def clusters(n: int, seed: int, std: float = 0.12, which=(0, 1)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(which)[torch.randint(len(which), (n,), generator=g)]
    return CENTRES[idx] + std * torch.randn(n, 2, generator=g)


def main() -> None:
    torch.set_num_threads(1)
    extractor = ModuleExtractor(nn.Flatten(), name="points")
    n = 400
    ref = clusters(n, 0)
    stats = reference_statistics(ref[:, :, None, None], extractor)
    sets = [("close to the data", clusters(n, 1)),
            ("one cluster dropped", clusters(n, 2, which=(0,))),
            ("too diffuse", clusters(n, 3, std=0.3))]
    radii = knn_radii(ref.double(), 3)
    fig = _new_figure((13, 4.6))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, sets):
        rep = evaluate(x[:, :, None, None], stats, extractor, metrics="fid,kid,pr", fid_bootstrap=10)
        s = rep.scores
        for p, r in zip(ref.tolist(), radii.tolist()):
            ax.add_patch(Circle(p, r, color="tab:blue", alpha=0.06, lw=0))
        ax.scatter(ref[:, 0], ref[:, 1], s=4, c="tab:blue", label="reference")
        ax.scatter(x[:, 0], x[:, 1], s=4, c="tab:orange", label="samples")
        ax.set_title(f"{title}\nFID {s['fid'].value:.3f} ± {s['fid'].stderr:.3f}, KID {s['kid'].value:.4f}\n"
                     f"precision {s['precision'].value:.2f}, recall {s['recall'].value:.2f}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.0, 1.0)
        print(f"{title}: " + ", ".join(f"{k} {v.value:.4f} +- {v.stderr:.4f}" for k, v in s.items()))
    axes[0].legend(loc="lower left", fontsize=8, markerscale=3)
    fig.suptitle("Dropping a cluster lowers recall, spreading too wide lowers precision; "
                 "FID and KID mix both", fontsize=11)
    save_figure(fig, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
