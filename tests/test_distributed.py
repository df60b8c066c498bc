"""DistributedContext's collectives between two real processes (gloo on the CPU, a few seconds).

The trainer's per-step decisions (a stop signal, the time limit) are agreed on through
``DistributedContext.agree``: every rank must get the same answer, the elementwise maximum of
what each rank proposed, over CPU tensors only (so that on GPUs it never waits for the device)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scorekit.train.distributed import DistributedContext, control_group, setup


def _child(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ctx = setup("cpu")                              # uses the group made above, as documented
        results = {
            "control_group_is_default": ctx.control_group is None and control_group() is None,
            "agree": ctx.agree(3 * (rank + 1), rank == 0, 0),
            "any_one": ctx.any(rank == 1),
            "any_none": ctx.any(False),
            "max": ctx.max(10 - rank),
            "world": (ctx.rank, ctx.world_size, ctx.distributed, ctx.initialized_here),
        }
        sums = ctx.all_reduce_sum(torch.tensor([rank + 1.0], dtype=torch.float64))
        results["sum"] = sums.item()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_agree_gives_every_rank_the_elementwise_maximum(tmp_path):
    mp.start_processes(_child, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, res in enumerate(got):
        assert res["control_group_is_default"]
        assert res["agree"] == (6, 1, 0)                # max(3, 6), rank 0's flag, nobody's
        assert res["any_one"] is True and res["any_none"] is False
        assert res["max"] == 10
        assert res["world"] == (rank, 2, True, False)
        assert res["sum"] == 3.0


def test_agree_alone_returns_its_own_values_as_ints():
    ctx = DistributedContext()
    assert ctx.agree(5, True, False) == (5, 1, 0)
    assert ctx.any(True) is True and ctx.any(0) is False and ctx.max(7) == 7


@pytest.mark.parametrize("backend, new", [("gloo", False), ("cpu:gloo,cuda:nccl", False), ("nccl", True)])
def test_control_group_is_gloo_beside_nccl(monkeypatch, backend, new):
    made = []
    monkeypatch.setattr(dist, "get_backend", lambda *a: backend)
    monkeypatch.setattr(dist, "new_group", lambda **kw: made.append(kw) or "gloo-group")
    assert control_group() == ("gloo-group" if new else None)
    assert made == ([{"backend": "gloo"}] if new else [])
