"""float32 against float64: every deterministic sampler on every process, from the same x_T.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_precision.py [--n 256] [--steps 20]

The "network" is the exact x0-prediction of ``scorekit.toy.image_mixture`` (3x8x8, component
stds down to 0.005); it computes in float64 and returns the input's dtype, so every difference
between the two runs comes from the sampler's own arithmetic. Each sampler runs ``--steps`` model
times on the suite's grids (trailing for DDPM, uniform in log-SNR otherwise) from one x_T drawn in
float32, once in float32 and once in float64. Reported per process and sampler: the largest
absolute difference between the two runs, and beside it the sampler's own error, the largest
absolute difference of its float64 result from the probability-flow ODE solved from the same x_T
by DOP853 at rtol = atol = 1e-9 (``ode_adaptive``, which ends as the samplers do: at the last
model time, followed by its x0-prediction). Writes sampler-precision.json and .md to --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scorekit import DDPM, EDM, SAMPLERS, VESDE, VPSDE, SubVPSDE, make_timesteps
from scorekit.toy import image_mixture

PROCESSES = {"DDPM linear": DDPM(), "DDPM cosine": DDPM(schedule="cosine"), "VP SDE": VPSDE(),
             "sub-VP SDE": SubVPSDE(), "VE SDE": VESDE(), "EDM": EDM()}
#: every deterministic sampler (the stochastic ones in their noise-free form)
CONFIGS = {"ddim": ("ddim", {"eta": 0.0}), "ode_euler": ("ode_euler", {}), "ode_heun": ("ode_heun", {}),
           "dpmpp_2m": ("dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}), "dpmpp_2s": ("dpmpp_2s", {}),
           "dpmpp_3s": ("dpmpp_3s", {}), "unipc": ("unipc", {}), "euler": ("euler", {}),
           "euler_ancestral eta=0": ("euler_ancestral", {"eta": 0.0}), "edm_heun": ("edm_heun", {}),
           "edm s_churn=0": ("edm", {"s_churn": 0.0}), "ipndm": ("ipndm", {}), "deis": ("deis", {})}


def measure(n: int, steps: int) -> dict:
    mix = image_mixture()
    rows = {}
    for pname, process in PROCESSES.items():
        ts = make_timesteps(process, steps, None if process.discrete else "log_snr")
        x32 = process.prior_sample((n,) + mix.event_shape, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.float32)
        x64 = x32.double()
        denoiser = mix.denoiser(process)
        ode = SAMPLERS["ode_adaptive"](denoiser, process, x64, ts, method="DOP853", rtol=1e-9, atol=1e-9)
        for label, (name, options) in CONFIGS.items():
            a = SAMPLERS[name](denoiser, process, x64, ts, **options)
            b = SAMPLERS[name](denoiser, process, x32, ts, **options)
            rows.setdefault(label, {})[pname] = {"float32_vs_float64": (b.double() - a).abs().max().item(),
                                                 "error_vs_ode": (a - ode).abs().max().item()}
        print(pname, "done", flush=True)
    return rows


def markdown(report: dict) -> str:
    names = list(PROCESSES)
    lines = [f"max |float32 - float64| (the sampler's own max error against the ODE), "
             f"{report['n']} samples of image_mixture, {report['steps']} model times\n",
             "| sampler | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, row in report["rows"].items():
        cells = [f"{row[p]['float32_vs_float64']:.1e} ({row[p]['error_vs_ode']:.2g})" for p in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.time()
    report = {"n": args.n, "steps": args.steps, "rows": measure(args.n, args.steps)}
    report["wall_s"] = round(time.time() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampler-precision.json").write_text(json.dumps(report, indent=1))
    (args.out / "sampler-precision.md").write_text(markdown(report))
    print(markdown(report), f"\n{report['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
