r"""Restoring with a trained image-to-image model (SR3, Saharia et al. 2021; Palette, Saharia et al.
2022): sample ``p(x_0 | y)`` from a network trained on the degraded views of
:mod:`scorekit.tasks.degradations`.

The observation ``y`` a user brings (a low-resolution image for ``sr2`` / ``sr4``, a grey image for
``colorize``, the known pixels and their mask for ``inpaint`` / ``uncrop``, a decoded JPEG for
``jpeg``) becomes the condition ``c = [image, mask]`` exactly as in training
(:meth:`~scorekit.tasks.degradations.Degradation.observe`), and any sampler draws ``K`` samples
per observation from ``x_T ~ N(0, I)`` through :func:`scorekit.sampling.sample_batches` with the
denoiser bound to ``c`` -- so each sample is a draw of the learnt ``p(x_0 | y)``, and their spread
shows what the observation leaves open::

    from scorekit.tasks import degrade_images
    from scorekit.tasks.restore import restore

    d = degrade_images(clean, "sr2", seed=0)                 # test inputs whose truth is known
    x = restore("runs/digits-sr2", d, num_samples=4, sampler="ddim", steps=50,
                generator=torch.Generator().manual_seed(0))  # (N, 4, C, H, W)
    err = degradation.consistency(x[:, 0], d)                # how well x reproduces y

:func:`load_task_model` reads the run (or takes a ready denoiser and a task), and :func:`observe`
turns an observation into the condition with its shape checked against the model's.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from ..conditioning import Condition
from ..errors import ScorekitError
from ..data.user_images import read_images as read_inputs
from ..data.user_images import read_mask, shape_text
from .degradations import Degradation, Degraded, build_degradation

Tensor = torch.Tensor


@dataclasses.dataclass
class TaskModel:
    """A trained image-to-image model ready to restore.

    Attributes:
        denoiser: the :class:`~scorekit.prediction.Denoiser` of the network (conditioned on
            ``[image, mask]`` by concatenation).
        degradation: the task's :class:`~scorekit.tasks.degradations.Degradation`, with the run's options.
        sample_shape: ``(C, H, W)`` of the images it restores.
        path: the checkpoint it came from (``None`` for a denoiser given directly).
    """

    denoiser: object
    degradation: Degradation
    sample_shape: tuple
    path: str | None = None

    @property
    def observation_shapes(self) -> list[tuple]:
        """The shapes ``(C, h, w)`` of one observation this model takes."""
        return self.degradation.observation_shapes(self.sample_shape)


def load_task_model(denoiser_or_run, *, task=None, task_options: dict | None = None, sample_shape=None,
                    ema: bool = True, device="cpu") -> TaskModel:
    """The :class:`TaskModel` of a run folder (or checkpoint) trained with a task, or of a ready
    denoiser: one loaded by :func:`scorekit.load_denoiser` knows its task; any other needs ``task``
    (a name or a :class:`~scorekit.tasks.degradations.Degradation`) and ``sample_shape``."""
    from ..prediction import Denoiser
    from ..wrappers import DenoiserWrapper

    if isinstance(denoiser_or_run, (str, os.PathLike)):
        from ..train.checkpoint import load_denoiser

        denoiser = load_denoiser(denoiser_or_run, ema=ema, device=device)
    elif isinstance(denoiser_or_run, (Denoiser, DenoiserWrapper)):
        denoiser = denoiser_or_run
    else:
        raise ScorekitError(f"restore takes a run folder or a scorekit Denoiser, got {type(denoiser_or_run).__name__}")
    ckpt = getattr(denoiser, "checkpoint", None)
    if ckpt is not None:
        recorded = ckpt.task
        if recorded is None:
            raise ScorekitError(f"{ckpt.path} is not a task model: it was trained without a task (a generative "
                                f"model, sampled from noise alone); train one with task='sr2', 'inpaint', ... to "
                                f"restore images", cli=f"{ckpt.path} is not a task model: it was trained without "
                                f"--task; train one with scorekit train --task sr2|sr4|colorize|inpaint|uncrop|jpeg")
        if task is not None and (task if isinstance(task, str) else task.name) != recorded["name"]:
            raise ScorekitError(f"the run was trained for task {recorded['name']!r}, not {task!r}")
        degradation = build_degradation(recorded["name"], recorded.get("options", {}))
        shape = tuple(ckpt.sample_shape)
        path = ckpt.path
    else:
        if task is None or sample_shape is None:
            raise ScorekitError("a denoiser that does not come from a task run needs task= (e.g. 'sr2') and "
                                "sample_shape= (C, H, W)")
        degradation = build_degradation(task, task_options)
        shape, path = tuple(int(s) for s in sample_shape), None
    channels = degradation.cond_channels(shape)
    if getattr(denoiser, "cond_channels", None) not in (None, channels):
        raise ScorekitError(f"task {degradation.name!r} conditions on {channels} channels but the network takes "
                            f"{denoiser.cond_channels} (cond_channels)")
    return TaskModel(denoiser, degradation, shape, path)


def check_observation(model: TaskModel, y: Tensor, *, clean: bool = False) -> None:
    """Refuse an observation (or, ``clean``, a clean image) of another size or channel count than
    ``model`` takes, naming both."""
    if not isinstance(y, Tensor) or y.ndim != 4 or not y.is_floating_point():
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise ScorekitError(f"the input must be a float tensor of images (N, C, H, W), got {got}")
    shapes = [tuple(model.sample_shape)] if clean else model.observation_shapes
    if tuple(y.shape[1:]) not in shapes:
        what = "clean images" if clean else f"observations of task {model.degradation.name!r}"
        want = " or ".join(shape_text(s) for s in shapes)
        hint = ""
        if not clean and tuple(y.shape[1:]) == tuple(model.sample_shape) and shapes[0] != tuple(model.sample_shape):
            hint = " (this is the restored size: degrade clean images first, with degrade_images)"
        raise ScorekitError(f"the input images have {shape_text(tuple(y.shape[1:]))} but the model takes {what} of "
                            f"{want}{hint}",
                            cli=f"the input images have {shape_text(tuple(y.shape[1:]))} but the model takes {what} of "
                                f"{want}" + (" (this is the restored size: give --degrade for clean images)"
                                             if hint else ""))


def observe(model: TaskModel, y, mask=None, *, generator: torch.Generator | None = None) -> Degraded:
    """The condition of an observation ``y``, its shape checked against ``model``'s. A
    :class:`~scorekit.tasks.degradations.Degraded` gives its measurement (and mask, and what was
    drawn for it, such as a JPEG quality), and the condition is built again from them with the run's
    own degradation: one made by ``degrade_images(x, "sr4")`` with the default options would
    otherwise condition a run trained with others (``upsample=nearest``, ``fill=noise``) on images
    it never saw."""
    if isinstance(y, Degraded):
        if mask is not None:
            raise ScorekitError("the degraded batch carries its own mask; give no mask with it")
        if y.task != model.degradation.name:
            raise ScorekitError(f"the inputs were degraded for task {y.task!r} but the model restores "
                                f"{model.degradation.name!r}")
        check_observation(model, y.measurement)
        rebuilt = model.degradation.observe(y.measurement, y.mask if model.degradation.needs_mask else None,
                                            generator=generator)
        return dataclasses.replace(rebuilt, params={**rebuilt.params, **y.params})
    check_observation(model, y)
    return model.degradation.observe(y, mask, generator=generator)


def restore(denoiser_or_run, y, mask=None, *, num_samples: int = 1, sampler: str = "ddim", steps: int | None = None,
            generator: torch.Generator | None = None, batch_size: int = 256, labels=None, task=None,
            sample_shape=None, device=None, progress: bool = False, **sample_kwargs) -> Tensor:
    r"""``num_samples`` restorations of each observation: samples of the learnt ``p(x_0 | y)``.

    Args:
        denoiser_or_run: a run folder (or checkpoint) trained with a task, a denoiser with ``task``
            and ``sample_shape`` (:func:`load_task_model`), or a :class:`TaskModel`.
        y: ``(N, C, h, w)`` observations (shapes: :attr:`TaskModel.observation_shapes`), or a
            :class:`~scorekit.tasks.degradations.Degraded` from
            :func:`~scorekit.tasks.degradations.degrade_images`.
        mask: for ``inpaint`` and ``uncrop``: 1 where a pixel of ``y`` is known, ``(H, W)`` or
            ``(N, 1, H, W)``.
        num_samples: ``K``, samples per observation.
        sampler, steps: any sampler of :data:`scorekit.samplers.SAMPLERS` and its steps (default: the
            process's default count).
        generator: the only source of randomness: the fill noise (``fill="noise"``), then ``x_T``,
            then the sampler's noise (default: a generator seeded 0).
        batch_size: samples per network call.
        labels: class labels (one, or one per observation) for a task model that also takes them
            (default: the null label, which label dropout trained).
        device: where to sample (default: the model's).
        progress: a progress bar per batch.
        **sample_kwargs: the other arguments of :func:`scorekit.sample` (``spacing``, ``clip``,
            ``guidance_scale`` for a model trained with ``cond_dropout``, sampler options).

    Returns:
        ``(N, K, C, H, W)`` samples.
    """
    model = denoiser_or_run if isinstance(denoiser_or_run, TaskModel) else \
        load_task_model(denoiser_or_run, task=task, sample_shape=sample_shape)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    degraded = observe(model, y, mask, generator=generator)
    out = sample_restorations(model, degraded, num_samples=num_samples, sampler=sampler, steps=steps,
                              generator=generator, batch_size=batch_size, labels=labels, device=device,
                              progress=progress, **sample_kwargs)
    return out.x.reshape(len(degraded), num_samples, *model.sample_shape)


def sample_restorations(model: TaskModel, degraded: Degraded, *, num_samples: int = 1, sampler: str = "ddim",
                        steps: int | None = None, generator: torch.Generator, batch_size: int = 256,
                        labels=None, device=None, progress: bool = False, **sample_kwargs):
    """:func:`restore` on a checked observation: the
    :class:`~scorekit.sampling.BatchedSamples` of ``N K`` samples, observation by observation
    (``K`` in a row), with the network evaluations they took."""
    from ..sampling import sample_batches
    from ..timesteps import default_step_count

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ScorekitError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    n, k = len(degraded), num_samples
    denoiser = model.denoiser
    if getattr(denoiser, "num_classes", None) is not None:
        labels = torch.full((n,), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).reshape(-1)
        labels = labels.expand(n) if labels.numel() == 1 else labels
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() != n:
            raise ScorekitError(f"give one label, or one per observation ({n}), got {labels.numel()}")
        labels = labels.repeat_interleave(k)
    condition = Condition(image=degraded.cond.repeat_interleave(k, dim=0), labels=labels)
    x_T = denoiser.process.prior_sample((n * k, *model.sample_shape), generator=generator)
    if device is None:
        params = getattr(denoiser.model, "parameters", None)
        device = next(params(), torch.zeros(())).device if callable(params) else torch.device("cpu")
    device = torch.device(device)
    noise = generator
    if device.type != "cpu":                        # the sampler draws its noise on the device
        noise = torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
    steps = default_step_count(denoiser.process) if steps is None else steps
    return sample_batches(denoiser, x_T, batch_size=batch_size, condition=condition, device=device,
                          generator=noise, sampler=sampler, num_steps=steps, progress=progress, **sample_kwargs)


__all__ = ["TaskModel", "check_observation", "load_task_model", "observe", "read_inputs", "read_mask", "restore",
           "sample_restorations"]
