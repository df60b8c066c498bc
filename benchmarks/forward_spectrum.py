"""The forward process destroys high frequencies first: power spectra of noised CIFAR-10 images.

    .venv/bin/python benchmarks/forward_spectrum.py              # 2,000 images, about a minute on one core
    .venv/bin/python benchmarks/forward_spectrum.py --num 10000 --times 0,10,50,100,200,400,700,999

Data: the CIFAR-10 test images (``../shared/data/cifar10-test-jpg.tar.gz``, 10,000 RGB 32x32,
stored as JPEG), ``--num`` of them evenly spaced through the file (so every class is in), scaled
to [-1, 1] as scorekit trains on them.

For each DDPM beta schedule of ``--schedules`` (T = 1000; ``linear`` is ``scorekit.DDPM()``'s
default, ``cosine`` the trainer's default for ``process="ddpm"``) and each step t of ``--times``:

1. draw ``x_t = alpha_t x_0 + sigma_t eps`` once per image (``process.sample_marginal``, one
   generator per schedule, seeded from ``--seed``) and measure the radially averaged power spectrum of ``x_t``
   (``scorekit.spectrum.radial_power_spectrum``: orthonormal 2-D FFT per channel, ``|F|^2``
   averaged over images, channels and the frequencies of each bin of width 1/32 cycle per pixel;
   the mean is kept, so bin 0 is ``k = 0``, the mean brightness);
2. compare it with the closed form ``alpha_t^2 P_0(k) + sigma_t^2`` (``forward_spectrum``, with
   ``P_0`` measured on the same clean images) in units of its Monte-Carlo standard error
   ``sigma_t sqrt((2 sigma_t^2 + 4 alpha_t^2 P_0) / (m n))`` (``spectrum_stderr``; ``m``
   frequencies in the bin, ``n`` = 3 x num image channels): the largest |z| and the chi-square
   statistic sum z^2 over the bins with its degrees of freedom;
3. by the closed form, the share of the 1,024 frequencies whose SNR is below 1 at t, and their
   share of the clean images' power about each image's mean (all bins but k = 0).

Then, per schedule and frequency band, the step at which the band's signal-to-noise ratio
``SNR_t(k) = alpha_t^2 P_0(k) / sigma_t^2`` falls to 1 (``band_loss_time``; the noise scale
``sigma_t / alpha_t`` equals the band's amplitude ``sqrt(P_0(k))`` there), and a direct check of
it: images noised at exactly that (fractional) step, whose measured power in the band should be
``2 sigma_t^2`` (signal and noise equal), reported as measured / (2 sigma_t^2) and in standard
errors.

Writes ``forward-spectrum.json`` and ``.md`` into ``--out`` (default ``benchmarks/results/``),
and two figures: ``--figure`` (default ``docs/images/forward-spectrum.png``: the spectra of x_t
under the first schedule, measured points on the closed-form curves with each flat noise floor
sigma_t^2 dashed; SNR per band against t; the step at which each band's SNR crosses 1 against
its frequency) and ``--strip`` (default ``docs/images/forward-spectrum-strip.png``: one image
at the same steps, and below it the low-pass and high-pass parts of each x_t, split at
``--cutoff`` cycles per pixel, which add up to it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_quality import ROOT, finite, load_average, log, write_report  # noqa: E402
from scorekit import DDPM  # noqa: E402
from scorekit.processes import BETA_SCHEDULES  # noqa: E402
from scorekit.data import load_dataset  # noqa: E402
from scorekit.plotting import _new_figure, save_figure  # noqa: E402
from scorekit.spectrum import (band_loss_time, forward_spectrum, radial_bins, radial_power_spectrum,  # noqa: E402
                               spectrum_stderr)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.tar.gz"
#: the bands drawn in the SNR panel (in units of 1/32 cycle per pixel)
SNR_BANDS = (1, 2, 4, 8, 16, 22)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


# --- measuring ------------------------------------------------------------------------------------

def load_images(path: Path, num: int) -> tuple[torch.Tensor, list[int]]:
    data = load_dataset(f"folder:{path}", progress=False)
    total = data.x.shape[0]
    if not 1 <= num <= total:
        raise SystemExit(f"--num must lie in 1 .. {total} (the images in {path}), got {num}")
    index = [i * total // num for i in range(num)]              # evenly spaced: every class
    return data.x[index].to(torch.float64), index


def chi_square(z: torch.Tensor) -> dict:
    from scipy.stats import chi2

    stat, dof = float((z ** 2).sum()), z.numel()
    return {"max_abs_z": float(z.abs().max()), "chi2": stat, "dof": dof,
            "chi2_p_upper": float(chi2.sf(stat, dof))}


def measure_schedule(name: str, x0: torch.Tensor, p0, counts, times: list[int], seed: int) -> dict:
    process = DDPM(schedule=name)
    n = x0.shape[0] * x0.shape[1]
    g = torch.Generator().manual_seed(seed)
    predicted = forward_spectrum(process, times, p0)
    alpha, sigma = process.alpha(predicted.t), process.sigma(predicted.t)
    stderr = spectrum_stderr(p0, counts, n, alpha=alpha, sigma=sigma)
    # the share of the frequencies, and of the clean images' power about their mean (k != 0),
    # that lies in bands whose SNR is already below 1 at each t
    lost = (predicted.snr < 1).to(torch.float64)
    weights = counts.to(torch.float64)
    lost_frequencies = (lost * weights).sum(1) / weights.sum()
    lost_power = (lost * weights * p0.power)[:, 1:].sum(1) / (weights * p0.power)[1:].sum()
    rows = []
    for i, t in enumerate(times):
        measured = radial_power_spectrum(process.sample_marginal(x0, t, generator=g)).power
        z = (measured - predicted.power[i]) / stderr[i]
        rows.append({"t": t, "alpha": float(alpha[i]), "sigma": float(sigma[i]),
                     "measured": measured.tolist(), "predicted": predicted.power[i].tolist(),
                     "stderr": stderr[i].tolist(), "snr": predicted.snr[i].tolist(),
                     "lost_frequencies": float(lost_frequencies[i]), "lost_power": float(lost_power[i]),
                     "max_rel_dev": float(((measured - predicted.power[i]) / predicted.power[i]).abs().max()),
                     **chi_square(z)})
    z_all = torch.tensor([(m - p) / s for r in rows for m, p, s in zip(r["measured"], r["predicted"], r["stderr"])])

    # when each band is lost, and a direct check at that step
    loss_t = band_loss_time(process, p0)
    checks = []
    for j, t in enumerate(loss_t.tolist()):
        if not (process.t_min <= t <= process.t_max):
            checks.append(None)
            continue
        measured = radial_power_spectrum(process.sample_marginal(x0, t, generator=g)).power[j]
        sigma2 = float(process.sigma(t)) ** 2
        se = float(spectrum_stderr(p0.power[j:j + 1], counts[j:j + 1], n, alpha=process.alpha(t),
                                   sigma=process.sigma(t))[0, 0])
        checks.append({"ratio": float(measured) / (2 * sigma2), "z": (float(measured) - 2 * sigma2) / se})
    return {"schedule": name, "rows": rows, "all": chi_square(z_all), "loss_t": loss_t.tolist(),
            "loss_check": checks}


def split_frequencies(x: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The low-pass (|k| <= cutoff) and high-pass parts of images; they add up to ``x``."""
    h, w = x.shape[-2:]
    ky, kx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    keep = (ky[:, None] ** 2 + kx[None, :] ** 2 <= cutoff ** 2).to(torch.float64)
    low = torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * keep).real
    return low, x - low


