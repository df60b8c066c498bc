"""Sampler defaults on evidence: each default option of the deterministic samplers against its
alternatives, picked on one batch and confirmed on a fresh one with paired per-sample statistics.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_defaults.py                     # the three mixtures
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_defaults.py --questions "dpmpp_2m_sde variant" --n 500
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_defaults.py --problems mnist --n 12 --nfes 5,10,20 \\
        --questions "dpmpp_2m variant,grid" --grid-samplers dpmpp_2m,unipc --run RUN       # a trained MNIST run

The questions (``QUESTIONS``; each sampler's current default is the one the others are compared with): the weight of the first divided
difference in DPM-Solver++ 2M, 2S and 3S (``variant``: "taylor" or "midpoint"), UniPC's order and
B(h) (``order`` 1-3 x ``variant`` bh1 / bh2), the same weight in SDE-DPM-Solver++ 2M (``STOCHASTIC``),
and the grid that ``spacing=None`` gives the deterministic samplers (``trailing``, ``log_snr``,
``karras``). A variant question is asked on
every grid, a grid question for each sampler of ``GRID_SAMPLERS``; both at NFE 5, 10, 15 and 20
(``nfe_steps``: one model call per model time, 2n - 1 for edm_heun).

Problems: the exact mixtures of ``benchmarks/samplers.py`` (multiscale_2d, eight_gaussians,
image_mixture; DDPM linear schedule, T = 1000, the exact x0-prediction in float64), measured by
the error to the exact probability-flow ODE solution from the same x_T continued to sigma = 0
(``samplers.solve_probability_flow``, DOP853 at ``--rtol``); and a trained MNIST run (its EMA
weights and own process, float32), measured against its own ODE solution to t = 0 followed by its
x0-prediction (``sampler_mnist.probability_flow_reference``, RK45 at rtol 1e-5). The stochastic
sampler has no per-sample reference: it is measured on the mixtures by the sliced Wasserstein
distance to exact samples, on ``SDE_REPEATS`` batches per seed set (each with its own x_T, noise
and exact set, shared by the candidates), its paired differences taken over those batches.

Protocol. Two independent batches of x_T per problem: "pick" (seed 100) and "confirm" (seed 200).
On the pick batch each question's candidate with the smallest geometric mean over its cells
(problem x grid or sampler x NFE) of the RMSE relative to the current default is the pick. On the
confirm batch, never used for picking, every cell compares the pick with the default by the paired
per-sample difference of squared errors (both share x_T and reference): mean and standard error
over the samples, "pick lower" / "default lower" beyond ``Z`` = 3 standard errors, "tie"
otherwise, and the RMSE ratio pick / default. Writes sampler-defaults[-<problems>].json and .md
to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samplers as bench  # noqa: E402
from scorekit import DDPM, SAMPLERS, make_timesteps  # noqa: E402
from scorekit.metrics import sliced_wasserstein  # noqa: E402
from scorekit.sampling import sampler_options  # noqa: E402

Tensor = torch.Tensor

NFES = (5, 10, 15, 20)
GRIDS = ("trailing", "log_snr", "karras")
SEEDS = {"pick": 100, "confirm": 200}
Z = 3.0
#: question -> candidates (label, sampler, options); the sampler's current default is found at run time
QUESTIONS = {
    "dpmpp_2m variant": [(v, "dpmpp_2m", {"variant": v}) for v in ("taylor", "midpoint")],
    "dpmpp_2s variant": [(v, "dpmpp_2s", {"variant": v}) for v in ("taylor", "midpoint")],
    "dpmpp_3s variant": [(v, "dpmpp_3s", {"variant": v}) for v in ("taylor", "midpoint")],
    "unipc order and variant": [(f"order {o} {v}", "unipc", {"order": o, "variant": v})
                             for o, v in ((2, "bh2"), (1, "bh2"), (3, "bh2"), (1, "bh1"), (2, "bh1"), (3, "bh1"))],
    "dpmpp_2m_sde variant": [(v, "dpmpp_2m_sde", {"variant": v}) for v in ("taylor", "midpoint")],
}
#: questions about stochastic samplers: measured by the sliced Wasserstein distance to exact samples
#: over ``SDE_REPEATS`` batches per seed set (no per-sample reference exists); mixtures only
STOCHASTIC = ("dpmpp_2m_sde variant",)
SDE_REPEATS = 8
#: the samplers whose default grid (``spacing=None``: trailing for DDPM) is put to the test
GRID_SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc", "edm_heun", "ipndm", "deis")
DEFAULT_SIZES = {"multiscale_2d": 2000, "eight_gaussians": 2000, "image_mixture": 256, "mnist": 32}


def nfe_steps(sampler: str, nfe: int) -> int:
    """Model times for ``nfe`` network evaluations: edm_heun calls twice per step but once on the last."""
    return (nfe + 1) // 2 if sampler == "edm_heun" else nfe


class Problem:
    """One problem: the denoiser, the process, and per batch the x_T and its ODE reference."""

    def __init__(self, name: str, n: int, rtol: float, run: Path | None):
        self.name, self.n, self.mixture = name, n, None
        if name == "mnist":
            from sampler_mnist import probability_flow_reference
            from scorekit.train import checkpoint_denoiser, load_checkpoint
            ckpt = load_checkpoint(run)
            self.denoiser = checkpoint_denoiser(ckpt, ema=True)
            self.process = self.denoiser.process
            shape, dtype = tuple(ckpt.sample_shape), torch.float32
            reference = lambda x_T: probability_flow_reference(self.denoiser, x_T, 1e-5)[0]
        else:
            mixture = self.mixture = bench.MIXTURES[name]()
            self.process = DDPM(schedule="linear", num_steps=1000)
            self.denoiser = mixture.denoiser(self.process)
            shape, dtype = mixture.event_shape, torch.float64
            reference = lambda x_T: bench.solve_probability_flow(mixture, self.process, x_T, rtol)["sigma0"]
        self.shape, self.dtype = shape, dtype
        self.batches = {}
        for batch, seed in SEEDS.items():
            x_T = self.process.prior_sample((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)
            start = time.perf_counter()
            self.batches[batch] = (x_T, reference(x_T).to(torch.float64))
            print(f"{name} {batch}: reference {time.perf_counter() - start:.0f} s", flush=True)

    def squared_errors(self, sampler: str, options: dict, grid: str, nfe: int) -> dict[str, Tensor]:
        """Per-sample mean squared error to the reference, on each batch."""
        ts = make_timesteps(self.process, nfe_steps(sampler, nfe), grid)
        out = {}
        with torch.no_grad():
            for batch, (x_T, ref) in self.batches.items():
                x = SAMPLERS[sampler](self.denoiser, self.process, x_T, ts, **options).to(torch.float64)
                out[batch] = (x - ref).flatten(1).pow(2).mean(1)
        return out

    def swd_values(self, sampler: str, options: dict, grid: str, nfe: int) -> dict[str, Tensor]:
        """Sliced Wasserstein distance to exact samples on ``SDE_REPEATS`` batches per seed set, each
        with its own x_T, sampler noise and exact set (shared by every candidate: paired)."""
        ts = make_timesteps(self.process, nfe_steps(sampler, nfe), grid)
        gen = lambda seed: torch.Generator().manual_seed(seed)
        out = {}
        with torch.no_grad():
            for batch, seed in SEEDS.items():
                values = []
                for k in range(SDE_REPEATS):
                    base = 1000 * seed + 10 * k
                    x_T = self.process.prior_sample((self.n, *self.shape), generator=gen(base), dtype=self.dtype)
                    x = SAMPLERS[sampler](self.denoiser, self.process, x_T, ts, generator=gen(base + 1), **options)
                    exact = self.mixture.sample(self.n, generator=gen(base + 2), dtype=torch.float64)
                    values.append(float(sliced_wasserstein(x.to(torch.float64), exact, generator=gen(base + 3))))
                out[batch] = torch.tensor(values, dtype=torch.float64)
        return out


def cells(question: str, problems: list[Problem], nfes, grids, grid_samplers):
    """(cell label, problem, grid or None, sampler or None, nfe) of a question."""
    for p in problems:
        if question in STOCHASTIC and p.mixture is None:
            continue                        # no exact samples to compare with
        for nfe in nfes:
            if question == "grid":
                for sampler in grid_samplers:
                    yield f"{p.name} {sampler} NFE {nfe}", p, None, sampler, nfe
            else:
                for grid in grids:
                    yield f"{p.name} {grid} NFE {nfe}", p, grid, None, nfe


def candidates(question: str, sampler: str | None, grids):
    """(label, sampler, options, grid or None) of each candidate, the sampler's current default first."""
    if question == "grid":
        return [(g, sampler, {}, g) for g in grids]
    is_default = lambda name, options: all(sampler_options(name)[k] == v for k, v in options.items())
    ordered = sorted(QUESTIONS[question], key=lambda c: not is_default(c[1], c[2]))
    return [(label, name, options, None) for label, name, options in ordered]


