"""``scorekit nll``: bits/dim of data by the ODE likelihood and the ELBO (:mod:`scorekit.likelihood`)."""
from __future__ import annotations

import argparse
import math
import textwrap

from ..errors import ScorekitError
from ._common import (BIG, DEFAULT_TRAIN_THREADS, PROG, Formatter, check_json_out, int_in, key_value,
                      positive_float)


NLL_METHODS = ("ode", "elbo", "both")


def _data_bits(text: str):
    """``auto``, ``0`` (continuous data) or a bit depth 1..16."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, 0 or a bit depth from 1 to 16; got {text!r}") from None
    if not 0 <= v <= 16:
        raise argparse.ArgumentTypeError(f"--data-bits must be auto, 0 (continuous) or 1..16, got {v}")
    return v


def add(commands) -> None:
    from ..likelihood.ode import DIVERGENCES, PROBES
    from ..timesteps import DEFAULT_CHAIN_STEPS
    from ..variances import VARIANCES

    p = commands.add_parser(
        "nll", formatter_class=Formatter,
        help="negative log-likelihood of data in bits/dim: the exact probability-flow ODE likelihood "
             "and/or the ELBO",
        description=textwrap.dedent("""\
            Evaluate a trained model's negative log-likelihood of data, in bits per dimension, from
            a run folder (its newest checkpoint) or a checkpoint folder, with the EMA weights by
            default:
              ode   the exact likelihood through the probability-flow ODE (adaptive RK45, with
                    Hutchinson's divergence estimate or the exact trace; scorekit.likelihood.ode)
              elbo  the variational bound of a discrete chain (scorekit.likelihood.elbo): a
                    discrete process's own steps, or for a continuous process (vp, subvp, ve,
                    edm) --elbo-steps times uniform in log-SNR (scorekit.timesteps.chain_timesteps)
            The data are the checkpoint's training data unless --data names others; --data-option
            changes their options (e.g. start=1500 for samples not trained on). For 8-bit data
            (--data-bits auto detects values on the 256 levels of [-1, 1]) both report bits/dim of
            the discrete values: the ODE through uniform dequantisation, an upper bound. Other data
            are scored by the continuous density (which can be negative in bits/dim).

            Prints for each method the mean bits/dim +- its standard error over the samples, the
            network evaluations (NFE) per batch and the wall time; --out writes them, with every
            sample's value, as JSON. With --method both, a method that cannot be computed for this
            model (e.g. --variance learned without a variance head) is reported in one line beside
            the other's result; the exit status is 2 only if neither could be computed."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} nll runs/digits --num 128
              {PROG} nll runs/mnist --data mnist:../shared/data/mnist-test --data-option pad_to=32 \\
                  --method both --out nll.json
              {PROG} nll runs/8g --data-option seed=1 --divergence exact --rtol 1e-6 --atol 1e-6
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SPEC", help="dataset name or KIND:PATH (default: the checkpoint's data)")
    g.add_argument("--data-option", metavar="KEY=VALUE", action="append", type=key_value,
                   help="a dataset option, e.g. start=1500 or seed=1 for held-out samples (repeatable)")
    g.add_argument("--num", metavar="N", type=int_in(1, BIG, "--num"), default=256,
                   help="evaluate the first N samples (all of them if the data hold fewer)")
    g.add_argument("--batch-size", metavar="B", type=int_in(1, BIG, "--batch-size"), default=64,
                   help="samples per ODE solve / ELBO pass")
    g.add_argument("--data-bits", metavar="B", type=_data_bits, default="auto",
                   help="bit depth of the data: auto (8 if every value is on the 256 levels of [-1, 1], "
                        "else continuous), 0 for continuous data, or 1..16")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(NLL_METHODS), default="ode",
                   help="the exact ODE likelihood, the ELBO, or both")
    # the method-specific flags default to None so that a flag the chosen method does not use can be
    # refused (_method_flags); their defaults are METHOD_DEFAULTS
    d = METHOD_DEFAULTS
    g.add_argument("--divergence", choices=list(DIVERGENCES),
                   help=f"ODE: Hutchinson's estimate or the exact trace (one backward pass per dimension) "
                        f"(default: {d['divergence']})")
    g.add_argument("--probe", choices=list(PROBES), help=f"ODE: Hutchinson's probes (default: {d['probe']})")
    g.add_argument("--num-probes", metavar="K", type=int_in(1, 4096, "--num-probes"),
                   help=f"ODE: probes per evaluation (default: {d['num_probes']})")
    g.add_argument("--rtol", metavar="R", type=positive_float("--rtol"),
                   help=f"ODE: relative tolerance (default: {d['rtol']:g})")
    g.add_argument("--atol", metavar="A", type=positive_float("--atol"),
                   help=f"ODE: absolute tolerance (default: {d['atol']:g})")
    g.add_argument("--t-eps", metavar="T", type=float,
                   help="ODE: start time of the integral (default: the process's t_min)")
    g.add_argument("--variance", choices=list(VARIANCES),
                   help=f"ELBO: the reverse variance (learned: a model trained with --variance learned) "
                        f"(default: {d['variance']})")
    g.add_argument("--elbo-steps", metavar="N", type=int_in(1, 100000, "--elbo-steps"),
                   help=f"ELBO: reverse steps of the chain (default: a discrete process's whole chain of "
                        f"T steps; a continuous one's {DEFAULT_CHAIN_STEPS} steps uniform in log-SNR)")
    g.add_argument("--elbo-strata", metavar="M", type=int_in(1, 100000, "--elbo-strata"),
                   help="ELBO: estimate the whole chain's bound from M + 1 network evaluations per sample "
                        "(one step drawn from each of M equal strata of the chain, plus the decoder; "
                        "unbiased, its noise in the standard error) instead of one per step "
                        "(default: every step)")
    g = p.add_argument_group("other")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    g.add_argument("--seed", metavar="S", type=int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the dequantisation noise, the probes and the ELBO's x_t")
    g.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def _nll_data(args: argparse.Namespace, ckpt):
    """The dataset ``scorekit nll`` evaluates: --data (or the checkpoint's), with --data-option."""
    from ..data import load_dataset

    if args.data is not None:
        spec, options = args.data, {}
    else:
        if not ckpt.data_config or "spec" not in ckpt.data_config:
            raise ScorekitError(f"{ckpt.path} records no dataset; name one with --data")
        options = {k: v for k, v in ckpt.data_config.items() if k not in ("spec", "flip")}
        spec = ckpt.data_config["spec"]
    options.update(dict(args.data_option or []))
    if args.no_progress:
        options["progress"] = False
    dataset = load_dataset(spec, **options)
    if tuple(dataset.shape) != tuple(ckpt.sample_shape):
        raise ScorekitError(f"{dataset.spec} holds samples of shape {tuple(dataset.shape)}, but the model "
                            f"takes {tuple(ckpt.sample_shape)}; give data of the model's shape (--data, "
                            f"--data-option)")
    return dataset


def _nll_method(method, args, denoiser, x, labels, data_bits, elbo_grid) -> dict:
    """One method's bits/dim of ``x`` (:func:`scorekit.likelihood.nll_batches`): the mean, its
    standard error, every sample's value, NFE per batch and seconds."""
    import torch

    from ..likelihood import nll_batches

    if method == "ode":
        options = dict(divergence=args.divergence, probe=args.probe, num_probes=args.num_probes,
                       rtol=args.rtol, atol=args.atol, t_eps=args.t_eps)
    else:
        options = dict(variance=args.variance, timesteps=elbo_grid)
        if args.elbo_strata is not None:
            options["strata"] = args.elbo_strata
    r = nll_batches(denoiser, x, method=method, batch_size=args.batch_size, condition=labels,
                    generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress,
                    data_bits=data_bits, **options)
    return {"mean_bpd": r.mean, "stderr_bpd": r.stderr, "nfe_per_batch": r.nfe_per_batch,
            "batches": len(r.calls), "seconds": r.seconds, "bits_per_dim": r.bits_per_dim.tolist()}


#: the defaults of the flags that only one method uses
METHOD_DEFAULTS = {"divergence": "hutchinson", "probe": "rademacher", "num_probes": 1, "rtol": 1e-5,
                   "atol": 1e-5, "t_eps": None, "variance": "small", "elbo_steps": None, "elbo_strata": None}
_ODE_FLAGS = ("divergence", "probe", "num_probes", "rtol", "atol", "t_eps")
_ELBO_FLAGS = ("variance", "elbo_steps", "elbo_strata")


def _method_flags(args: argparse.Namespace) -> None:
    """Refuse flags of the method that does not run (as `scorekit sample` refuses options its
    sampler does not take), then fill in the defaults of the rest."""
    unused = {"ode": _ELBO_FLAGS, "elbo": _ODE_FLAGS}.get(args.method, ())
    given = [f"--{name.replace('_', '-')}" for name in unused if getattr(args, name) is not None]
    if given:
        other = "elbo (or both)" if args.method == "ode" else "ode (or both)"
        raise ScorekitError(f"--method {args.method} does not use {', '.join(given)}; "
                            f"{'they are' if len(given) > 1 else 'it is'} for --method {other}")
    for name, value in METHOD_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..likelihood.ode import is_quantized
    from ..train.checkpoint import load_denoiser

    check_json_out(args.out)
    _method_flags(args)
    if args.elbo_strata is not None and args.variance == "analytic":
        raise ScorekitError("--elbo-strata needs --variance small, large or learned: the analytic variance "
                            "is estimated from every step of the chain")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_TRAIN_THREADS)
    try:
        denoiser = load_denoiser(args.checkpoint, ema=not args.no_ema)
        ckpt = denoiser.checkpoint
        dataset = _nll_data(args, ckpt)
        num = min(args.num, len(dataset))
        x = dataset.x[:num]
        labels = None
        if ckpt.num_classes is not None and dataset.y is not None:
            labels = dataset.y[:num]
        if args.data_bits == "auto":
            data_bits = 8 if is_quantized(x, 8) else None
        else:
            data_bits = args.data_bits or None
        if data_bits is not None and not is_quantized(x, data_bits):
            raise ScorekitError(f"--data-bits {data_bits}: {dataset.spec} is not on the {2 ** data_bits} "
                                f"levels of {data_bits}-bit values in [-1, 1]; use --data-bits auto or 0")
        methods = ["ode", "elbo"] if args.method == "both" else [args.method]
        elbo_grid = None
        if "elbo" in methods:                          # the process's chain, or --elbo-steps of it
            from ..timesteps import chain_timesteps

            elbo_grid = chain_timesteps(ckpt.process, args.elbo_steps)
        results, failures = {}, {}
        for method in methods:
            try:
                results[method] = _nll_method(method, args, denoiser, x, labels, data_bits, elbo_grid)
            except ScorekitError as err:
                if args.method != "both":
                    raise
                failures[method] = " ".join(err.for_cli().split())
    finally:
        torch.set_num_threads(threads_before)
    if not results:
        raise ScorekitError("; ".join(f"--method {m}: {why}" for m, why in failures.items()))

    kind = f"{data_bits}-bit" if data_bits is not None else "continuous"
    given = ", given their labels" if labels is not None else ""
    print(f"{num} samples of {dataset.spec} ({kind} data, {int(x[0].numel())} dims{given}) under step "
          f"{ckpt.step} of {ckpt.path} ({'raw' if args.no_ema else 'EMA'} weights)")
    elbo_steps = len(elbo_grid) - 1 if elbo_grid is not None else None
    for method in methods:
        if method in failures:
            print(f"  {method}: not computed: {failures[method]}")
            continue
        r = results[method]
        detail = (f"{args.divergence}" + (f", {args.num_probes} {args.probe} probe(s)"
                                           if args.divergence == "hutchinson" else "")
                  + f", rtol {args.rtol:g}, atol {args.atol:g}") if method == "ode" else \
            (f"bound, {elbo_steps} steps, variance {args.variance}"
             + (f", sampled in {args.elbo_strata} strata" if args.elbo_strata else ""))
        stderr = "nan" if math.isnan(r["stderr_bpd"]) else f"{r['stderr_bpd']:.4f}"
        print(f"  {method}: {r['mean_bpd']:.4f} +- {stderr} bits/dim ({detail}); NFE {r['nfe_per_batch']:.0f} "
              f"per batch of up to {args.batch_size}; {r['seconds']:.2f} s ({r['seconds'] / num:.3g} s per sample)")
    if args.out is not None:
        from ..plotting import atomic_path

        report = {"checkpoint": ckpt.path, "step": ckpt.step, "data": dataset.config(), "num": num,
                  "data_bits": data_bits, "conditional": labels is not None, "ema": not args.no_ema,
                  "seed": args.seed,
                  "ode_options": {"divergence": args.divergence, "probe": args.probe,
                                  "num_probes": args.num_probes, "rtol": args.rtol, "atol": args.atol,
                                  "t_eps": args.t_eps},
                  "elbo_options": {"variance": args.variance, "steps": elbo_steps,
                                   "strata": args.elbo_strata},
                  "not_computed": failures,
                  "results": {m: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in r.items()} for m, r in results.items()}}
        try:
            with atomic_path(args.out) as tmp:
                with open(tmp, "w") as fh:
                    json.dump(report, fh, indent=1)
        except OSError as err:
            raise ScorekitError(f"cannot write {args.out!r}: {err.strerror or err}") from None
        print("wrote:")
        print(f"  {args.out}")
    return 0