# --- figures and the report -----------------------------------------------------------------------

def spectrum_figure(report: dict, path: Path) -> None:
    from matplotlib import cm

    freq = np.array(report["frequency"])
    k = freq[1:]                                     # k = 0 has no place on a log axis
    first = report["schedules"][0]
    fig = _new_figure((17, 5.2))
    ax_spec, ax_snr, ax_loss = fig.subplots(1, 3)
    colours = cm.viridis(np.linspace(0, 0.92, len(first["rows"])))
    for row, colour in zip(first["rows"], colours):
        ax_spec.plot(k, row["predicted"][1:], "-", color=colour, lw=1.4)
        ax_spec.plot(k, row["measured"][1:], "o", color=colour, ms=3.5,
                     label=f"t = {row['t']}  ($\\sigma_t^2$ = {row['sigma'] ** 2:.2g})")
        ax_spec.axhline(row["sigma"] ** 2, color=colour, ls="--", lw=0.9)
    ax_spec.plot(k, report["p0"][1:], "k:", lw=1.2, label="clean $P_0(k)$")
    ax_spec.set(xscale="log", yscale="log", xlabel="|k| (cycles per pixel)", ylabel="mean $|F(x_t)|^2$",
                title=f"Spectrum of $x_t$, DDPM {first['schedule']} (T = 1000)\n"
                      "points measured, lines $\\alpha_t^2 P_0 + \\sigma_t^2$, dashed: noise floor $\\sigma_t^2$")
    ax_spec.legend(fontsize=7.5, loc="lower left")

    band_colours = cm.plasma(np.linspace(0, 0.85, len(SNR_BANDS)))
    styles = ["-", "--", ":"]
    steps = torch.arange(1000)
    for s, sched in enumerate(report["schedules"]):
        snr = forward_spectrum(DDPM(schedule=sched["schedule"]), steps, report["p0"]).snr
        for band, colour in zip(SNR_BANDS, band_colours):
            if band >= len(freq):
                continue
            label = f"|k| = {band}/32" if s == 0 else None
            ax_snr.plot(steps.numpy(), snr[:, band].numpy(), styles[s % 3], color=colour, lw=1.3, label=label)
            if s == 0:
                # measured SNR (P_t - sigma^2) / sigma^2 where it stands 3 standard errors above 0
                keep = [(r["t"], (r["measured"][band] - r["sigma"] ** 2) / r["sigma"] ** 2)
                        for r in sched["rows"] if r["measured"][band] - r["sigma"] ** 2 > 3 * r["stderr"][band]]
                ax_snr.plot([t for t, _ in keep], [v for _, v in keep], "o", color=colour, ms=3.5)
    ax_snr.axhline(1.0, color="grey", lw=0.8)
    names = ", ".join(f"{sched['schedule']} {('solid', 'dashed', 'dotted')[s % 3]}"
                      for s, sched in enumerate(report["schedules"]))
    ax_snr.set(yscale="log", ylim=(1e-4, 1e5), xlim=(0, 1000), xlabel="step t",
               ylabel="$SNR_t(k) = \\alpha_t^2 P_0(k) / \\sigma_t^2$",
               title=f"SNR per frequency band ({names})\npoints: measured $(P_t - \\sigma_t^2) / \\sigma_t^2$"
                     f", {report['schedules'][0]['schedule']} (where > 3 s.e.)")
    ax_snr.legend(fontsize=7.5, loc="upper right")

    for s, sched in enumerate(report["schedules"]):
        loss = np.array([np.nan if v is None else v for v in finite(sched["loss_t"])], dtype=float)
        ax_loss.plot(k, loss[1:], "o" + styles[s % 3], ms=3.5, lw=1.2, label=f"DDPM {sched['schedule']}")
    ax_loss.axhline(0, color="grey", lw=0.8)
    ax_loss.set(xscale="log", xlabel="|k| (cycles per pixel)", ylabel="step t at which $SNR_t(k) = 1$",
                title="When each band is lost: high frequencies first\n(k = 0, the mean brightness: t = "
                      + ", ".join(f"{sched['loss_t'][0]:.0f} {sched['schedule']}" for sched in report["schedules"])
                      + ")")
    ax_loss.legend(fontsize=8)
    for ax in (ax_spec, ax_loss):                    # ticks at 1/32, 1/16, ... cycles per pixel
        ticks = [2.0 ** -e for e in range(5, 0, -1)]
        ax.set_xticks(ticks, [f"1/{2 ** e}" for e in range(5, 0, -1)])
        ax.set_xticks([], minor=True)
    save_figure(fig, path, dpi=110)


