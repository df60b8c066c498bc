"""Training throughput of scorekit's U-Net against diffusers' UNet2DModel, in the same run.

    .venv/bin/python benchmarks/unet_throughput.py [--quick] [--rounds R] [--out DIR]

One training step = forward, MSE loss against a fixed target, backward and an AdamW step, on a
batch of 64 images of 32x32x1 and 32x32x3 with integer DDPM times. For the "tiny" and "small"
presets, diffusers' UNet2DModel is built with the same layout (channels, residual blocks,
attention at the same levels with one head, GroupNorm groups), which gives exactly the same
parameter count; tests/test_models.py checks that the two compute the same function on the same
weights. Each is also timed with bfloat16 autocast (scorekit: ``compute_dtype="bfloat16"``;
diffusers: the step wrapped in ``torch.autocast("cpu", torch.bfloat16)``).

The models are timed in interleaved rounds (one step of each per round) so that load from
other processes hits all of them alike; the table gives the median over rounds of images per
wall-clock second and per CPU second of this process (the latter is steadier on a shared
machine), and the median over rounds of the per-round ratio scorekit / diffusers. Runs with
torch.set_num_threads(1) and (2).

Writes unet_throughput.md and unet_throughput.json (``-quick`` with --quick) to the output folder
(default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DModel

from scorekit.models import build_model, count_parameters, preset
from scorekit.plotting import write_text

BATCH = 64
SIZE = 32
PRESET_NAMES = ("tiny", "small")


def diffusers_twin(config: dict) -> UNet2DModel:
    """diffusers' UNet2DModel with the layout of a scorekit U-Net config."""
    levels = [config["image_size"] // 2 ** i for i in range(len(config["channel_mults"]))]
    attn = [r in config["attention_resolutions"] for r in levels]
    channels = tuple(config["base_channels"] * m for m in config["channel_mults"])
    return UNet2DModel(
        sample_size=config["image_size"], in_channels=config["in_channels"], out_channels=config["out_channels"],
        block_out_channels=channels, layers_per_block=config["num_res_blocks"], norm_num_groups=config["groups"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=channels[-1] // config["num_heads"], flip_sin_to_cos=True, freq_shift=0)


class Trainer:
    """One model, its AdamW optimiser and a fixed batch; ``step()`` does one training step."""

    def __init__(self, label: str, library: str, preset_name: str, net, call, bf16: bool, channels: int):
        g = torch.Generator().manual_seed(0)
        self.label, self.library, self.preset, self.bf16 = label, library, preset_name, bf16
        self.net, self.call = net.train(), call
        self.parameters = count_parameters(net)
        self.opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        self.x = torch.randn(BATCH, channels, SIZE, SIZE, generator=g)
        self.t = torch.randint(0, 1000, (BATCH,), generator=g)
        self.target = torch.randn(BATCH, channels, SIZE, SIZE, generator=g)

    def step(self) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            out = self.call(self.net, self.x, self.t)
        loss = (out.float() - self.target).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def make_trainers(channels: int) -> list[Trainer]:
    trainers = []
    for name in PRESET_NAMES:
        config = preset(name, in_channels=channels, out_channels=channels)
        ours = lambda net, x, t: net(x, t)                                    # noqa: E731
        theirs = lambda net, x, t: net(x, t).sample                           # noqa: E731
        trainers.append(Trainer(f"scorekit {name}", "scorekit", name, build_model(config), ours, False, channels))
        trainers.append(Trainer(f"diffusers ({name} layout)", "diffusers", name, diffusers_twin(config), theirs,
                                False, channels))
        fast = build_model({**config, "compute_dtype": "bfloat16"})
        trainers.append(Trainer(f"scorekit {name}, bf16", "scorekit-bf16", name, fast, ours, False, channels))
        trainers.append(Trainer(f"diffusers ({name} layout), bf16 autocast", "diffusers-bf16", name,
                                diffusers_twin(config), theirs, True, channels))
    for name in PRESET_NAMES:
        counts = [tr.parameters for tr in trainers if tr.preset == name]
        assert max(counts) <= 1.1 * min(counts), f"parameter counts not matched: {counts}"
    return trainers


def measure(trainers: list[Trainer], rounds: int, warmup: int) -> dict:
    for tr in trainers:
        for _ in range(warmup):
            tr.step()
    wall = {tr.label: [] for tr in trainers}
    cpu = {tr.label: [] for tr in trainers}
    for _ in range(rounds):
        for tr in trainers:
            t0, c0 = time.perf_counter(), time.process_time()
            tr.step()
            wall[tr.label].append(time.perf_counter() - t0)
            cpu[tr.label].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def summarise(trainers: list[Trainer], times: dict, threads: int, channels: int, load: float) -> list[dict]:
    rows = []
    by_key = {(tr.library, tr.preset): tr for tr in trainers}
    for tr in trainers:
        wall, cpu = times["wall"][tr.label], times["cpu"][tr.label]
        row = dict(threads=threads, image=f"{SIZE}x{SIZE}x{channels}", load=load, model=tr.label, library=tr.library,
                   preset=tr.preset, parameters=tr.parameters, bf16=tr.library.endswith("bf16"),
                   images_per_s=statistics.median(BATCH / w for w in wall),
                   images_per_cpu_s=statistics.median(BATCH / c for c in cpu),
                   step_s=statistics.median(wall), rounds=len(wall))
        peer = by_key.get(("diffusers-bf16" if row["bf16"] else "diffusers", tr.preset))
        if tr.library.startswith("scorekit") and peer is not None:
            pw, pc = times["wall"][peer.label], times["cpu"][peer.label]
            row["ratio_wall"] = statistics.median(p / w for w, p in zip(wall, pw))
            row["ratio_cpu"] = statistics.median(p / c for c, p in zip(cpu, pc))
        base = by_key[("scorekit", tr.preset)]
        row["vs_scorekit_fp32_cpu"] = statistics.median(b / c for c, b in zip(cpu, times["cpu"][base.label]))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| threads | image | load | model | parameters | images/s (wall) | images/CPU-s | scorekit / diffusers (wall, CPU) | vs scorekit fp32 (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['ratio_wall']:.2f}x, {r['ratio_cpu']:.2f}x" if "ratio_wall" in r else ""
        lines.append(f"| {r['threads']} | {r['image']} | {r['load']:.1f} | {r['model']} | {r['parameters']:,} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_cpu_s']:.1f} | {ratio} | {r['vs_scorekit_fp32_cpu']:.2f}x |")
    return "\n".join(lines)


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, diffusers=diffusers.__version__,
                python=platform.python_version(), mkldnn_bf16=torch.backends.mkldnn.is_available())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up step, 1 thread only")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per setting (default 6)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    warmup = 1 if args.quick else 2
    thread_counts = (1,) if args.quick else (1, 2)

    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for channels in (1, 3):
            trainers = make_trainers(channels)
            load = os.getloadavg()[0]
            times = measure(trainers, rounds, warmup)
            part = summarise(trainers, times, threads, channels, (load + os.getloadavg()[0]) / 2)
            print(table(part), flush=True)
            rows += part
            del trainers
    load_after = os.getloadavg()

    info = dict(started=started, machine=machine(), batch=BATCH, rounds=rounds, warmup=warmup,
                load_average_before=load_before, load_average_after=load_after, rows=rows,
                command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    suffix = "-quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = info["machine"]
    md = "\n".join([
        "# U-Net training throughput: scorekit vs diffusers UNet2DModel", "",
        f"`{info['command']}`, started {started}. {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
        f"diffusers {m['diffusers']}. Batch {BATCH}, forward + MSE + backward + AdamW; median of {rounds} "
        f"interleaved rounds after {warmup} warm-up steps. Load average (1, 5, 15 min) before "
        f"{tuple(round(v, 2) for v in load_before)}, after {tuple(round(v, 2) for v in load_after)}; the "
        "\"load\" column is the 1-minute load average around each block (this process included). On a "
        "shared machine wall-clock numbers move with other processes, two threads most of all (a "
        "thread waiting for a descheduled partner burns CPU time too); images per CPU second of a "
        "one-thread run measure the work itself. Compare models within one block, where they ran "
        "interleaved.", "",
        "diffusers' models have the same layout and parameter count as the scorekit preset "
        "(tests check they compute the same function on the same weights). Ratios above 1 mean "
        "scorekit is faster; \"vs scorekit fp32\" compares with the float32 scorekit model of the same preset.",
        "", table(rows), ""])
    write_text(out / f"unet_throughput{suffix}.md", md)
    write_text(out / f"unet_throughput{suffix}.json", json.dumps(info, indent=2) + "\n")
    print(f"wrote {out / f'unet_throughput{suffix}.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
