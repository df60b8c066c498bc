r"""The U-Net's attention block with Q, K, V laid out for SDPA's fused kernels, against the
convolution's own layout (which PyTorch serves with its math kernel).

``scorekit.models.layers.AttentionBlock.fused_layout`` is ``"auto"``: the fused layout off the
CPU, the convolution's layout on it. This measures both on one device, per preset shape (the
attention of the 32x32 presets: ``base`` has 256 channels at 16x16, ``small`` 64 and ``tiny`` 32
at 8x8), forward + backward, float32 and bfloat16 autocast, and names the kernel PyTorch picks
for each layout. Alternating rounds, the median of each; ratio = fused / convolution layout time.

    PYTHONPATH=src python benchmarks/attention_layout.py --device cuda --out DIR     # seconds on a GPU
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/attention_layout.py --device cpu --batch 16

Writes ``DIR/attention_layout.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

from scorekit.models.layers import AttentionBlock

SHAPES = {"base": (256, 16, 1, 32), "small": (64, 8, 1, 8), "tiny": (32, 8, 1, 8)}   # channels, size, heads, groups
KERNELS = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cudnn"}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel(block: AttentionBlock, x: torch.Tensor, bf16: bool) -> str:
    """The SDPA kernel PyTorch picks for the block's Q, K, V (its private chooser, where present)."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return "?"
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = lambda q, k, v: seen.append((q, k, v)) or sdpa(q, k, v)
    try:
        with torch.no_grad(), _autocast(x.device, bf16):
            block.attend(x)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return KERNELS.get(int(choose(*seen[0])), str(int(choose(*seen[0]))))


def _autocast(device, bf16):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def time_block(block, x, bf16, iters):
    device = x.device

    def step():
        with _autocast(device, bf16):
            out = block(x)
        out.float().sum().backward()

    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def measure(preset, device, batch, bf16, rounds, iters):
    channels, size, heads, groups = SHAPES[preset]
    torch.manual_seed(0)
    block = AttentionBlock(channels, heads, groups).to(device)
    torch.nn.init.normal_(block.proj.weight, std=0.02)          # zero at initialisation
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    times = {True: [], False: []}
    kernels = {}
    try:
        for layout in (True, False):
            AttentionBlock.fused_layout = layout
            kernels[layout] = kernel(block, x, bf16)
        for _ in range(rounds):
            for layout in (True, False):
                AttentionBlock.fused_layout = layout
                times[layout].append(time_block(block, x, bf16, iters))
    finally:
        AttentionBlock.fused_layout = "auto"
    fused, plain = statistics.median(times[True]), statistics.median(times[False])
    return dict(preset=preset, shape=[batch, channels, size, size], heads=heads, precision="bf16" if bf16 else "fp32",
                fused_ms=1000 * fused, plain_ms=1000 * plain, ratio=fused / plain,
                ratios=[f / p for f, p in zip(times[True], times[False])],
                kernel_fused=kernels[True], kernel_plain=kernels[False])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--presets", default="base,small,tiny")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for preset in args.presets.split(","):
        for bf16 in (False, True):
            row = measure(preset, device, args.batch, bf16, args.rounds, args.iters)
            rows.append(row)
            print(f"{preset:5s} {row['precision']}: fused layout {row['fused_ms']:.3f} ms ({row['kernel_fused']}), "
                  f"convolution layout {row['plain_ms']:.3f} ms ({row['kernel_plain']}), "
                  f"ratio {row['ratio']:.3f} ({min(row['ratios']):.3f}-{max(row['ratios']):.3f})", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        lines = ["# Attention: Q, K, V for the fused kernels against the convolution's layout", "",
                 f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}",
                 "command: python benchmarks/attention_layout.py "
                 + " ".join(argv if argv is not None else sys.argv[1:]),
                 "", "| preset | input | precision | fused layout ms (kernel) | convolution layout ms (kernel) | "
                 "fused / convolution (range) |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['preset']} | {'x'.join(map(str, r['shape']))} | {r['precision']} | {r['fused_ms']:.3f} "
                  f"({r['kernel_fused']}) | {r['plain_ms']:.3f} ({r['kernel_plain']}) | {r['ratio']:.3f} "
                  f"({min(r['ratios']):.3f}-{max(r['ratios']):.3f}) |" for r in rows]
        with open(os.path.join(args.out, "attention_layout.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(args.out, "attention_layout.json"), "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