def strip_figure(x0: torch.Tensor, times: list[int], schedule: str, cutoff: float, seed: int,
                 path: Path) -> None:
    process = DDPM(schedule=schedule)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    columns = [x0] + [process.sample_marginal(x0, t, noise) for t in times]
    lows, highs = zip(*(split_frequencies(c, cutoff) for c in columns))
    fig = _new_figure((1.25 * len(columns), 4.1))
    axes = fig.subplots(3, len(columns))
    for c in range(len(columns)):
        for r, (image, label) in enumerate(((columns[c], "$x_t$"), (lows[c], f"|k| ≤ {cutoff:g}"),
                                            (highs[c], f"|k| > {cutoff:g}"))):
            ax = axes[r, c]
            ax.imshow(((image[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
        axes[0, c].set_title("$x_0$" if c == 0 else f"t = {times[c - 1]}", fontsize=9)
    fig.suptitle(f"One CIFAR-10 test image under DDPM {schedule}: low-pass + high-pass = $x_t$ "
                 "(all shown on [-1, 1])", fontsize=9)
    save_figure(fig, path, dpi=110)


def markdown(report: dict) -> str:
    s = report["settings"]
    freq = report["frequency"]
    lines = [f"# Forward process and frequencies: {s['num']} CIFAR-10 test images", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; {report['machine']}; "
             f"{report['wall_s']} s", "",
             "## Measured spectrum of x_t against alpha_t^2 P_0 + sigma_t^2", "",
             "| schedule | t | alpha_t | sigma_t^2 | max \\|z\\| | chi2 / dof | max \\|measured / predicted - 1\\| "
             "| frequencies with SNR < 1 | their share of the power (k != 0) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sched in report["schedules"]:
        for r in sched["rows"]:
            lines.append(f"| {sched['schedule']} | {r['t']} | {r['alpha']:.4f} | {r['sigma'] ** 2:.4g} | "
                         f"{r['max_abs_z']:.2f} | {r['chi2']:.1f} / {r['dof']} | {r['max_rel_dev']:.2%} | "
                         f"{r['lost_frequencies']:.1%} | {r['lost_power']:.1%} |")
        a = sched["all"]
        lines.append(f"| {sched['schedule']} | all | | | {a['max_abs_z']:.2f} | {a['chi2']:.1f} / {a['dof']} "
                     f"(p = {a['chi2_p_upper']:.2f}) | | | |")
    lines += ["", "## The step at which each band's SNR falls to 1", "",
              "| \\|k\\| (cycles/pixel) | frequencies | P_0(k) | amplitude sqrt(P_0) | "
              + " | ".join(f"t ({sched['schedule']}) | check: measured / 2 sigma^2 (z)"
                           for sched in report["schedules"]) + " |",
              "|---" * (4 + 2 * len(report["schedules"])) + "|"]
    for j, f in enumerate(freq):
        cells = []
        for sched in report["schedules"]:
            t = sched["loss_t"][j]
            check = sched["loss_check"][j]
            cells.append("never" if t is None or not math.isfinite(t) else f"{t:.1f}")
            cells.append("" if check is None else f"{check['ratio']:.3f} ({check['z']:+.1f})")
        lines.append(f"| {f:.4f} | {report['counts'][j]} | {report['p0'][j]:.4g} | "
                     f"{math.sqrt(report['p0'][j]):.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="image folder or tar archive (the CIFAR-10 test images)")
    parser.add_argument("--num", type=int, default=2000,
                        help="images used, evenly spaced through the data (10000: all of CIFAR-10's test set)")
    parser.add_argument("--times", type=int_list, default=[0, 50, 100, 200, 400, 700, 999],
                        help="DDPM steps t (0 .. 999) at which x_t is measured")
    parser.add_argument("--schedules", type=name_list, default=["linear", "cosine"],
                        help="DDPM beta schedules (T = 1000); the first is drawn in the spectrum panel")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--cutoff", type=float, default=0.125,
                        help="low-pass / high-pass split of the strip figure, cycles per pixel")
    parser.add_argument("--strip-image", type=int, default=7,
                        help="which of the --num images the strip figure shows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "forward-spectrum.png",
                        help="the spectra figure")
    parser.add_argument("--strip", type=Path, default=ROOT / "docs" / "images" / "forward-spectrum-strip.png",
                        help="the image-strip figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if not args.times or not all(0 <= t <= 999 for t in args.times):
        parser.error(f"--times must lie in 0 .. 999, got {args.times}")
    unknown = [name for name in args.schedules if name not in BETA_SCHEDULES]
    if unknown or not args.schedules:
        parser.error(f"--schedules: choose from {', '.join(BETA_SCHEDULES)}, got {args.schedules}")
    if not 0 <= args.strip_image < args.num:
        parser.error(f"--strip-image must lie in 0 .. {args.num - 1} (one of the --num images)")
    torch.set_num_threads(args.threads)
    start = time.time()

    log(f"loading {args.num} images from {args.data}")
    x0, index = load_images(args.data, args.num)
    p0 = radial_power_spectrum(x0)
    counts = radial_bins(*x0.shape[-2:]).counts
    report = {"settings": {"data": str(args.data), "num": args.num, "times": args.times,
                           "schedules": args.schedules, "seed": args.seed, "cutoff": args.cutoff},
              "command": " ".join(["benchmarks/forward_spectrum.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}, {args.threads} thread(s), load {load_average()}",
              "frequency": p0.frequency.tolist(), "counts": counts.tolist(), "p0": p0.power.tolist(),
              "mean_square": float((x0 ** 2).mean()), "schedules": []}
    for i, name in enumerate(args.schedules):
        log(f"schedule {name}")
        report["schedules"].append(measure_schedule(name, x0, p0, counts, args.times, args.seed + 1000 * i))
    report["wall_s"] = round(time.time() - start, 1)

    for path in (args.figure, args.strip):
        path.parent.mkdir(parents=True, exist_ok=True)
    spectrum_figure(report, args.figure)
    strip_figure(x0[args.strip_image:args.strip_image + 1], args.times, args.schedules[0], args.cutoff,
                 args.seed, args.strip)
    log(f"wrote {args.figure} and {args.strip}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, "forward-spectrum", finite(report), markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
