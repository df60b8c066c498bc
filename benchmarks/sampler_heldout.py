"""Held-out check of the sampler benchmark's headline: the configurations picked as best are
measured again on fresh, independent batches.

    .venv/bin/python benchmarks/sampler_heldout.py benchmarks/results/samplers-error-image_mixture.json
    .venv/bin/python benchmarks/sampler_heldout.py benchmarks/results/samplers-quick.json --repeats 4

Why: ``benchmarks/samplers.py`` picks each side's best configuration per problem, NFE and measure
among dozens, on one batch. For the distribution measures (sliced-Wasserstein distance, the
within-mode SWD, the mode-weight error) a single batch's value carries sampling noise of the size
of the metric's resolution, and the minimum over many noisy values is biased low (the winner's
curse): it favours whichever side has more configurations, or luck. A stochastic configuration can
even come out below the level of an independent exact set.

What it does: for every headline row, each side's ``--top`` best configurations of the run and
its configuration with the smallest RMSE to the exact flow (with
the step counts and tuned grids the run planned, read from its JSON) are run again on
``--repeats`` fresh batches, each with its own x_T, sampler noise and exact reference set (seeds
``HELDOUT_SEEDS`` + repeat, none used by the run or the tuning), at the run's sample size. Each
side picks the candidate with the best mean on the even-numbered batches; the odd-numbered
batches, never used for picking, give the reported values.
Two levels are measured alongside: an independent exact set (the metric's resolution) and the
exact probability-flow ODE solution from the same x_T continued to sigma = 0 (the run's solver and
tolerance): the level an exact deterministic sampler reaches from the same N(0, I) start, which
lies a little above the exact set's because N(0, I) is not exactly the marginal at t = T - 1.
Reported per row: the mean and standard error over the reporting batches of each side and of
both levels, the paired difference ours - peer (both sides share each batch's x_T and reference
set) with its standard error, and a verdict: "ours lower" / "peer lower" when the difference is
more than ``Z`` = 3 standard errors from zero, "tie" otherwise ("tie at flow" when neither side
differs from the exact flow's value by more than ``Z`` standard errors either: the measure cannot
tell the sampler from the exact flow map). Three, not two: a run has about a hundred rows, and
at two standard errors a few of them would come out "lower" by chance alone (a first run at two
gave one "peer lower" that 20 further batches did not confirm). RMSE rows compare with each
batch's own ODE solution; each is followed by its two parts for the same picks (``RMSE_PARTS``):
the share of samples carried to another mixture component than the exact flow's
("mode_flips"), and the RMSE over the others ("rmse_same_mode").

Writes the result into the JSON (key ``heldout``) and re-renders its ``.md`` (and ``.png``).
``benchmarks/samplers.py`` runs this itself after a fresh run (``Settings.heldout_repeats``
batches: 24, or 6 with --quick; ``--no-heldout`` skips it).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samplers as bench  # noqa: E402
from scorekit import DDPM  # noqa: E402

Tensor = torch.Tensor

#: seed offsets of the held-out batches (repeat r uses offset + r): x_T, sampler noise, the exact
#: reference set the sliced distances compare with, and the independent exact set (resolution)
HELDOUT_SEEDS = {"x_T": 10_000, "noise": 20_000, "reference": 30_000, "exact": 40_000}
HELDOUT_MEASURES = ("swd", "within_swd", "mode_err", "rmse_sigma0")
#: the two parts of the RMSE, reported beside each RMSE row for the same picks: the share of
#: samples the sampler carries to another mixture component than the exact flow does, and the
#: RMSE over the samples it keeps in the flow's component (a carried sample's error is the
#: distance between two modes, so a few of them make up most of the RMSE at 15-20 NFE)
RMSE_PARTS = ("mode_flips", "rmse_same_mode")
LEVELS = ("exact", "flow")
#: a difference counts when it is more than this many standard errors from zero
Z = 3.0


def config_index(report: dict) -> dict:
    """label -> configuration object (ours, ours tuned, the peers) for the run's settings."""
    tuned = report["settings"].get("tuned") or ()
    configs = bench.all_configs(DDPM(schedule="linear", num_steps=1000), True, tuned)
    return {c.label: c for c in configs}


