"""What evaluating the network in bfloat16 (``precision="bf16"``) changes in the samples.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_bf16.py [--n 1000] [--run RUN]

Each sampler runs from one x_T (float32) twice, with the network in float32 and under bfloat16
autocast (``scorekit.sample(..., precision="bf16")``); the sampler's state and steps are float32
in both. Reported: mean and largest |x_bf16 - x_fp32| over all coordinates, the mean relative to
the samples' mean |x_fp32| in units of bfloat16's unit roundoff u = 2^-8, and the share of samples
that moved by more than 0.1 (a sample that changed mode). Two networks:

* the exact eps-prediction of ``scorekit.toy.image_mixture`` (3x8x8, DDPM linear) computed in
  float32 (``x0_model(process, torch.float32)``), so that autocast reaches its matrix products
  (the sums over components) and nothing else;
* the "tiny" U-Net (random weights, its output layer too, 1x8x8, DDPM linear), or with ``--run``
  a trained run's EMA network on its own data shape and process.

Samplers: DDIM (eta 0) at 50 steps and DPM-Solver++(2M) at 20 steps, trailing grids.
"""
from __future__ import annotations

import argparse
import time

import torch

import scorekit
from scorekit import DDPM, Denoiser
from scorekit.models import build_model, preset
from scorekit.toy import image_mixture

SETTINGS = (("ddim", 50), ("dpmpp_2m", 20))
U = 2.0 ** -8


def compare(model, process, x_T: torch.Tensor) -> list[str]:
    rows = []
    for sampler, steps in SETTINGS:
        kwargs = dict(process=process, sampler=sampler, num_steps=steps)
        begun = time.perf_counter()
        fp32 = scorekit.sample(model, x_T, **kwargs)
        bf16 = scorekit.sample(model, x_T, precision="bf16", **kwargs)
        seconds = time.perf_counter() - begun
        diff = (bf16 - fp32).abs()
        mean = diff.mean().item()
        moved = (diff.reshape(diff.shape[0], -1).amax(1) > 0.1).float().mean().item()
        rows.append(f"| {sampler} | {steps} | {mean:.2e} | {diff.max().item():.2e} | "
                    f"{mean / fp32.abs().mean().item() / U:.2f} | {100 * moved:.1f} % | {seconds:.1f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per setting (mixture)")
    parser.add_argument("--unet-n", type=int, default=64, help="samples per setting (U-Net)")
    parser.add_argument("--run", help="a trained run whose EMA network replaces the random U-Net")
    args = parser.parse_args()
    torch.set_num_threads(1)
    process = DDPM()
    header = ["| sampler | steps | mean abs diff | max abs diff | mean rel. diff / u | moved > 0.1 | time |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    mix = image_mixture()
    x_T = process.prior_sample((args.n, *mix.event_shape), generator=torch.Generator().manual_seed(0))
    model = Denoiser(mix.eps_model(process, torch.float32), process, "eps")
    print(f"exact mixture (image_mixture, 3x8x8, float32 arithmetic), n = {args.n}")
    print("\n".join(header + compare(model, process, x_T)), flush=True)

    if args.run:
        model = scorekit.load_denoiser(args.run)
        process, shape, what = model.process, model.checkpoint.sample_shape, f"EMA network of {args.run}"
    else:
        torch.manual_seed(0)
        net = build_model(preset("tiny", in_channels=1)).eval()
        torch.nn.init.normal_(net.conv_out.weight, std=0.05)      # it starts at zero, as in DDPM
        model, shape, what = Denoiser(net, process, "eps"), (1, 8, 8), "tiny U-Net, random weights, 1x8x8"
    x_T = process.prior_sample((args.unet_n, *shape), generator=torch.Generator().manual_seed(0))
    print(f"\n{what}, n = {args.unet_n}")
    print("\n".join(header + compare(model, process, x_T)), flush=True)


if __name__ == "__main__":
    main()
