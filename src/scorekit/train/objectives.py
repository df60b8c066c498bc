r"""Training objectives: what a run minimises, as one replaceable piece of the loop.

The loop (:mod:`scorekit.train.trainer`) owns the data, the generators, the optimiser, the EMA
and the checkpoints; an objective turns a batch into a loss. :data:`OBJECTIVES` maps the names
``TrainConfig.objective`` takes to the classes; the run's ``config.json`` records the name (key
``objective``) beside what :meth:`Objective.describe` adds, so a run knows what it trained.

**The interface.** A new objective subclasses :class:`Objective`, sets :attr:`Objective.name`
and writes :meth:`Objective.loss`; every other method has a default::

    class MyObjective(Objective):
        name = "mine"

        def loss(self, net, batch, generator) -> ObjectiveOutput:
            noisy = noisy_batch(self.process, batch.x, generator=generator,
                                timestep_sampler=self.timestep_sampler)
            per_sample = ...                               # (N,), differentiable
            return ObjectiveOutput(per_sample.mean(), per_sample, noisy.t, {})

    train(config, "runs/mine", objective=MyObjective)      # or add it to OBJECTIVES

For one run the trainer calls, in this order:

1. ``cls.check_config(config)`` (from :meth:`TrainConfig.validate`) and, for a new run,
   ``cls.complete_config(config)`` (defaults the objective chooses, e.g. the prediction type);
2. ``cls.model_config(config, dataset, process)`` for a new run: the network to build;
3. ``cls(config, process=..., dataset=..., net_config=..., timestep_sampler=...)``;
4. each step: ``prepare(batch, generator)`` on the global batch (before it is split across
   processes and micro-batches; ``generator`` is the run's ``labels`` generator), then
   ``attach_condition(batch, generator)`` on it with the run's ``degrade`` generator (a task run's
   degraded views, ``Batch.cond``), then
   ``loss(training_net(net), micro_batch, generator)`` per micro-batch with the run's ``noise``
   generator; the mean of ``loss`` over the batch is what the step descends, and ``(t,
   per_sample)`` (gathered over processes) updates the time sampler;
5. ``describe()`` for ``config.json``, ``summary()`` for the first log line and, when
   :attr:`Objective.draws_samples`, ``sampling_model(net, n, device)`` for the sample grids.

Randomness comes only from the generators passed in, so a run stays bit-identical when resumed
(:mod:`scorekit.train.state`). An objective with learned state of its own returns it from
:meth:`Objective.state_dict` (tensors, saved as ``objective.*`` in ``trainer.safetensors``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch

from ..devices import to_device
from ..errors import ScorekitError
from .config import TrainConfig, build_process, check_diffusion_settings, default_prediction, model_config_for

# the loss is looked up here at each call (not bound at import) so that it can be swapped in one place
from .. import losses as _losses

Tensor = torch.Tensor


class Batch(NamedTuple):
    """Training data as an objective sees it: ``x`` (N, ...) samples, ``y`` (N,) labels or ``None``,
    and ``cond`` (N, ...) the condition images of a task run (``None`` otherwise)."""

    x: Tensor
    y: Tensor | None
    cond: Tensor | None = None


class ObjectiveOutput(NamedTuple):
    """What :meth:`Objective.loss` returns.

    Attributes:
        loss: the scalar to back-propagate: the mean over the batch (weighted by the time sampler's
            weights where the objective draws times).
        per_sample: (N,) each sample's loss (for the time sampler's ``update``).
        t: (N,) the times drawn, as the network saw them, or ``None`` if the objective draws none.
        metrics: ``{name: (N,) values}`` the trainer averages over the batch and the logging
            interval and writes beside ``loss`` in ``metrics.jsonl`` (e.g. ``accuracy``).
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor | None
    metrics: dict