def plan_for(report: dict, label: str, problem: str, target: int) -> tuple[dict, bool]:
    """The run's plan (steps, options, tuned grid) of ``label`` at NFE ``target`` on ``problem``."""
    plans = report["plans"]
    plan = plans.get(f"{label} [{problem}]") or plans[label]
    return plan[str(target)], plan["deterministic"]


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over repeats (nan if any value is nan or there are fewer than two)."""
    if len(values) < 2 or not all(map(math.isfinite, values)):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def differs(diff: float, se: float) -> int:
    """-1 / +1 when ``diff`` is more than ``Z`` standard errors below / above zero, else 0."""
    return -1 if diff + Z * se < 0 else 1 if diff - Z * se > 0 else 0


def verdict(diff: tuple[float, float], ours_flow: tuple[float, float] | None = None,
            peer_flow: tuple[float, float] | None = None) -> str:
    """From ``(mean, se)`` of ours - peer (and of each side - the exact flow's value)."""
    if not all(map(math.isfinite, diff)):
        return "-"
    side = differs(*diff)
    if side:
        return "ours lower" if side < 0 else "peer lower"
    if ours_flow and peer_flow and differs(*ours_flow) == 0 and differs(*peer_flow) == 0:
        return "tie at flow"
    return "tie"


def candidates(results: list[dict], side: str, metric: str, target: int, k: int) -> list[str]:
    """The ``k`` configurations of ``side`` ("scorekit" or "peer") with the smallest ``metric`` at
    NFE ``target`` in the run (counted NFE at most the target, as ``samplers.best_row`` counts)."""
    ok = [r for r in results if (r["library"] == "scorekit") == (side == "scorekit")
          and r.get("target") == target and r.get("nfe", math.inf) <= target
          and isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    return [r["config"] for r in sorted(ok, key=lambda r: r[metric])[:k]]


def run_batches(report: dict, problem: str, wanted: set, repeats: int, index: dict) -> tuple[dict, dict]:
    """Every (configuration, NFE) of ``wanted`` and the two levels on ``repeats`` fresh batches:
    ``{key: {measure: [value per batch]}}`` and the counted NFE per key."""
    mixture = bench.MIXTURES[problem]()
    process = DDPM(schedule="linear", num_steps=1000)
    model = bench.CountingModel(bench.one_time_model(mixture.eps_model(process)))
    n = report["mixtures"][problem]["n"]
    values = {key: {m: [] for m in (*HELDOUT_MEASURES, *RMSE_PARTS)} for key in [*wanted, *LEVELS]}
    calls = {}
    for rep_i in range(repeats):
        x_T = process.prior_sample((n, *mixture.event_shape),
                                   generator=torch.Generator().manual_seed(HELDOUT_SEEDS["x_T"] + rep_i))
        reference = bench.exact_samples(mixture, n, HELDOUT_SEEDS["reference"] + rep_i)
        other = bench.exact_samples(mixture, n, HELDOUT_SEEDS["exact"] + rep_i)
        flow = bench.solve_probability_flow(mixture, process, x_T, report["settings"]["ode_rtol"])["sigma0"]
        for level, x in (("exact", other), ("flow", flow)):
            metrics = {**bench.distribution_metrics(x, mixture, reference), "rmse_sigma0": math.nan}
            for m in HELDOUT_MEASURES:
                values[level][m].append(metrics[m])
        flow_mode = mixture.classify(flow)
        for label, target in sorted(wanted):
            plan, deterministic = plan_for(report, label, problem, target)
            model.calls = 0
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = bench.run_config(index[label], model, process, x_T, plan["steps"],
                                     torch.Generator().manual_seed(HELDOUT_SEEDS["noise"] + rep_i), "eps",
                                     plan.get("options"), plan.get("timesteps"))
            calls[label, target] = model.calls
            metrics = {}
            if torch.isfinite(x).all():
                metrics = bench.distribution_metrics(x, mixture, reference)
                if deterministic:
                    same = mixture.classify(x) == flow_mode
                    metrics.update(rmse_sigma0=bench.rmse(x, flow), mode_flips=float((~same).double().mean()),
                                   rmse_same_mode=bench.rmse(x[same], flow[same]))
            for m in (*HELDOUT_MEASURES, *RMSE_PARTS):
                values[label, target][m].append(metrics.get(m, math.nan))
    return values, calls


def heldout(report: dict, repeats: int, problems=None, top: int = 3) -> dict:
    """For each headline row: each side's ``top`` configurations of the run, measured on
    ``repeats`` fresh batches; each side's pick is the best on the even-numbered batches, and
    the odd-numbered batches (never used to pick) give the reported values."""
    index = config_index(report)
    out = {"repeats": repeats, "top": top, "z": Z, "seeds": HELDOUT_SEEDS, "rows": []}
    select, evaluate = slice(0, None, 2), slice(1, None, 2)
    start = time.perf_counter()
    for problem, rep in report["mixtures"].items():
        if problems and problem not in problems:
            continue
        rows = [r for r in report["headline"] if r["problem"] == problem and r["measure"] in HELDOUT_MEASURES
                and r.get("ours") and r.get("peer")]
        if not rows:
            continue
        picks = {}
        for r in rows:
            for side in ("scorekit", "peer"):
                labels = candidates(rep["results"], side, r["measure"], r["nfe"], top)
                # the side's most accurate deterministic configuration: closest to the exact flow,
                # so a candidate for every distribution measure too
                labels += [c for c in candidates(rep["results"], side, "rmse_sigma0", r["nfe"], 1) if c not in labels]
                picks[r["nfe"], r["measure"], side] = labels
        wanted = {(label, nfe) for (nfe, _, _), labels in picks.items() for label in labels}
        values, calls = run_batches(report, problem, wanted, repeats, index)

        def picked(nfe: int, m: str, side: str) -> str:
            """The candidate with the smallest mean on the picking batches (nan counts as worst)."""
            def score(label: str) -> float:
                mean = mean_se(values[label, nfe][m][select])[0]
                return mean if math.isfinite(mean) else math.inf
            return min(picks[nfe, m, side], key=score)

        expanded = []
        for r in rows:
            expanded.append((r, r["measure"], r["measure"]))
            if r["measure"] == "rmse_sigma0":
                expanded += [(r, "rmse_sigma0", part) for part in RMSE_PARTS]
        for r, pick_by, m in expanded:
            target = r["nfe"]
            a, b = picked(target, pick_by, "scorekit"), picked(target, pick_by, "peer")
            ours, peer = values[a, target][m][evaluate], values[b, target][m][evaluate]
            flow = values["flow"][m][evaluate]
            diff = mean_se([x - y for x, y in zip(ours, peer)])
            ours_flow, peer_flow = (mean_se([x - y for x, y in zip(side, flow)]) for side in (ours, peer))
            (om, ose), (pm_, pse), (em, ese), (fm, fse) = map(mean_se, (ours, peer, values["exact"][m][evaluate], flow))
            rmse_row = m in ("rmse_sigma0", *RMSE_PARTS)
            out["rows"].append({"problem": problem, "nfe": target, "measure": m, "n": rep["n"],
                                "ours": a, "ours_nfe": calls[a, target], "ours_mean": om, "ours_se": ose,
                                "ours_candidates": picks[target, pick_by, "scorekit"],
                                "peer": b, "peer_nfe": calls[b, target], "peer_mean": pm_, "peer_se": pse,
                                "peer_candidates": picks[target, pick_by, "peer"],
                                "exact_mean": em, "exact_se": ese, "flow_mean": fm, "flow_se": fse,
                                "diff_mean": diff[0], "diff_se": diff[1], "ratio": om / pm_ if pm_ > 0 else None,
                                "verdict": verdict(diff) if rmse_row else verdict(diff, ours_flow, peer_flow)})
        print(f"[{problem}] held-out: {len(wanted)} configurations x {repeats} batches of {rep['n']}, "
              f"{time.perf_counter() - start:.1f} s so far", flush=True)
    out["seconds"] = time.perf_counter() - start
    return out


def pm(mean: float, se: float) -> str:
    return f"{bench.fmt(mean)} ± {bench.fmt(se)}"


SHORT = {"ours lower": "ours", "peer lower": "PEER", "tie at flow": "tie, flow", "tie": "tie", "-": "-"}


def summary_table(result: dict) -> str:
    """Markdown: one line per problem and measure, ``ours/peer (verdict)`` per NFE."""
    cells, nfes = {}, sorted({r["nfe"] for r in result["rows"]})
    for r in result["rows"]:
        cells.setdefault((r["problem"], r["measure"]), {})[r["nfe"]] = \
            f"{bench.fmt(r['ratio'])} ({SHORT.get(r['verdict'], r['verdict'])})"
    return bench.markdown_table(["problem", "measure", *(f"NFE {n}" for n in nfes)],
                                [[problem, measure, *(row.get(n, "-") for n in nfes)]
                                 for (problem, measure), row in cells.items()])


def heldout_section(result: dict) -> str:
    """Markdown: the held-out table."""
    header = ["problem", "NFE", "measure", "exact set", "exact flow", "ours: picked config (NFE)", "ours",
              "peer: picked config (NFE)", "peer", "ours/peer", "ours - peer", "verdict"]
    half = result["repeats"] // 2
    table = [[r["problem"], r["nfe"], r["measure"], pm(r["exact_mean"], r["exact_se"]),
              "-" if r["measure"] in ("rmse_sigma0", *RMSE_PARTS) else pm(r["flow_mean"], r["flow_se"]),
              f"{r['ours']} ({r['ours_nfe']})", pm(r["ours_mean"], r["ours_se"]),
              f"{r['peer']} ({r['peer_nfe']})", pm(r["peer_mean"], r["peer_se"]), r["ratio"],
              pm(r["diff_mean"], r["diff_se"]), r["verdict"]] for r in result["rows"]]
    counts = {v: sum(r["verdict"] == v for r in result["rows"])
              for v in ("ours lower", "tie at flow", "tie", "peer lower")}
    return "\n\n".join([
        f"Each side's {result['top']} best configurations of the run (and its one with the smallest RMSE), "
        f"measured again on {result['repeats']} fresh "
        f"batches (own x_T, sampler noise and exact reference set; the run's n); each side picks its best on "
        f"{result['repeats'] - half} of them, and the other {half} give mean ± standard error; "
        "'ours - peer' is the paired difference (both sides share each batch's x_T and reference "
        f"set); verdict 'ours lower' / 'peer lower' when it is more than {result['z']:g} standard errors from "
        "zero, 'tie' otherwise, 'tie at flow' when neither side differs from the exact flow either. 'exact "
        "flow': the probability-flow ODE solution from the same x_T at sigma = 0, the level an exact "
        "deterministic sampler reaches from the N(0, I) start (RMSE rows measure the distance to it; "
        "'mode_flips' is the share of samples a sampler carries to another mixture component than the "
        "exact flow does, 'rmse_same_mode' the RMSE over the rest, both for the configurations picked by RMSE). "
        f"{result['seconds']:.0f} s. Verdicts: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
        "Summary: ours/peer on the reporting batches (verdict: 'ours' / 'PEER' lower, 'tie', or "
        "'tie, flow' when both are at the exact flow's level).",
        summary_table(result),
        bench.markdown_table(header, table)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a JSON written by benchmarks/samplers.py")
    parser.add_argument("--repeats", type=int, default=24,
                        help="fresh batches: half to pick, half to report (default 24)")
    parser.add_argument("--top", type=int, default=3, help="candidates per side and row (default 3)")
    parser.add_argument("--problems", default=None, help="comma-separated subset of the report's problems")
    args = parser.parse_args(argv)
    if args.repeats < 4 or args.top < 1:
        parser.error("need --repeats >= 4 (two batches to pick, two to report) and --top >= 1")
    try:
        report = json.loads(args.report.read_text())
    except (OSError, ValueError) as err:
        parser.error(f"cannot read {args.report}: {err}")
    if not report.get("mixtures") or "plans" not in report:
        parser.error(f"{args.report} holds no distribution-error part of benchmarks/samplers.py")
    torch.set_num_threads(1)
    bench.quiet_peers()
    problems = set(args.problems.split(",")) if args.problems else None
    result = heldout(report, args.repeats, problems, args.top)
    if problems and report.get("heldout"):       # keep the rows of the other problems
        result["rows"] = [r for r in report["heldout"]["rows"] if r["problem"] not in problems] + result["rows"]
    report["heldout"] = result
    bench.write_json_atomic(args.report, bench.without_nan(report))
    print(heldout_section(result))
    return bench.render(args.report)


if __name__ == "__main__":
    sys.exit(main())
