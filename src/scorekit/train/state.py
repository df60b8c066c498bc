r"""The random state of a run, and the trainer state a checkpoint keeps for exact resumption.

Every random draw of a run comes from a generator derived from the run's ``seed`` and the
generator's purpose (:func:`derive_seed`): the data order (:class:`DataOrder`), flips
(``augment``), label dropout (``labels``), the degradations of a task run (``degrade``),
timesteps and noise (``noise``, one per process) and
torch's global generator, which dropout layers use (``torch``, one per process).
:func:`trainer_state` gathers their states with the optimiser's, the EMA's and the time
sampler's into ``trainer.safetensors`` + ``trainer.json``; :func:`load_trainer_state` puts them
back, so a resumed run repeats an uninterrupted one bit for bit on a CPU.
"""
from __future__ import annotations

import hashlib
import os
import platform

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor


def derive_seed(seed: int, name: str, rank: int = 0) -> int:
    """A 63-bit seed for the generator ``name`` of process ``rank``, from the run's ``seed``
    (SHA-256 of ``"seed/name/rank"``: independent streams, stable across versions)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}/{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_generator(seed: int, name: str, rank: int = 0, device="cpu") -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derive_seed` of ``(seed, name, rank)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, name, rank))


class DataOrder:
    """Indices of the training data in random order, epoch after epoch, from one generator.

    Epoch ``e`` visits the data in the order of a permutation drawn from ``generator`` when the
    epoch begins; a batch that reaches the end of an epoch continues with the next one. The state
    (epoch, position, current permutation, generator state) is saved with each checkpoint.
    """

    def __init__(self, n: int, generator: torch.Generator):
        self.n = int(n)
        self.generator = generator
        self.epoch = 0
        self.position = 0
        self.permutation = torch.randperm(self.n, generator=generator)

    def next(self, size: int) -> Tensor:
        """The next ``size`` indices (``torch.long``)."""
        parts, need = [], int(size)
        while need > 0:
            if self.position == self.n:
                self.epoch += 1
                self.position = 0
                self.permutation = torch.randperm(self.n, generator=self.generator)
            take = min(need, self.n - self.position)
            parts.append(self.permutation[self.position:self.position + take])
            self.position += take
            need -= take
        return torch.cat(parts)

    def state(self) -> tuple[dict, dict]:
        return ({"data.permutation": self.permutation.clone(),
                 "rng.data": self.generator.get_state()},
                {"epoch": self.epoch, "position": self.position, "size": self.n})

    def load(self, tensors: dict, info: dict) -> None:
        if int(info.get("size", -1)) != self.n:
            raise ScorekitError(f"the checkpoint was trained on {info.get('size')} samples but the "
                                f"data now has {self.n}; resume with the same data")
        self.epoch, self.position = int(info["epoch"]), int(info["position"])
        self.permutation = tensors["data.permutation"].clone().long()
        self.generator.set_state(tensors["rng.data"])


class RunGenerators:
    """The generators one process of a run draws from, each seeded by :func:`derive_seed`.

    Attributes:
        order: the data order (:class:`DataOrder`, generator ``data``; the same on every process).
        augment: flips (``augment``; the same on every process: it acts on the global batch).
        labels: label dropout (``labels``; the same on every process, likewise).
        degrade: the degradations of a task run and its condition dropout (``degrade``; the same
            on every process, likewise).
        noise: timesteps and noise of the loss (``noise``, one stream per process, on the
            training device).

    Creating it also seeds torch's global generator, which dropout layers use, with ``torch``
    (one stream per process).
    """

    def __init__(self, seed: int, data_size: int, rank: int = 0, device="cpu"):
        self.order = DataOrder(data_size, seeded_generator(seed, "data"))
        self.augment = seeded_generator(seed, "augment")
        self.labels = seeded_generator(seed, "labels")
        self.degrade = seeded_generator(seed, "degrade")
        self.noise = seeded_generator(seed, "noise", rank, device=device)
        torch.manual_seed(derive_seed(seed, "torch", rank))


def versions() -> dict:
    """The versions of scorekit, torch, safetensors and Python (recorded in every checkpoint)."""
    from .. import __version__

    try:
        import safetensors
        st = safetensors.__version__
    except Exception:  # pragma: no cover - safetensors is a dependency
        st = None
    return {"scorekit": __version__, "torch": torch.__version__, "safetensors": st,
            "python": platform.python_version()}




def trainer_state(trainer) -> tuple[dict, dict]:
    """``(tensors, info)``: what ``trainer.safetensors`` and ``trainer.json`` keep of ``trainer``
    (the loop, :class:`scorekit.train.trainer._Trainer`) to resume it exactly.

    Tensors: the optimiser's (``optimizer.state.*``), the data order (``data.permutation``,
    ``rng.data``), the generators (``rng.augment``, ``rng.labels``, ``rng.degrade``, and
    ``rng.noise.rankR``,
    ``rng.torch.rankR``, ``rng.cuda.rankR`` of every process), the time sampler's
    (``timesteps.*``) and the objective's (``objective.*``, usually none). Info: step, data
    position, EMA, optimiser structure, learning rate, the time sampler's other state, the fp16
    loss scaler, the metrics of the interval not yet logged, training seconds, world size, batch
    size, gradient accumulation and versions. Collective under DDP (every process calls it).
    """
    from . import checkpoint as ckpt_io

    ctx, gens = trainer.ctx, trainer.generators
    opt_tensors, opt_structure = ckpt_io.flatten_optimizer_state(trainer.optimizer.state_dict())
    tensors = dict(opt_tensors)
    order_tensors, order_info = gens.order.state()
    tensors.update(order_tensors)
    tensors["rng.augment"] = gens.augment.get_state()
    tensors["rng.labels"] = gens.labels.get_state()
    tensors["rng.degrade"] = gens.degrade.get_state()
    for r, state in enumerate(ctx.gather_bytes(gens.noise.get_state())):
        tensors[f"rng.noise.rank{r}"] = state
    for r, state in enumerate(ctx.gather_bytes(torch.get_rng_state())):
        tensors[f"rng.torch.rank{r}"] = state
    if trainer.device.type == "cuda":
        for r, state in enumerate(ctx.gather_bytes(torch.cuda.get_rng_state(trainer.device))):
            tensors[f"rng.cuda.rank{r}"] = state
    sampler = trainer.timestep_sampler
    ts_state = sampler.state_dict() if hasattr(sampler, "state_dict") else {}
    ts_json = {}
    for k, v in ts_state.items():
        if isinstance(v, Tensor):
            tensors[f"timesteps.{k}"] = v
        else:
            ts_json[k] = v
    for k, v in trainer.objective.state_dict().items():
        tensors[f"objective.{k}"] = v
    config, ema = trainer.config, trainer.ema
    info = {
        "format_version": ckpt_io.FORMAT_VERSION,
        "step": trainer.step,
        "data": order_info,
        "ema": {"decay": ema.decay, "warmup": ema.warmup, "num_updates": ema.num_updates},
        "optimizer": {"type": "AdamW", **opt_structure},
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "timestep_sampler": {"name": config.timesteps, "state": ts_json},
        "grad_scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "metrics_interval": dict(trainer.interval),
        "elapsed_seconds": trainer.elapsed,
        "world_size": ctx.world_size,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "versions": versions(),
    }
    return tensors, info


def load_trainer_state(trainer, ckpt_dir: str) -> None:
    """Put the weights, EMA, optimiser, generators, time sampler and counters of the checkpoint
    ``ckpt_dir`` back into ``trainer`` (the inverse of :func:`trainer_state`). A checkpoint written
    by a different number of processes resumes with fresh noise generators on the processes it
    lacks (noted through ``trainer.log``)."""
    from . import checkpoint as ckpt_io

    ctx, gens = trainer.ctx, trainer.generators
    info = ckpt_io.read_trainer_info(ckpt_dir)
    tensors = ckpt_io.load_tensors(os.path.join(ckpt_dir, ckpt_io.TRAINER_TENSORS_FILE), "trainer state")
    for module, name in ((trainer.net, ckpt_io.MODEL_FILE), (trainer.ema.net, ckpt_io.EMA_FILE)):
        file = os.path.join(ckpt_dir, name)
        state = ckpt_io.load_tensors(file, "weights file")
        ckpt_io.check_state_fits(module, state, file)
        module.load_state_dict(state)
    try:
        trainer.step = int(info["step"])
        trainer.ema.num_updates = int(info["ema"]["num_updates"])
        opt_state = ckpt_io.unflatten_optimizer_state(info["optimizer"], tensors)
        trainer.optimizer.load_state_dict(opt_state)
        gens.order.load(tensors, info["data"])
        gens.augment.set_state(tensors["rng.augment"])
        gens.labels.set_state(tensors["rng.labels"])
        if "rng.degrade" in tensors:                    # (checkpoints written before tasks lack it)
            gens.degrade.set_state(tensors["rng.degrade"])
        ts_state = {k[len("timesteps."):]: v for k, v in tensors.items() if k.startswith("timesteps.")}
        ts_state.update(info.get("timestep_sampler", {}).get("state", {}))
        if hasattr(trainer.timestep_sampler, "load_state_dict"):
            trainer.timestep_sampler.load_state_dict(ts_state)
        trainer.objective.load_state_dict({k[len("objective."):]: v for k, v in tensors.items()
                                           if k.startswith("objective.")})
        if trainer.scaler is not None and info.get("grad_scaler"):
            trainer.scaler.load_state_dict(info["grad_scaler"])
        trainer.interval = dict(info.get("metrics_interval", trainer.interval))
        trainer.elapsed = float(info.get("elapsed_seconds", 0.0))
    except (KeyError, TypeError, ValueError) as err:
        raise ScorekitError(f"the trainer state in {ckpt_dir} is incomplete or corrupt "
                            f"({type(err).__name__}: {err}); resume from another checkpoint") from None
    saved_world = int(info.get("world_size", 1))
    key = f"rng.noise.rank{ctx.rank}"
    if key in tensors:
        gens.noise.set_state(tensors[key])
        torch.set_rng_state(tensors[f"rng.torch.rank{ctx.rank}"])
        if trainer.device.type == "cuda" and f"rng.cuda.rank{ctx.rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{ctx.rank}"], trainer.device)
    elif trainer.log:
        trainer.log(f"note: the checkpoint was written by {saved_world} process(es); process {ctx.rank} "
                    f"starts fresh noise generators, so this run will not repeat an uninterrupted one")


__all__ = ["DataOrder", "RunGenerators", "derive_seed", "load_trainer_state", "seeded_generator",
           "trainer_state", "versions"]