class Objective:
    """The base of every training objective (see the module docstring for the protocol).

    Attributes:
        name: the objective's name in ``TrainConfig.objective`` and ``config.json``.
        prediction_type: what the network outputs, recorded as ``config.json``'s
            ``prediction_type`` (``None``: nothing a sampler reads).
        draws_samples: whether the run writes sample grids (then :meth:`sampling_model` is needed).
        uses_labels: whether batches carry the data's labels (``Batch.y``; else ``None``).
        conditions_on_host: whether :meth:`attach_condition` is best run on the CPU (a task's
            degradation: masks drawn pixel by pixel, JPEG through Pillow, checks that read values);
            a GPU run then gathers its batches on the host and copies them, condition included,
            without waiting for the device.
        config, process, dataset, net_config, timestep_sampler: the run's, as given.
    """

    name: str = ""
    prediction_type: str | None = None
    draws_samples: bool = False
    uses_labels: bool = False
    conditions_on_host: bool = False

    def __init__(self, config: TrainConfig, *, process, dataset, net_config: dict, timestep_sampler):
        self.config = config
        self.process = process
        self.dataset = dataset
        self.net_config = net_config
        self.timestep_sampler = timestep_sampler

    # -- settings and network, before the objective exists --------------------------------------
    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Raise :class:`ScorekitError` for settings this objective cannot train with."""

    @classmethod
    def complete_config(cls, config: TrainConfig) -> TrainConfig:
        """``config`` with the defaults this objective chooses filled in (a new run only)."""
        return config

    @classmethod
    def model_config(cls, config: TrainConfig, dataset, process) -> dict:
        """The configuration of the network a new run builds (default: a denoising network,
        :func:`scorekit.train.config.model_config_for`)."""
        return model_config_for(config, dataset, process)

    # -- training -------------------------------------------------------------------------------------
    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The global batch of a step, before it is split; ``generator`` is the run's ``labels``."""
        return batch

    def attach_condition(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The global batch with its condition images (``Batch.cond``), drawn from ``generator``, the
        run's ``degrade`` (default: the batch as it is)."""
        return batch

    def training_net(self, net):
        """What :meth:`loss` is given for the network being trained (default: ``net`` itself)."""
        return net

    def loss(self, net, batch: Batch, generator: torch.Generator) -> ObjectiveOutput:
        """The loss of ``net`` on ``batch``, drawing only from ``generator``."""
        raise NotImplementedError(f"{type(self).__name__} must define loss(net, batch, generator)")

    def state_dict(self) -> dict:
        """Tensors to save for an exact resume (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ScorekitError(f"objective {self.name!r} has no state, but the checkpoint holds "
                                f"{', '.join(sorted(state))}; resume with the objective that wrote it")

    # -- what the run records ---------------------------------------------------------------------
    def describe(self) -> dict:
        """Entries of ``config.json`` (beside the run's own): at least ``prediction_type``."""
        return {"prediction_type": self.prediction_type}

    def summary(self) -> str:
        """A few words for the run's first log line."""
        return f"objective {self.name}"

    def sampling_model(self, net, n: int, device) -> tuple:
        """``(denoiser, labels)`` for a sample grid of ``n`` samples, where :attr:`draws_samples`."""
        raise NotImplementedError(f"{type(self).__name__} draws no samples")


class DiffusionObjective(Objective):
    r"""Denoising score matching, :func:`scorekit.losses.diffusion_loss` with the run's settings:

        L(theta) = E_{x_0, y, t, eps}[ w(t) || target(x_0, eps, t) - net_theta(x_t, t, y~) ||^2 ],
        x_t = alpha(t) x_0 + sigma(t) eps,

    ``t`` from the run's time sampler (:data:`scorekit.train.config.TIMESTEP_SAMPLERS`), then
    ``eps ~ N(0, I)`` from the run's ``noise`` generator; the target (``eps``, ``x0``, ``v`` or
    ``score``), the weighting ``w`` and its options as :mod:`scorekit.losses` defines them. With
    ``precondition="edm"`` the network trained is EDM's ``F`` inside
    :class:`scorekit.precondition.EDMPrecond`. For a class-conditional network each label is
    replaced by the "no label" value ``num_classes`` with probability ``label_dropout`` (default
    0.1 for labelled data: classifier-free guidance needs the unconditional model too, Ho & Salimans
    2022), drawn from the run's ``labels`` generator on the global batch: ``y~``.

    With a task (``config.task``, :mod:`scorekit.tasks.degradations`) the network also receives the
    degraded view ``c = [y, mask]`` of each clean image, concatenated to ``x_t`` (SR3, Saharia et
    al. 2021; Palette, Saharia et al. 2022):

        L(theta) = E_{x_0, c ~ degrade(x_0), t, eps}[ w(t) || target - net_theta([x_t, c~], t) ||^2 ],

    minimised by the conditional denoiser ``E[x_0 | x_t, c]``. ``c`` is drawn on the global batch
    from the run's ``degrade`` generator, and ``c~`` is ``c`` or, with probability
    ``config.cond_dropout``, the null condition (zeros) -- for classifier-free guidance on the image.
    """

    name = "diffusion"
    draws_samples = True

    def __init__(self, config: TrainConfig, *, process, dataset, net_config: dict, timestep_sampler):
        super().__init__(config, process=process, dataset=dataset, net_config=net_config,
                         timestep_sampler=timestep_sampler)
        self.prediction_type = config.prediction
        self.conditional = net_config.get("num_classes") is not None
        if self.conditional and dataset.y is None:
            raise ScorekitError(f"the model is class-conditional but {dataset.spec} has no labels")
        self.label_dropout = (0.1 if self.conditional else 0.0) if config.label_dropout is None \
            else float(config.label_dropout)
        if self.label_dropout > 0 and not self.conditional:
            unlabelled = f"needs labelled data and a class-conditional model; {dataset.spec} has none"
            raise ScorekitError(f"label_dropout={config.label_dropout} {unlabelled}",
                                cli=f"--label-dropout {config.label_dropout} {unlabelled}")
        self.precondition = self._precondition_config()
        self.weighting_options = self._weighting_options()
        self.degradation = _task_degradation(config, dataset)

    @property
    def uses_labels(self) -> bool:
        return self.conditional

    @property
    def conditions_on_host(self) -> bool:
        return self.degradation is not None

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        check_diffusion_settings(config)

    @classmethod
    def model_config(cls, config: TrainConfig, dataset, process) -> dict:
        """The denoising network of :func:`scorekit.train.config.model_config_for`; for a task, with
        ``cond_channels`` for its condition and without classes unless ``model_options`` give them."""
        from ..models import check_model_options

        cfg = model_config_for(config, dataset, process)
        degradation = _task_degradation(config, dataset)
        if degradation is None:
            return cfg
        cfg["cond_channels"] = degradation.cond_channels(dataset.shape)
        if "num_classes" not in config.model_options:
            cfg["num_classes"] = None
        kind = cfg.pop("kind")
        return {"kind": kind, **check_model_options(kind, cfg)}

    @classmethod
    def complete_config(cls, config: TrainConfig) -> TrainConfig:
        """The prediction type of the process (:func:`scorekit.train.config.default_prediction`)
        unless the run names one."""
        if config.prediction is not None:
            return config
        process = build_process(config.process, config.process_options)
        return dataclasses.replace(config, prediction=default_prediction(process))

    def _precondition_config(self) -> dict | None:
        """The preconditioning as ``config.json`` records it (``None``: none)."""
        from ..precondition import resolve_sigma_data

        cfg = self.config
        if cfg.precondition is None:
            return None
        sigma_data = cfg.weighting_options.get("sigma_data") if cfg.sigma_data is None else cfg.sigma_data
        return {"kind": cfg.precondition, "sigma_data": resolve_sigma_data(self.process, sigma_data)}

    def _weighting_options(self) -> dict:
        """The loss options; the edm weighting gets the run's ``sigma_data``."""
        options = dict(self.config.weighting_options)
        if self.precondition is not None:
            options["sigma_data"] = self.precondition["sigma_data"]
        elif self.config.sigma_data is not None:
            options["sigma_data"] = self.config.sigma_data
        return options

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Label dropout: each label becomes ``num_classes`` with probability ``label_dropout``."""
        y = batch.y
        if y is None or self.label_dropout <= 0:
            return batch
        drop = to_device(torch.rand(y.shape[0], generator=generator) < self.label_dropout, y.device)
        return Batch(batch.x, torch.where(drop, torch.full_like(y, self.net_config["num_classes"]), y))

    def attach_condition(self, batch: Batch, generator: torch.Generator) -> Batch:
        """A task run's condition images: the degraded view ``[y, mask]`` of each clean image, the
        null condition (zeros) with probability ``cond_dropout``, both drawn from ``generator``."""
        if self.degradation is None:
            return batch
        cond = self.degradation(batch.x, generator).cond
        if self.config.cond_dropout > 0:
            drop = torch.rand(cond.shape[0], generator=generator) < self.config.cond_dropout
            cond = torch.where(drop.view(-1, *([1] * (cond.ndim - 1))).to(cond.device), torch.zeros_like(cond), cond)
        return Batch(batch.x, batch.y, cond)

    def training_net(self, net):
        """``net`` as the loss and the samplers see it: wrapped by the run's preconditioning."""
        from ..precondition import precondition

        return precondition(net, self.process, self.precondition)

    def loss(self, net, batch: Batch, generator: torch.Generator) -> ObjectiveOutput:
        if batch.cond is not None:                   # the condition image beside (x_t, t, y)
            net = functools.partial(net, cond=batch.cond)
        out = _losses.diffusion_loss(net, self.process, batch.x, prediction_type=self.prediction_type,
                                     weighting=self.config.weighting, generator=generator, y=batch.y,
                                     timestep_sampler=self.timestep_sampler, **self.weighting_options)
        return ObjectiveOutput(out.loss, out.per_sample, out.t, {})

    def describe(self) -> dict:
        cfg = self.config
        return {"prediction_type": self.prediction_type, "precondition": self.precondition,
                "loss": {"weighting": cfg.weighting, "options": dict(self.weighting_options),
                         "timesteps": cfg.timesteps, "timesteps_options": dict(cfg.timesteps_options)},
                "label_dropout": self.label_dropout, "task": self._task_record()}

    def _task_record(self) -> dict | None:
        """``config.json``'s ``task``: the degradation, its options and the condition dropout."""
        cfg = self.config
        if cfg.task is None:
            return None
        return {"name": cfg.task, "options": dict(cfg.task_options), "cond_dropout": cfg.cond_dropout,
                "cond_channels": self.net_config.get("cond_channels")}

    def summary(self) -> str:
        task = f", task {self.config.task} (conditioned on [y, mask])" if self.config.task else ""
        return f"{self.prediction_type}-prediction, {self.config.weighting} weighting{task}"

    def sampling_model(self, net, n: int, device) -> tuple:
        """``(denoiser, labels)``: the :class:`~scorekit.prediction.Denoiser` of ``net``
        (preconditioned, without a variance head) bound to the classes ``0, 1, ..., K-1, 0, ...``
        when class-conditional."""
        from ..prediction import Denoiser
        from ..variances import PredictionHead

        from ..conditioning import Condition

        y = None
        if self.conditional:
            y = (torch.arange(n) % self.net_config["num_classes"]).to(device)
        condition = y
        if self.degradation is not None:            # a task: restore degraded training images
            from .state import seeded_generator

            x = self.dataset.x[torch.arange(n) % len(self.dataset)]
            cond = self.degradation(x, seeded_generator(self.config.seed, "samples-degrade")).cond
            condition = Condition(labels=y, image=cond.to(device))
        model = self.training_net(net)
        if self.net_config.get("learn_variance"):
            model = PredictionHead(model)                   # the grids use the prediction only
        return Denoiser(model, self.process, self.prediction_type, condition=condition,
                        num_classes=self.net_config.get("num_classes")), y


class ClassifierObjective(Objective):
    r"""A noise-aware classifier ``p_phi(y | x_t, t)`` for classifier guidance (Dhariwal & Nichol
    2021, section 4), trained by cross-entropy on noisy labelled data:

        L(phi) = E_{(x_0, y), t, eps}[ w_t * -log softmax(f_phi(x_t, t))_y ],
        x_t = alpha(t) x_0 + sigma(t) eps,

    ``f_phi`` the network's logits (:mod:`scorekit.models.classifier`), ``t`` and its weight ``w_t``
    from the run's time sampler (ones unless it importance-samples) and ``eps ~ N(0, I)`` from the
    run's ``noise`` generator, drawn in that order by :func:`scorekit.losses.noisy_batch` as the
    denoising loss draws them. The network sees the time as the run's denoiser would (integer
    steps for a discrete process, the float time otherwise: the convention of
    :meth:`scorekit.prediction.Denoiser.model_time`), so a classifier and a denoiser trained on the
    same process take the same time input. At each ``t`` the loss is minimised, over all
    functions, by the posterior of the noisy data

        p_t(y | x_t) = p(y) p_t(x_t | y) / sum_k p(k) p_t(x_t | k),   p_t(x_t | y) = E[q(x_t | x_0) | y],

    whose gradient ``grad_x log p_t(y | x_t)`` is what classifier guidance adds to the score
    (``grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t)``). For data drawn from a
    Gaussian mixture whose components carry the classes, ``p_t(y | x_t)`` is the sum of the
    responsibilities of the class's components in the mixture diffused to ``(alpha(t), sigma(t))``
    (:meth:`scorekit.toy.GaussianMixture.responsibilities`).

    Labels are required and never dropped. Logged beside the loss: ``accuracy``, the share of the
    batch whose largest logit is its label -- at the drawn noise levels, so below the accuracy on
    clean data. A classifier run writes no sample grids; ``config.json`` records ``objective``
    ``"classifier"``, ``prediction_type`` ``"logits"`` and ``classifier`` (loss, number of classes,
    time sampler).
    """

    name = "classifier"
    prediction_type = "logits"
    uses_labels = True

    #: the settings of a diffusion run that a classifier has no use for, with the value they must keep
    UNUSED_SETTINGS = (("prediction", None), ("weighting", "simple"), ("weighting_options", {}),
                       ("precondition", None), ("sigma_data", None), ("variance", "fixed"), ("sample_every", 0),
                       ("task", None))

    def __init__(self, config: TrainConfig, *, process, dataset, net_config: dict, timestep_sampler):
        super().__init__(config, process=process, dataset=dataset, net_config=net_config,
                         timestep_sampler=timestep_sampler)
        _require_labels(dataset)
        self.num_classes = int(net_config["num_classes"])

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        unused = [(name, value) for name, value in cls.UNUSED_SETTINGS if getattr(config, name) != value]
        if config.label_dropout not in (None, 0, 0.0):
            unused.append(("label_dropout", None))
        if unused:
            name, value = unused[0]
            raise ScorekitError(f"{name}={getattr(config, name)!r} does not apply to objective 'classifier' (a "
                                f"noise-aware classifier trained by cross-entropy: no prediction type, weighting, "
                                f"preconditioning, learned variance, label dropout, sample grids or task); leave {name} "
                                f"at {value!r}")

    @classmethod
    def model_config(cls, config: TrainConfig, dataset, process) -> dict:
        """A classifier preset (:data:`scorekit.train.config.AUTO_PRESETS`) for the data's classes."""
        _require_labels(dataset)
        return model_config_for(config, dataset, process, classifier=True)

    def loss(self, net, batch: Batch, generator: torch.Generator) -> ObjectiveOutput:
        if batch.y is None:
            raise ScorekitError("the classifier objective needs the labels of the batch (Batch.y), got None")
        noisy = _losses.noisy_batch(self.process, batch.x, generator=generator,
                                    timestep_sampler=self.timestep_sampler)
        logits = net(noisy.x_t, noisy.t)
        n = batch.x.shape[0]
        if not isinstance(logits, Tensor) or logits.shape != (n, self.num_classes):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ScorekitError(f"the classifier returned {got} for a batch of {n}; net(x_t, t) must return "
                                f"(N, num_classes) = ({n}, {self.num_classes}) logits")
        log_p = torch.log_softmax(logits.float(), dim=1)
        per_sample = -log_p.gather(1, batch.y[:, None]).squeeze(1)
        weight = noisy.weight.to(per_sample)
        accuracy = (logits.argmax(dim=1) == batch.y).to(per_sample)
        return ObjectiveOutput((weight * per_sample).mean(), per_sample, noisy.t, {"accuracy": accuracy})

    def describe(self) -> dict:
        cfg = self.config
        return {"prediction_type": self.prediction_type, "precondition": None, "label_dropout": 0.0,
                "classifier": {"loss": "cross_entropy", "num_classes": self.num_classes,
                               "timesteps": cfg.timesteps, "timesteps_options": dict(cfg.timesteps_options)}}

    def summary(self) -> str:
        return (f"noise-aware classifier of {self.num_classes} classes (cross-entropy, {self.config.timesteps} "
                f"timesteps)")


def _task_degradation(config: TrainConfig, dataset):
    """The degradation of a task run (``None`` without a task), checked against the data."""
    if config.task is None:
        return None
    from ..tasks.degradations import build_degradation

    degradation = build_degradation(config.task, config.task_options)
    if not dataset.is_image:
        raise ScorekitError(f"task {config.task!r} degrades images, but {dataset.spec} holds {dataset.shape} "
                            f"vectors; train it on image data")
    degradation.check_shape(dataset.shape)
    return degradation


def _require_labels(dataset) -> None:
    if dataset.y is None:
        raise ScorekitError(f"objective 'classifier' learns p(y | x_t, t) from labelled data, but {dataset.spec} has "
                            f"no labels; use labelled data (e.g. digits, mnist:PATH, moons, eight_gaussians, or "
                            f"npz:PATH with labels)")


#: the objectives ``TrainConfig.objective`` names
OBJECTIVES = {"diffusion": DiffusionObjective, "classifier": ClassifierObjective}


def objective_classes(objective=None) -> tuple[dict, str | None]:
    """``(classes, name)``: the objectives a run may name (:data:`OBJECTIVES`, plus ``objective`` if
    it is an :class:`Objective` subclass) and the name ``objective`` picks (``None`` for ``None``).

    ``objective`` is what :func:`scorekit.train.train` was given: ``None``, a name in
    :data:`OBJECTIVES` or an :class:`Objective` subclass with a ``name``.
    """
    known = dict(OBJECTIVES)
    if objective is None:
        return known, None
    if isinstance(objective, str):
        if objective not in known:
            raise ScorekitError(f"unknown objective {objective!r}; choose one of {', '.join(known)} (or pass an "
                                f"Objective subclass)")
        return known, objective
    if isinstance(objective, type) and issubclass(objective, Objective):
        if not isinstance(objective.name, str) or not objective.name:
            raise ScorekitError(f"the objective {objective.__name__} needs a name (a class attribute, e.g. "
                                f"name = \"mine\"): config.json records it")
        known[objective.name] = objective
        return known, objective.name
    raise ScorekitError(f"objective must be a name ({', '.join(known)}) or an Objective subclass, got "
                        f"{objective!r}")


__all__ = ["Batch", "ClassifierObjective", "DiffusionObjective", "OBJECTIVES", "Objective", "ObjectiveOutput",
           "objective_classes"]
