"""``scorekit.sample``: one entry point that runs any sampler on any model."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch

from .errors import ScorekitError, check_options, option_schema, reads_are_free
from .conditioning import as_condition
from .guidance import guided
from .prediction import Denoiser
from .wrappers import DenoiserWrapper
from .acceleration import prepare_network
from .processes import DDPM, GaussianProcess
from .samplers import SAMPLERS
from .samplers._common import Callback, FiniteStates
from .timesteps import make_timesteps

Tensor = torch.Tensor

_COMMON = {"denoiser", "process", "x_T", "timesteps", "generator", "callback", "progress"}


def sampler_options(name: str) -> dict:
    """The extra keyword options a sampler accepts, with their defaults."""
    fn = _lookup(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind == p.KEYWORD_ONLY and k not in _COMMON}


def check_sampler_options(name: str, options: dict) -> dict:
    """``options`` of sampler ``name``, each converted to the type its parameter expects
    (:func:`scorekit.errors.check_options`); an option the sampler does not have is refused,
    naming the ones it has."""
    allowed = sampler_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ScorekitError(f"sampler {name!r} has no option {', '.join(unknown)}; "
                            f"its options are: {', '.join(allowed) or 'none'}")
    return check_options(options, option_schema(_lookup(name), skip=_COMMON), f"{name} sampler option")


#: functions with a sampler's name that are not samplers, and where to find them
NOT_SAMPLERS = {"ddim_invert": "ddim_invert maps data to noise, so it is not a sampler; use "
                               "scorekit.invert(model, x0, ...) (or scorekit.ddim_invert(denoiser, process, x0, "
                               "timesteps))"}


def unknown_sampler(name: str) -> str:
    """The message for a sampler name not in SAMPLERS (a pointer for the names of NOT_SAMPLERS)."""
    return NOT_SAMPLERS.get(name, f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def _lookup(name: str):
    if name not in SAMPLERS:
        raise ScorekitError(unknown_sampler(name))
    return SAMPLERS[name]


def sample(model: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, *,
           betas=None, alpha_bar=None, process: GaussianProcess | None = None,
           prediction_type: str = "eps", sampler: str = "ddim", num_steps: int = 50,
           spacing: str | None = None, timesteps=None, generator: torch.Generator | None = None,
           clip: float | None = None, threshold: float | None = None, threshold_max: float | None = None,
           callback: Callback | None = None, progress: bool = False,
           time_input: Callable[[Tensor], Tensor] | None = None, check_finite: bool = True,
           condition=None, guidance_scale: float | None = None, guidance_interval=None,
           guidance_rescale: float = 0.0, classifier=None, classifier_scale: float = 1.0,
           compile=False, precision: str = "fp32", **options) -> Tensor:
    """Sample from a diffusion model: run ``sampler`` from ``x_T`` to the data.

    Args:
        model: ``model(x_t, t) -> Tensor`` shaped like ``x_t``, or a ready
            :class:`~scorekit.prediction.Denoiser` (such as the one
            :func:`scorekit.train.checkpoint_denoiser` returns for a learned-variance model, which
            ``sampler="ddpm", variance="learned"`` needs); ``prediction_type`` and ``time_input``
            are then the denoiser's own. For a DDPM schedule ``t`` is a
            ``torch.long`` tensor of shape ``(N,)`` with steps ``0 .. T-1``, as in the DDPM paper
            (shifted by one) and diffusers, so models trained with either work unchanged.
            A diffusers ``UNet2DModel`` can be passed directly.
        x_T: the initial noise, shape ``(N, ...)``; e.g. ``process.prior_sample(shape, generator=g)``.
        betas / alpha_bar: the model's DDPM schedule (``T`` values), or
        process: any :class:`scorekit.processes.GaussianProcess` instead.
        prediction_type: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
        sampler: a name in :data:`scorekit.samplers.SAMPLERS` (``"ddpm"``, ``"ddim"``).
        num_steps: number of network evaluations (at most ``T`` for a DDPM schedule).
        spacing: how the steps are chosen (:mod:`scorekit.timesteps`); default the process's
            ``default_spacing``: ``"trailing"`` for DDPM, ``"uniform"`` for the SDEs, ``"karras"``
            for EDM.
        timesteps: an explicit descending grid ending at the end time (overrides the two above).
        generator: the only source of randomness (required by stochastic samplers).
        clip: clamp ``x0_pred`` to ``[-clip, clip]`` at every step.
        threshold: dynamic thresholding of ``x0_pred`` at this percentile (e.g. 0.995), with
            ``threshold_max`` the largest threshold (default: none, as in Imagen).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
        time_input: maps process time to the model's time input (see :class:`Denoiser`).
        condition: what a conditional model is conditioned on: class labels ``(N,)`` (or one for
            all) or a :class:`~scorekit.conditioning.Condition`.
        guidance_scale: classifier-free guidance weight ``w`` (``1``: the conditional model, ``0``:
            the unconditional one; :class:`~scorekit.guidance.ClassifierFreeGuidance`), with
            ``guidance_interval`` ``(lo, hi)`` in noise level ``sigma / alpha`` and
            ``guidance_rescale`` ``phi``.
        classifier: a noise-aware classifier ``classifier(x_t, t) -> logits`` for classifier
            guidance with scale ``classifier_scale`` (:class:`~scorekit.guidance.ClassifierGuidance`).
        check_finite: raise :class:`ScorekitError` at the first network evaluation whose state
            or model output holds NaN or Inf, naming it (:class:`~scorekit.samplers._common.
            FiniteStates`); ``False`` lets the sampler run on and return what it gets. On a device
            other than the CPU the check does not stop the step loop to read the device: the
            sampler runs to its end and the same error is raised then (:func:`defer_finite_checks`).
        compile: ``torch.compile`` the network (``True``, or the name of a backend such as
            ``"aot_eager"``), once per network: the compiled network is kept on it, so later calls
            and every batch of :func:`sample_batches` reuse it (:mod:`scorekit.acceleration`).
        precision: ``"fp32"``, or ``"bf16"`` to evaluate the network under bfloat16 autocast while
            the sampler's state and steps stay in ``x_T``'s dtype (:mod:`scorekit.acceleration`).
        **options: the sampler's own options, e.g. ``eta`` for DDIM, ``variance`` for DDPM.

    Returns:
        The samples ``x_0``, shaped and typed like ``x_T``.
    """
    fn = _lookup(sampler)
    options = check_sampler_options(sampler, options)
    model = prepare_network(model, compile=compile, precision=precision)
    denoiser, process = _model_denoiser(model, betas, alpha_bar, process, prediction_type, time_input)
    denoiser = guided(denoiser, guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                      guidance_rescale=guidance_rescale, classifier=classifier,
                      classifier_scale=classifier_scale, clip=clip, threshold=threshold,
                      threshold_max=threshold_max)
    condition = as_condition(condition)
    if condition is not None:
        if not hasattr(denoiser, "with_condition"):
            raise ScorekitError("condition= needs a model, or a scorekit.Denoiser, that takes a condition; "
                                "a plain function D(x_t, t) takes none")
        denoiser = denoiser.with_condition(condition.for_batch(x_T.shape[0]))
    if timesteps is None:
        timesteps = make_timesteps(process, num_steps, spacing)
    if not isinstance(check_finite, bool):
        raise ScorekitError(f"check_finite must be True or False, got {check_finite!r}")
    for name, fn_arg in (("callback", callback), ("time_input", time_input)):
        if fn_arg is not None and not callable(fn_arg):
            raise ScorekitError(f"{name} must be a function or None, got {type(fn_arg).__name__}")
    if check_finite:
        denoiser = FiniteStates(denoiser, sampler, deferred=defer_finite_checks(x_T, sampler))
    try:
        with torch.no_grad():
            x0 = fn(denoiser, process, x_T, timesteps, generator=generator, callback=callback,
                    progress=progress, **options)
    except Exception:
        if check_finite:        # a non-finite value found by a deferred check explains the failure
            denoiser.finish()
        raise
    if check_finite:
        denoiser.finish(x0)
    return x0


def defer_finite_checks(x_T: Tensor, sampler: str) -> bool:
    """Whether ``check_finite`` reads the device once, at the end of the sampler, rather than at
    every network evaluation: on every device but the CPU (where reading a value costs no wait),
    except for the samplers that bring the state to the host at every step anyway
    (``ode_adaptive``, whose solver runs on the CPU)."""
    from .samplers.options import ADAPTIVE_SAMPLERS

    return isinstance(x_T, Tensor) and not reads_are_free(x_T) and sampler not in ADAPTIVE_SAMPLERS


def _model_denoiser(model, betas, alpha_bar, process, prediction_type, time_input):
    """``(denoiser, process)`` from a model and its schedule (``betas``, ``alpha_bar`` or ``process``),
    as :func:`sample` and :func:`invert` take them; a ready denoiser brings its own process."""
    ready = isinstance(model, (Denoiser, DenoiserWrapper))        # possibly wrapped
    if process is None and ready and betas is None and alpha_bar is None:
        process = model.process
    if process is None:
        if betas is None and alpha_bar is None:
            raise ScorekitError("give the model's schedule: betas=..., alpha_bar=... or process=...")
        if betas is not None and alpha_bar is not None:
            raise ScorekitError("give either betas or alpha_bar, not both")
        process = DDPM(betas=betas) if betas is not None else DDPM(alpha_bar=alpha_bar)
    elif betas is not None or alpha_bar is not None:
        raise ScorekitError("give either a process or a schedule (betas / alpha_bar), not both")
    elif not isinstance(process, GaussianProcess):
        raise ScorekitError(f"process must be a scorekit.processes.GaussianProcess (e.g. "
                            f"DDPM(schedule='cosine')), got {type(process).__name__}")
    if ready:
        if process is not None and model.process is not process and model.process.config() != process.config():
            raise ScorekitError("the denoiser was built for another process than the one given")
        return model, process
    return Denoiser(model, process, prediction_type, time_input=time_input), process


def invert(model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, *, betas=None, alpha_bar=None,
           process: GaussianProcess | None = None, prediction_type: str = "eps", num_steps: int = 50,
           spacing: str | None = None, timesteps=None, fixed_point_iters: int = 0,
           callback: Callback | None = None, progress: bool = False,
           time_input: Callable[[Tensor], Tensor] | None = None, condition=None) -> Tensor:
    r"""DDIM inversion: the latents ``x_T`` from which deterministic DDIM returns the data ``x0``.

    The counterpart of :func:`sample` for the other direction (inversion starts from data, so it is
    not one of the :data:`~scorekit.samplers.SAMPLERS`): it runs
    :func:`scorekit.samplers.ddim_invert` on the grid :func:`sample` would use with the same
    ``num_steps`` / ``spacing`` / ``timesteps``, so that

        x_T = scorekit.invert(model, x0, ..., num_steps=n)
        scorekit.sample(model, x_T, ..., sampler="ddim", num_steps=n)     # ~ x0

    Each step is the DDIM step (Song et al. 2021, eq. 12 with ``eta = 0``) solved for its other
    end with ``eps`` taken at the known point, the same first-order Euler step of the
    probability-flow ODE, so the round trip ``x0 -> x_T -> x0`` errs by ``O(1 / n)``;
    ``fixed_point_iters = k`` refines each step towards the exact inverse of the sampling step
    (:func:`~scorekit.samplers.ddim_invert`). The model, schedule and ``prediction_type`` arguments
    are those of :func:`sample`; ``condition`` inverts under a condition (class labels or a
    :class:`~scorekit.conditioning.Condition`), as :func:`sample` samples under one.

    Returns:
        ``x_T``, shaped and typed like ``x0``.
    """
    from .samplers import ddim_invert

    denoiser, process = _model_denoiser(model, betas, alpha_bar, process, prediction_type, time_input)
    condition = as_condition(condition)
    if condition is not None:
        denoiser = denoiser.with_condition(condition.for_batch(x0.shape[0]))
    if timesteps is None:
        timesteps = make_timesteps(process, num_steps, spacing)
    with torch.no_grad():
        return ddim_invert(denoiser, process, x0, timesteps, fixed_point_iters=fixed_point_iters,
                           callback=callback, progress=progress)


@dataclasses.dataclass
class BatchedSamples:
    """What :func:`sample_batches` returns: the samples and what they cost."""

    #: the samples ``x_0``, shaped like ``x_T`` and on its device
    x: Tensor
    #: the network evaluations of each batch (:func:`scorekit.nfe.count_network_calls`)
    calls: list[int]
    #: wall time of the sampling, in seconds
    seconds: float
    #: evaluations (each with its gradient) of the classifier of classifier guidance, all batches
    classifier_calls: int = 0
    #: wall time of each batch, in seconds (the first includes compiling the network, if asked)
    batch_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def nfe(self) -> float:
        """Network evaluations per sample: each evaluation covers a whole batch, so this is the
        mean of :attr:`calls` over the batches (the same for every batch unless the sampler is
        adaptive)."""
        return sum(self.calls) / max(len(self.calls), 1)

    @property
    def samples_per_second(self) -> float:
        """Samples drawn per second of :attr:`seconds`."""
        return self.x.shape[0] / self.seconds if self.seconds > 0 else float("inf")

    @property
    def calls_per_second(self) -> float:
        """Network evaluations (each on a whole batch) per second of :attr:`seconds`."""
        return sum(self.calls) / self.seconds if self.seconds > 0 else float("inf")


def sample_batches(model, x_T: Tensor, *, batch_size: int, condition=None, device=None,
                   generator: torch.Generator | None = None, compile=False, precision: str = "fp32",
                   **kwargs) -> BatchedSamples:
    """:func:`sample` from ``x_T`` batch by batch, counting the network evaluations.

    Runs :func:`sample` on ``x_T[lo:hi]`` (and ``condition[lo:hi]``) for consecutive batches of
    ``batch_size`` samples, so ``N`` samples need the memory of one batch on ``device``, and
    gathers the samples. On a GPU ``batch_size`` is the knob of throughput: one network call per
    step serves the whole batch, so the largest batch that fits in memory draws the most samples
    per second.

    Args:
        model: what :func:`sample` takes: a network or a ready denoiser, e.g.
            :func:`scorekit.load_denoiser` of a run.
        x_T: the initial noise of all ``N`` samples, shape ``(N, ...)``.
        batch_size: the most samples per batch (per network call; classifier-free guidance
            evaluates the network on twice as many rows in that one call).
        condition: optional per-sample condition (class labels ``(N,)`` or a
            :class:`~scorekit.conditioning.Condition`), sliced batch by batch.
        device: where each batch is sampled (default: ``x_T``'s device); the samples are gathered
            on ``x_T``'s device.
        compile, precision: as in :func:`sample`; the network is compiled once, before the first
            batch, and every batch reuses it.
        generator: given to every batch in turn. A stochastic sampler draws from it batch after
            batch, so its samples depend on ``batch_size`` (and are reproducible from the
            generator's state); a deterministic one on a fixed grid (``ddim`` with ``eta = 0``, the
            fixed-step ODE solvers) gives the samples of one :func:`sample` call on all of ``x_T``,
            whatever ``batch_size`` (up to rounding where the network's arithmetic depends on the
            batch size). ``ode_adaptive`` chooses one step size for its whole batch, so its samples
            agree across batch sizes only to within its ``rtol`` / ``atol``.
        **kwargs: the other arguments of :func:`sample`, the same for every batch: ``process``,
            ``sampler``, ``num_steps``, ``spacing`` or ``timesteps``, guidance, ``clip``,
            ``progress`` (a bar per batch), ``check_finite``, the sampler's options, ...

    Returns:
        :class:`BatchedSamples`: the samples, the network evaluations of each batch (``.nfe`` per
        sample), the classifier evaluations of classifier guidance, and the seconds taken (in all
        and per batch; with them ``.samples_per_second`` and ``.calls_per_second``).
    """
    import time

    from .conditioning import as_condition
    from .nfe import NFECounter, count_network_calls

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScorekitError(f"batch_size must be a positive whole number, got {batch_size!r}")
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
        got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ScorekitError(f"x_T must be a tensor of shape (N, ...) with N >= 1, got {got}")
    num = x_T.shape[0]
    condition = as_condition(condition)
    if condition is not None:
        condition = condition.for_batch(num)
    device = x_T.device if device is None else torch.device(device)
    classifier = kwargs.pop("classifier", None)
    classifier_counter = None if classifier is None else NFECounter(classifier)
    model = prepare_network(model, compile=compile, precision=precision)
    parts, calls, batch_seconds = [], [], []
    start = time.perf_counter()
    for lo in range(0, num, batch_size):
        hi = min(lo + batch_size, num)
        begun = time.perf_counter()
        counted, counter = count_network_calls(model)
        x = sample(counted, x_T[lo:hi].to(device), generator=generator,
                   condition=None if condition is None else condition[lo:hi].to(device),
                   classifier=classifier_counter, **kwargs)
        parts.append(x.to(x_T.device))
        calls.append(counter.calls)
        if device.type == "cuda":               # the batch's kernels may still be running
            torch.cuda.synchronize(device)
        batch_seconds.append(time.perf_counter() - begun)
    seconds = time.perf_counter() - start
    return BatchedSamples(torch.cat(parts), calls, seconds,
                          0 if classifier_counter is None else classifier_counter.calls, batch_seconds)
