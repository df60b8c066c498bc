"""The CPU path at two commits, in the same run: has a change slowed training or sampling on a CPU?

    .venv/bin/python benchmarks/cpu_before_after.py --before REV [--after REV] [--rounds R] [--quick]

Each commit's ``src/`` is exported (``git archive``) to a temporary folder; every measurement runs
in a fresh Python process with ``PYTHONPATH`` set to one of them and one torch thread. The two
commits are timed alternately, round after round, so that load from other processes hits both
alike; the report gives medians over rounds and the median of the per-round ratios after / before.

Workloads (all on the CPU, each on identical inputs at both commits):

* ``step``: the U-Net training step of ``benchmarks/unet_throughput.py`` (tiny preset, 32x32x3,
  batch 64: forward, MSE, backward, AdamW), images per CPU second of the process.
* ``loop``: ``scorekit.train.train`` on the built-in digits (tiny U-Net, batch 64, the defaults of
  ``scorekit train``: EMA, gradient clipping, fused AdamW where present, logging every 10 steps),
  images per CPU second of the whole call (set-up and the final checkpoint included); the
  steady images per wall-clock second from the run's own ``metrics.jsonl`` and the last logged
  loss are kept beside it.

"same output" says whether the two commits computed the same numbers (the loop's last logged
loss, the samples' mean absolute value): a change that should leave a CPU run bit for bit as it
was shows "yes".
* ``sample``: ``scorekit.sample`` with DDIM in 50 steps on a tiny U-Net with fixed random weights,
  16 images of 32x32x3, samples per CPU second; beside it, as a control, the same number of
  network calls alone (the code the two commits share), whose ratio shows how much of a change
  is the sampler's and how much the process's (memory layout, the machine's load).

Writes ``cpu_before_after.md`` and ``.json`` (``-quick`` with --quick) to ``--out``
(default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(r"""
    import json, os, sys, tempfile, time
    import torch
    torch.set_num_threads(1)
    workload, size = sys.argv[1], int(sys.argv[2])
    from scorekit.models import build_model, preset
    if workload == "step":
        g = torch.Generator().manual_seed(0)
        net = build_model(preset("tiny", in_channels=3, out_channels=3)).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(64, 3, 32, 32, generator=g)
        t = torch.randint(0, 1000, (64,), generator=g)
        target = torch.randn(64, 3, 32, 32, generator=g)
        def step():
            loss = (net(x, t) - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()                                          # warm-up
        c0 = time.process_time()
        for _ in range(size):
            step()
        out = {"images_per_cpu_s": 64 * size / (time.process_time() - c0)}
    elif workload == "loop":
        from scorekit.train import TrainConfig, train
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig(data="digits", model="tiny", steps=size + 1, batch_size=64, log_every=10,
                              checkpoint_every=10 ** 6, num_threads=1, seed=0)
            c0 = time.process_time()
            train(cfg, d, progress=False, log=None, stop_at_step=size)
            cpu = time.process_time() - c0
            rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
        rows = [r for r in rows if "images_per_second" in r]
        out = {"images_per_cpu_s": 64 * size / cpu,
               "images_per_s": statistics_mean([r["images_per_second"] for r in rows[1:]]) if rows[1:] else float("nan"),
               "loss": rows[-1]["loss"]}
    elif workload == "sample":
        from scorekit import sample
        from scorekit.processes import DDPM
        torch.manual_seed(0)
        net = build_model(preset("tiny", in_channels=3, out_channels=3)).eval()
        for p in net.parameters():                      # the output layer starts at zero: give it weights
            if p.abs().sum() == 0:
                p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        x_T = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        kw = dict(process=DDPM(), sampler="ddim", num_steps=size)
        t_mid = torch.full((16,), 500)
        with torch.no_grad():
            sample(net, x_T[:2], **kw)                  # warm-up
            c0 = time.process_time()
            x0 = sample(net, x_T, **kw)
            c1 = time.process_time()
            for _ in range(size):                       # control: the network calls alone
                net(x_T, t_mid)
            c2 = time.process_time()
        out = {"samples_per_cpu_s": 16 / (c1 - c0), "mean_abs": float(x0.abs().mean()),
               "network_only_samples_per_cpu_s": 16 / (c2 - c1)}
    print("RESULT " + json.dumps(out))
""").replace("statistics_mean", "(lambda v: sum(v) / len(v))")

METRIC = {"step": "images_per_cpu_s", "loop": "images_per_cpu_s", "sample": "samples_per_cpu_s"}
TIMINGS = {"images_per_s", "network_only_samples_per_cpu_s"}          # of a workload's other outputs, the ones that are timings
SIZES = {"step": 8, "loop": 150, "sample": 50}
QUICK_SIZES = {"step": 1, "loop": 20, "sample": 3}


def export(rev: str, into: Path) -> tuple[Path, str]:
    """``rev``'s ``src/`` under ``into``; returns the folder and the full commit hash."""
    sha = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = into / f"{sha}.tar"
    subprocess.run(["git", "archive", "-o", str(archive), sha, "src"], cwd=ROOT, check=True)
    dest = into / sha
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src", sha


def run_child(src: Path, workload: str, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, workload, str(size)], env=env, capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{workload} at {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the commit before the change (any git revision)")
    ap.add_argument("--after", default="HEAD", help="the commit after it (default HEAD)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload (default 5)")
    ap.add_argument("--workloads", default="step,loop,sample", help="comma-separated: step, loop, sample")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in METRIC]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(METRIC)}")
    rounds = 1 if args.quick else args.rounds
    sizes = QUICK_SIZES if args.quick else SIZES
    start = datetime.datetime.now().isoformat(timespec="seconds")
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        (before, sha_b), (after, sha_a) = export(args.before, Path(tmp)), export(args.after, Path(tmp))
        for w in workloads:
            values = {"before": [], "after": []}
            extra = {"before": None, "after": None}
            controls = {"before": [], "after": []}
            for r in range(rounds):
                order = (("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before))
                for label, src in order:
                    res = run_child(src, w, sizes[w])
                    values[label].append(res[METRIC[w]])
                    extra[label] = {k: v for k, v in res.items() if k != METRIC[w]}
                    if "network_only_samples_per_cpu_s" in res:
                        controls[label].append(res["network_only_samples_per_cpu_s"])
                print(f"{w} round {r + 1}/{rounds}: before {values['before'][-1]:.2f}, after {values['after'][-1]:.2f}",
                      flush=True)
            ratios = [a / b for a, b in zip(values["after"], values["before"])]
            control = [a / b for a, b in zip(controls["after"], controls["before"])] if controls["after"] else []
            same = {k: v for k, v in extra["before"].items() if k not in TIMINGS} == \
                {k: v for k, v in extra["after"].items() if k not in TIMINGS}
            rows.append(dict(workload=w, metric=METRIC[w], size=sizes[w], rounds=rounds, same_output=same,
                             before=statistics.median(values["before"]), after=statistics.median(values["after"]),
                             ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                             control_ratio=statistics.median(control) if control else None,
                             before_extra=extra["before"], after_extra=extra["after"]))
            raw[w] = values
    load = os.getloadavg()[0]
    report = dict(date=start, before=sha_b, after=sha_a, machine=platform.processor() or platform.machine(),
                  python=platform.python_version(), load_at_end=load, rows=rows, raw=raw)
    lines = [f"CPU path: {sha_a[:7]} (after) against {sha_b[:7]} (before), {start}, one torch thread, "
             f"{rounds} alternating round(s); load average at the end {load:.1f}", "",
             "| workload | measure | size | before | after | after / before (median, min-max over rounds) "
             "| same output | control: network calls alone, after / before |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['metric']} | {r['size']} | {r['before']:.2f} | {r['after']:.2f} | "
                     f"{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | "
                     f"{'yes' if r['same_output'] else 'no'} | "
                     f"{'' if r['control_ratio'] is None else format(r['control_ratio'], '.3f')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_before_after" + ("-quick" if args.quick else "")
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