def paired(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean and standard error of the per-sample difference ``a - b``."""
    d = a - b
    return d.mean().item(), (d.std() / math.sqrt(d.numel())).item()


def answer(question: str, problems: list[Problem], cache: dict, nfes=NFES, grids=GRIDS,
           grid_samplers=GRID_SAMPLERS) -> dict:
    """Pick on the pick batch, confirm against the default on the confirm batch."""
    # RMSE from per-sample squared errors; the mean SWD over repeats for a stochastic sampler
    score = (lambda v: v.mean().item()) if question in STOCHASTIC else (lambda v: v.mean().sqrt().item())
    rows, log_ratios = [], {}
    for label, p, grid, sampler, nfe in cells(question, problems, nfes, grids, grid_samplers):
        errors = {}
        for cand, name, options, cand_grid in candidates(question, sampler, grids):
            key = (p.name, name, json.dumps({**sampler_options(name), **options}, sort_keys=True),
                   cand_grid or grid, nfe)
            if key not in cache:
                measure = p.swd_values if question in STOCHASTIC else p.squared_errors
                cache[key] = measure(name, options, cand_grid or grid, nfe)
            errors[cand] = cache[key]
        rows.append({"cell": label, "errors": errors})
        default = next(iter(errors))
        for cand, e in errors.items():
            ratio = score(e["pick"]) / score(errors[default]["pick"])
            log_ratios.setdefault(cand, []).append(math.log(ratio))
    geo = {c: math.exp(sum(v) / len(v)) for c, v in log_ratios.items()}
    default = next(iter(geo))
    pick = min(geo, key=geo.get)
    confirm = []
    for row in rows:
        e = row["errors"]
        rmse = {c: score(e[c]["confirm"]) for c in e}
        best_in_cell = min(rmse, key=rmse.get)
        entry = {"cell": row["cell"], "rmse": rmse, "best_in_cell": best_in_cell}
        if pick != default:
            mean, se = paired(e[pick]["confirm"], e[default]["confirm"])
            entry.update(diff=mean, se=se, ratio=rmse[pick] / rmse[default],
                         verdict="pick lower" if mean + Z * se < 0 else "default lower" if mean - Z * se > 0 else "tie")
        confirm.append(entry)
    confirm_geo = {c: math.exp(sum(math.log(r["rmse"][c] / r["rmse"][default]) for r in confirm) / len(confirm))
                   for c in geo}
    return {"measure": "SWD" if question in STOCHASTIC else "RMSE", "default": default, "pick": pick, "pick_geomean_ratio": geo, "confirm_geomean_ratio": confirm_geo,
            "cells": confirm}


def verdict_counts(result: dict) -> dict:
    counts = {"pick lower": 0, "default lower": 0, "tie": 0}
    for row in result["cells"]:
        if "verdict" in row:
            counts[row["verdict"]] += 1
    return counts


def markdown(report: dict) -> str:
    lines = [f"Problems: {', '.join(f'{k} (n = {v})' for k, v in report['sizes'].items())}; NFE {', '.join(map(str, report['nfes']))}; "
             f"wall time {report['wall_s']:.0f} s.\n"]
    for question, result in report["questions"].items():
        default, pick = result["default"], result["pick"]
        geo = ", ".join(f"{c} {result['pick_geomean_ratio'][c]:.3f} / {result['confirm_geomean_ratio'][c]:.3f}"
                        for c in result["pick_geomean_ratio"])
        lines.append(f"### {question}: default {default}, pick {pick}\n")
        m = result["measure"]
        lines.append(f"Geometric mean of {m} / default's over the cells (pick batch / confirm batch): {geo}.")
        wins = {}
        for row in result["cells"]:
            wins[row["best_in_cell"]] = wins.get(row["best_in_cell"], 0) + 1
        lines.append(f"Lowest {m} on the confirm batch, cells won: "
                     f"{', '.join(f'{c} {k}' for c, k in sorted(wins.items(), key=lambda kv: -kv[1]))} "
                     f"(of {len(result['cells'])}).")
        if pick != default:
            counts = verdict_counts(result)
            lines.append(f"Pick against default on the confirm batch (paired, {Z:g} SE): "
                         f"{counts['pick lower']} pick lower, {counts['default lower']} default lower, "
                         f"{counts['tie']} tie.\n")
            diff = "diff of MSE" if m == "RMSE" else "diff of SWD"
            lines.append(f"| cell | {m} default | {m} pick | ratio | {diff} +- SE | verdict |")
            lines.append("|---|---|---|---|---|---|")
            for row in result["cells"]:
                lines.append(f"| {row['cell']} | {row['rmse'][default]:.4g} | {row['rmse'][pick]:.4g} | "
                             f"{row['ratio']:.3f} | {row['diff']:.2e} +- {row['se']:.1e} | {row['verdict']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="multiscale_2d,eight_gaussians,image_mixture",
                        help="comma-separated: multiscale_2d, eight_gaussians, image_mixture, mnist")
    parser.add_argument("--questions", default=",".join([*(q for q in QUESTIONS if q not in STOCHASTIC), "grid"]),
                        help=f"comma-separated among: {', '.join([*QUESTIONS, 'grid'])} (default: all but "
                             f"the stochastic {', '.join(STOCHASTIC)}, which is slower; ask for it with a smaller --n)")
    parser.add_argument("--nfes", default=",".join(map(str, NFES)), help="NFE targets")
    parser.add_argument("--grids", default=",".join(GRIDS), help="grids (the default, trailing, first)")
    parser.add_argument("--grid-samplers", default=",".join(GRID_SAMPLERS),
                        help="the samplers of the grid question")
    parser.add_argument("--n", type=int, default=None, help="samples per batch (default: DEFAULT_SIZES)")
    parser.add_argument("--rtol", type=float, default=1e-8, help="tolerance of the mixtures' ODE reference")
    parser.add_argument("--run", type=Path, default=bench_default_run(), help="the MNIST run (problem mnist)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.problems.split(",")
    questions = args.questions.split(",")
    unknown = [q for q in questions if q not in QUESTIONS and q != "grid"] + \
              [p for p in names if p not in DEFAULT_SIZES]
    if unknown:
        parser.error(f"unknown problem or question: {', '.join(unknown)}")
    if all(p == "mnist" for p in names):
        questions = [q for q in questions if q not in STOCHASTIC]
    start = time.perf_counter()
    sizes = {p: args.n or DEFAULT_SIZES[p] for p in names}
    problems = [Problem(p, sizes[p], args.rtol, args.run) for p in names]
    cache: dict = {}
    nfes = [int(v) for v in args.nfes.split(",")]
    grids, grid_samplers = args.grids.split(","), args.grid_samplers.split(",")
    report = {"sizes": sizes, "nfes": nfes, "grids": grids, "grid_samplers": grid_samplers, "seeds": SEEDS, "rtol": args.rtol, "questions": {}}
    for q in questions:
        t0 = time.perf_counter()
        report["questions"][q] = answer(q, problems, cache, nfes, grids, grid_samplers)
        print(f"{q}: pick {report['questions'][q]['pick']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    report["wall_s"] = time.perf_counter() - start
    stem = "sampler-defaults"
    if args.problems != parser.get_default("problems"):
        stem += "-" + "-".join(names)
    if args.questions != parser.get_default("questions"):
        stem += "-" + "-".join(q.replace(" ", "_") for q in questions)
    args.out.mkdir(parents=True, exist_ok=True)
    bench.write_json_atomic(args.out / f"{stem}.json", report)
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def bench_default_run() -> Path:
    return Path(__file__).resolve().parent / "results" / "cache" / "mnist_quality-scorekit-run"


if __name__ == "__main__":
    sys.exit(main())
