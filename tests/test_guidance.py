"""Conditions and guidance against exact labelled Gaussian mixtures.

A labelled mixture (each component carries a class) has closed-form class-conditional denoisers
``E[x_0 | x_t, y]`` and an exact noisy classifier ``p(y | x_t)``, so guidance identities hold to
float precision: classifier guidance with the exact classifier at scale 1 on the exact
unconditional denoiser *is* the exact conditional denoiser (Bayes' rule), and classifier-free
guidance is a closed-form combination of two exact denoisers."""
import math

import pytest
import torch

import scorekit
from scorekit import (DDPM, EDM, SAMPLERS, VESDE, VPSDE, ClassifierFreeGuidance, ClassifierGuidance,
                      Condition, Denoiser, ScorekitError, SimpleVE, SubVPSDE)
from scorekit.conditioning import NULL_LABEL
from scorekit.guidance import guided, noise_level
from scorekit.prediction import convert
from scorekit.thresholding import ClipX0, ThresholdX0
from scorekit.toy import GaussianMixture, LabelledMixture, labelled_eight_gaussians, multiscale_2d
from scorekit.variances import LearnedVarianceDenoiser

from test_samplers import CONFIGS, PROCESSES, assert_matches_mixture, grid

F64 = torch.float64
ALL_PROCESSES = [DDPM(), DDPM(schedule="cosine"), SimpleVE(200), VPSDE(), SubVPSDE(), VESDE(), EDM()]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def labelled_multiscale() -> LabelledMixture:
    """multiscale_2d with its five components in two classes: the broad one and the rotated one
    in class 0, the three narrow ones in class 1 (scales a factor 50 apart within a class)."""
    return LabelledMixture(multiscale_2d(), [0, 1, 1, 0, 1])


def times(process):
    """A few times from near the data to near the prior (exact in float32, which networks get)."""
    if process.discrete:
        return [int(process.t_min) + 3, int(process.t_max) // 3, int(process.t_max) - 2]
    lo, hi = float(process.t_min), float(process.t_max)
    return [float(torch.tensor(lo + f * (hi - lo), dtype=torch.float32)) for f in (0.01, 0.3, 0.9)]


def points(process, t, n=7, seed=0):
    scale = float(process.sigma(t)) + 2.0
    return torch.randn(n, 2, generator=gen(seed), dtype=F64) * scale


LABELS = torch.tensor([0, 1, 0, 1, 1, 0, NULL_LABEL])


# --- the labelled mixture itself --------------------------------------------------------------------

def test_labelled_mixture_matches_bayes_rule_on_the_class_mixtures():
    """p(y | x_t) and E[x_0 | x_t, y] against an independent route: each class's own mixture,
    diffused, and Bayes' rule with the class prior."""
    lm = labelled_multiscale()
    x = torch.randn(50, 2, generator=gen(1), dtype=F64) * 2
    for alpha, sigma in [(1.0, 0.0), (0.9, 0.4), (0.2, 1.5)]:
        log_joint = torch.stack([
            torch.log(lm.class_weights[y]) + lm.class_mixture(y).diffused(alpha, sigma).log_prob(x)
            for y in range(2)], dim=1)
        expected = log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)
        assert torch.allclose(lm.log_class_posterior(x, alpha, sigma), expected, atol=1e-10)
        if sigma > 0:
            for y in range(2):
                labels = torch.full((50,), y)
                assert torch.allclose(lm.posterior_mean(x, alpha, sigma, labels),
                                      lm.class_mixture(y).posterior_mean(x, alpha, sigma), atol=1e-10)
            null = torch.full((50,), NULL_LABEL)
            assert torch.allclose(lm.posterior_mean(x, alpha, sigma, null),
                                  lm.mixture.posterior_mean(x, alpha, sigma), atol=1e-12)


def test_labelled_mixture_samples_each_class():
    lm = labelled_multiscale()
    x, y = lm.sample(3000, 1, generator=gen(2), dtype=F64)
    assert (y == 1).all()
    assert_matches_mixture(x, lm.class_mixture(1))
    x, y = lm.sample(4000, generator=gen(3))
    share = (y == 1).double().mean()
    p1 = lm.class_weights[1]
    assert abs(share - p1) < 4 * math.sqrt(p1 * (1 - p1) / 4000)


def test_labelled_mixture_refuses_bad_classes():
    with pytest.raises(ScorekitError, match="every class"):
        LabelledMixture(multiscale_2d(), [0, 2, 2, 0, 2])
    with pytest.raises(ScorekitError, match="one per component"):
        LabelledMixture(multiscale_2d(), [0, 1])


# --- conditions ---------------------------------------------------------------------------------------

def test_condition_null_cat_and_batch():
    c = Condition(labels=torch.tensor([2, 0, 1]))
    assert c.batch_size == 3
    assert c.null().labels.tolist() == [NULL_LABEL] * 3 and c.null().is_null.all()
    both = c.cat(c.null())
    assert both.labels.tolist() == [2, 0, 1, -1, -1, -1]
    assert Condition(labels=torch.tensor([4])).for_batch(3).labels.tolist() == [4, 4, 4]
    assert c.network_kwargs().keys() == {"y"}
    with pytest.raises(ScorekitError, match="for 3 samples but the batch has 2"):
        c.for_batch(2)
    with pytest.raises(ScorekitError, match="integers"):
        Condition(labels=torch.tensor([0.5]))


def test_networks_read_the_null_label_as_no_label():
    from scorekit.models import MLP

    net = MLP(2, hidden=16, depth=1, num_classes=3)
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    assert torch.equal(net(x, t, torch.full((4,), -1)), net(x, t, None))
    assert torch.equal(net(x, t, torch.full((4,), 3)), net(x, t, None))


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
def test_a_bound_condition_gives_the_class_conditional_denoiser(process):
    lm = labelled_multiscale()
    for kind in ("x0", "eps", "v"):
        d = Denoiser(lm.model(process, kind), process, kind)
        assert d.conditional and d.num_classes == 2
        for t in times(process):
            x = points(process, t)
            a, s = process.alpha(t), process.sigma(t)
            assert torch.allclose(d.with_condition(LABELS)(x, t), lm.posterior_mean(x, a, s, LABELS), atol=1e-8)
            assert torch.allclose(d(x, t), lm.mixture.posterior_mean(x, a, s), atol=1e-8)


# --- classifier guidance --------------------------------------------------------------------------------

@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
@pytest.mark.parametrize("kind", ["x0", "eps", "v"])
def test_classifier_guidance_at_scale_one_with_the_exact_classifier_is_the_conditional_denoiser(process, kind):
    """grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t): guiding the exact
    unconditional denoiser with the exact noisy classifier gives E[x_0 | x_t, y], pointwise."""
    lm = labelled_multiscale()
    model = {"x0": lm.mixture.x0_model, "eps": lm.mixture.eps_model, "v": lm.mixture.v_model}[kind](process)
    d = ClassifierGuidance(Denoiser(model, process, kind), lm.classifier(process), 1.0).with_condition(LABELS)
    for t in times(process):
        x = points(process, t)
        exact = lm.posterior_mean(x, process.alpha(t), process.sigma(t), LABELS)
        # conversions through eps/v divide by alpha or sigma: compare relative to the data scale
        assert torch.allclose(d(x, t), exact, atol=1e-9 * (1 + float(process.sigma(t)) ** 2)), (t, kind)


def test_classifier_guidance_scales_the_classifier_gradient():
    """x0_s = x0 + s sigma^2 / alpha grad log p(y | x_t), checked against autograd by hand."""
    lm, process = labelled_multiscale(), VPSDE()
    t = times(process)[1]
    x = points(process, t)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    a, s = process.alpha(t).item(), process.sigma(t).item()
    xg = x.clone().requires_grad_(True)
    logp = lm.log_class_posterior(xg, a, s).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(logp, xg)
    base = Denoiser(lm.mixture.x0_model(process), process, "x0")
    for scale in (0.0, 0.5, 3.0):
        d = ClassifierGuidance(base, lm.classifier(process), scale).with_condition(y)
        assert torch.allclose(d(x, t), base(x, t) + scale * s ** 2 / a * grad, atol=1e-12)


def test_classifier_guidance_reproduces_the_class_conditional_law():
    """Sampling (DDPM, 250 steps) with the guided exact model draws p(x | y): SWD at the metric's
    noise floor and mode weights within their standard errors, for each class of one batch."""
    lm, process = labelled_multiscale(), DDPM()
    base = Denoiser(lm.mixture.eps_model(process), process, "eps")
    y = torch.arange(4000) % 2
    x_T = process.prior_sample((4000, 2), generator=gen(10), dtype=F64)
    x = scorekit.sample(base, x_T, sampler="ddpm", num_steps=250, generator=gen(20),
                        classifier=lm.classifier(process), classifier_scale=1.0, condition=y)
    for c in range(2):
        assert_matches_mixture(x[y == c], lm.class_mixture(c))


GUIDED_CONFIGS = [(name, options, PROCESSES[i % len(PROCESSES)]) for i, (name, options) in enumerate(CONFIGS)]


@pytest.mark.parametrize("name,options,process", GUIDED_CONFIGS,
                         ids=[f"{n}-{o}-{p!r}" for n, o, p in GUIDED_CONFIGS])
def test_conformance_with_classifier_guidance(name, options, process):
    """Every sampler (each on one of the conformance processes, in turn) serves a guided denoiser
    unchanged: classifier guidance of the exact model samples the exact class-conditional law."""
    lm = labelled_multiscale()
    d = ClassifierGuidance(Denoiser(lm.mixture.x0_model(process), process, "x0"), lm.classifier(process))
    x_T = process.prior_sample((1000, 2), generator=gen(40), dtype=F64)
    x = SAMPLERS[name](d.with_condition(1), process, x_T, grid(process, 250), generator=gen(41), **options)
    assert_matches_mixture(x, lm.class_mixture(1))


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
def test_exact_cfg_at_weight_w_is_exact_classifier_guidance_at_scale_w(process):
    """D(c) - D(null) = (sigma^2 / alpha) grad log p(c | x_t) for exact models, so the two
    guidance methods coincide at every scale (the implicit classifier of CFG is the true one)."""
    lm = labelled_multiscale()
    cond = Denoiser(lm.model(process, "x0"), process, "x0", condition=LABELS)
    uncond = Denoiser(lm.mixture.x0_model(process), process, "x0")
    for t in times(process):
        x = points(process, t)
        for w in (0.5, 3.0):
            cfg = ClassifierFreeGuidance(cond, w)(x, t)
            cg = ClassifierGuidance(uncond, lm.classifier(process), w).with_condition(LABELS)(x, t)
            assert torch.allclose(cfg, cg, atol=1e-8 * w * (1 + float(process.sigma(t)) ** 2)), (t, w)


# --- classifier-free guidance ------------------------------------------------------------------------------

class Counting:
    """A network that counts its calls and the rows it was called on."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0
        self.num_classes = model.num_classes

    def __call__(self, x, t, y=None):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x, t, y)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
def test_cfg_is_the_closed_form_combination_in_every_prediction_space(process):
    """w = 1: the conditional denoiser; w = 0: the unconditional; any w: D(null) + w (D(c) - D(null)),
    and the same combination of the eps, v and score predictions (affine in x0 with one coefficient
    pair for both passes, weights summing to one), from one network call on the doubled batch."""
    lm = labelled_multiscale()
    net = Counting(lm.model(process, "eps"))
    d = Denoiser(net, process, "eps", condition=LABELS)
    for t in times(process):
        x = points(process, t)
        a, s = process.alpha(t), process.sigma(t)
        cond, uncond = lm.posterior_mean(x, a, s, LABELS), lm.mixture.posterior_mean(x, a, s)
        tol = 1e-8 * (1 + float(s) ** 2)
        assert torch.allclose(ClassifierFreeGuidance(d, 1.0)(x, t), cond, atol=tol)
        assert torch.allclose(ClassifierFreeGuidance(d, 0.0)(x, t), uncond, atol=tol)
        for w in (0.5, 2.0, 7.5, -1.0):
            net.calls = net.rows = 0
            g = ClassifierFreeGuidance(d, w)(x, t)
            assert (net.calls, net.rows) == (1, 2 * x.shape[0])
            assert torch.allclose(g, uncond + w * (cond - uncond), atol=tol * (1 + abs(w)))
            for space in ("eps", "v", "score"):
                c_, u_ = (convert(v, "x0", space, x, a, s) for v in (cond, uncond))
                assert torch.allclose(convert(g, "x0", space, x, a, s), u_ + w * (c_ - u_),
                                      rtol=1e-6, atol=1e-6 * (1 + abs(w)))
        # the null-label sample is unguided
        assert torch.allclose(ClassifierFreeGuidance(d, 5.0)(x, t)[-1], uncond[-1], atol=tol)


def test_cfg_guidance_interval_guides_only_inside():
    lm, process = labelled_multiscale(), EDM()
    net = Counting(lm.model(process, "x0"))
    d = Denoiser(net, process, "x0", condition=LABELS)
    g = ClassifierFreeGuidance(d, 3.0, interval=(0.5, 5.0))
    for t in (0.25, 1.0, 4.0, 20.0):
        x = points(process, t)
        level = float(noise_level(process, t))
        net.calls = net.rows = 0
        out = g(x, t)
        inside = 0.5 < level <= 5.0
        assert net.rows == (2 if inside else 1) * x.shape[0] and net.calls == 1
        expected = ClassifierFreeGuidance(d, 3.0)(x, t) if inside else d(x, t)
        assert torch.allclose(out, expected, atol=1e-10)
    # per-sample times: guided where inside, conditional elsewhere
    t = torch.tensor([0.25, 1.0, 4.0, 20.0, 1.0, 0.25, 4.0], dtype=F64)
    x = points(process, 1.0)
    out = g(x, t)
    guided_all, plain = ClassifierFreeGuidance(d, 3.0)(x, t), d(x, t)
    for i in range(len(t)):
        expected = guided_all[i] if 0.5 < float(t[i]) <= 5.0 else plain[i]
        assert torch.allclose(out[i], expected, atol=1e-10)
    assert not torch.allclose(guided_all, plain)


@pytest.mark.parametrize("space", ["eps", "v", "x0"])
def test_cfg_rescale_matches_the_conditional_spread(space):
    """Lin et al. 2024: g' = phi g std(c)/std(g) + (1 - phi) g in the chosen space."""
    lm, process = labelled_eight_gaussians(2), VPSDE()
    d = Denoiser(lm.model(process, "v"), process, "v", condition=torch.tensor([0, 1, 1, 0, 1, 0, 0]))
    t = times(process)[1]
    x = torch.randn(7, 2, generator=gen(3), dtype=F64)
    a, s = process.alpha(t).item(), process.sigma(t).item()
    plain = ClassifierFreeGuidance(d, 4.0)(x, t)
    cond = d(x, t)
    g, c = convert(plain, "x0", space, x, a, s), convert(cond, "x0", space, x, a, s)
    ratio = c.std(dim=1, keepdim=True) / g.std(dim=1, keepdim=True)
    for phi in (0.0, 0.7, 1.0):
        out = ClassifierFreeGuidance(d, 4.0, rescale=phi, rescale_space=space)(x, t)
        expected = phi * g * ratio + (1 - phi) * g
        assert torch.allclose(convert(out, "x0", space, x, a, s), expected, atol=1e-10)
    full = convert(ClassifierFreeGuidance(d, 4.0, rescale=1.0, rescale_space=space)(x, t), "x0", space, x, a, s)
    assert torch.allclose(full.std(dim=1), c.std(dim=1), atol=1e-10)


def test_cfg_sampling_trades_diversity_for_class_fidelity():
    """The exact model of two overlapping classes, sampled with growing w from the same x_T and
    noise: the class posterior of the samples rises and the within-class spread shrinks, each
    step by more than 4 standard errors of the paired difference."""
    mixture = GaussianMixture([0.5, 0.5], [[-0.6, 0.0], [0.6, 0.0]], stds=0.5)
    lm, process, n = LabelledMixture(mixture, [0, 1]), DDPM(schedule="cosine"), 2000
    d = Denoiser(lm.model(process, "eps"), process, "eps")
    x_T = process.prior_sample((n, 2), generator=gen(7), dtype=F64)
    fidelity, spread = [], []
    for w in (0.0, 1.0, 2.0, 4.0):
        x = scorekit.sample(d, x_T, sampler="ddim", num_steps=50, condition=1, guidance_scale=w)
        fidelity.append(lm.log_class_posterior(x)[:, 1].exp())
        spread.append(((x - x.mean(0)) ** 2).sum(1))
    for a, b in zip(fidelity, fidelity[1:]):
        diff = b - a
        assert diff.mean() > 4 * diff.std() / math.sqrt(n)
    for a, b in zip(spread, spread[1:]):
        diff = a - b
        assert diff.mean() > 4 * diff.std() / math.sqrt(n)


def test_every_sampler_serves_cfg_as_the_closed_form():
    """The batched CFG denoiser and a plain function computing the closed form give the same
    samples through every sampler (same noise), to float precision."""
    lm, process = labelled_multiscale(), DDPM(schedule="cosine")
    d = Denoiser(lm.model(process, "eps"), process, "eps", condition=torch.tensor([0, 1] * 8))

    def closed_form(x, t):
        a, s = process.alpha(t), process.sigma(t)
        c, u = lm.posterior_mean(x, a, s, torch.tensor([0, 1] * 8)), lm.mixture.posterior_mean(x, a, s)
        return u + 2.5 * (c - u)

    x_T = process.prior_sample((16, 2), generator=gen(9), dtype=F64)
    for name, options in CONFIGS:
        a = SAMPLERS[name](ClassifierFreeGuidance(d, 2.5), process, x_T, grid(process, 20), generator=gen(1), **options)
        b = SAMPLERS[name](closed_form, process, x_T, grid(process, 20), generator=gen(1), **options)
        # the adaptive solver (rtol = atol = 1e-5) may take other steps on rounding differences:
        # its results then agree to its own error tolerance
        tol = 10 * 1e-5 if name == "ode_adaptive" else 1e-8
        assert torch.allclose(a, b, atol=tol), (name, options, (a - b).abs().max())


# --- composition and pass-through -----------------------------------------------------------------------------

def learned_variance_model(lm, process):
    """An exact eps model with a variance head whose raw output depends on the label."""
    inner = lm.model(process, "eps")

    def model(x, t, y=None):
        eps = inner(x, t, y)
        code = torch.zeros(x.shape[0], dtype=x.dtype) if y is None else y.to(x.dtype)
        return torch.cat([eps, torch.tanh(code)[:, None].expand_as(x) * 0.5], dim=1)

    model.num_classes = lm.num_classes
    return model


def test_wrappers_pass_a_learned_variance_through():
    lm, process = labelled_multiscale(), DDPM()
    d = LearnedVarianceDenoiser(learned_variance_model(lm, process), process, "eps", condition=LABELS)
    x, t, s = points(process, 500), 500, 480
    base_x0, base_lv = d.x0_and_log_variance(x, t, s)
    for wrapped in (ClipX0(d, 1.0), ThresholdX0(d, 0.9, 2.0), ClassifierFreeGuidance(d, 3.0),
                    ClipX0(ClassifierFreeGuidance(d, 3.0), 2.0)):
        x0, lv = wrapped.x0_and_log_variance(x, t, s)
        assert torch.allclose(x0, wrapped(x, t), atol=1e-12)
        assert torch.equal(lv, base_lv)                      # the conditional pass's variance
    samples = scorekit.sample(d, process.prior_sample((7, 2), generator=gen(0), dtype=F64), sampler="ddpm",
                              num_steps=20, variance="learned", generator=gen(1), guidance_scale=2.0, clip=3.0)
    assert torch.isfinite(samples).all()
    assert not hasattr(ClipX0(Denoiser(lm.model(process), process, "x0"), 1.0), "x0_and_log_variance")


def test_wrappers_compose_and_rebind():
    lm, process = labelled_multiscale(), VPSDE()
    d = Denoiser(lm.model(process, "x0"), process, "x0")
    g = ClipX0(ClassifierFreeGuidance(d, 2.0), 1.5)
    bound = g.with_condition(LABELS)
    assert bound.condition.labels.tolist() == LABELS.tolist() and g.condition is None
    assert bound.process is process and bound.prediction_type == "x0" and bound.num_classes == 2
    t = times(process)[2]
    x = points(process, t)
    assert torch.allclose(bound(x, t), ClassifierFreeGuidance(d.with_condition(LABELS), 2.0)(x, t).clamp(-1.5, 1.5))
    assert guided(d, guidance_scale=2.0, clip=1.5).with_condition(LABELS)(x, t).equal(bound(x, t))


@pytest.mark.parametrize("process", [DDPM(), VPSDE(), EDM()], ids=repr)
def test_guided_puts_classifier_guidance_inside_classifier_free_guidance(process):
    """guided()'s documented order: classifier guidance first, then classifier-free guidance, which
    evaluates the classifier-guided denoiser under both conditions. With exact models the
    classifier-guided denoiser under label c is D'(c) = D(c) + s (sigma^2 / alpha) grad log p(c | x_t)
    and under the null label D'(null) = D(null) (no gradient), so

        guided = D'(null) + w (D'(c) - D'(null)) = D(null) + w (D(c) + s k g - D(null)),

    computed here by hand from the mixture's closed forms and autograd of its exact log p(c | x_t).
    (The other order, CFG inside, would add s k g once instead of w times.) Float64 rounding of
    closed forms, with the eps/v-free x0 model: 1e-9 relative to the data scale."""
    lm = labelled_multiscale()
    d = Denoiser(lm.model(process, "x0"), process, "x0")
    w, s = 3.0, 0.5
    g = guided(d, guidance_scale=w, classifier=lm.classifier(process), classifier_scale=s).with_condition(LABELS)
    keep = LABELS != NULL_LABEL
    for t in times(process):
        x = points(process, t)
        a, sig = process.alpha(t).item(), process.sigma(t).item()
        xg = x.clone().requires_grad_(True)
        logp = lm.log_class_posterior(xg, a, sig).gather(1, LABELS.clamp_min(0)[:, None])[:, 0]
        (grad,) = torch.autograd.grad((logp * keep).sum(), xg)
        d_c = lm.posterior_mean(x, a, sig, LABELS) + s * sig ** 2 / a * grad
        d_u = lm.mixture.posterior_mean(x, a, sig)
        want = d_u + w * (d_c - d_u)
        assert torch.allclose(g(x, t), want, rtol=0, atol=1e-9 * (1 + sig ** 2)), (t, (g(x, t) - want).abs().max())
        # the two orders differ by (w - 1) s k g: far above the tolerance at every time tested
        assert ((w - 1) * s * sig ** 2 / a * grad).abs().max() > 1e-3


# --- bad input ------------------------------------------------------------------------------------------------

def test_guidance_refuses_bad_input():
    lm, process = labelled_multiscale(), DDPM()
    uncond = Denoiser(lm.mixture.eps_model(process), process, "eps")
    cond = Denoiser(lm.model(process, "eps"), process, "eps")
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ScorekitError, match="needs a conditional model"):
        ClassifierFreeGuidance(uncond, 3.0)
    for bad in (float("nan"), float("inf"), "a lot"):
        with pytest.raises(ScorekitError, match="guidance scale must be a"):
            ClassifierFreeGuidance(cond, bad)
        with pytest.raises(ScorekitError, match="classifier scale must be a"):
            ClassifierGuidance(uncond, lm.classifier(process), bad)
    with pytest.raises(ScorekitError, match="class 2 is outside the model's classes 0..1"):
        cond.with_condition(torch.tensor([0, 2]))
    with pytest.raises(ScorekitError, match="the model is unconditional"):
        uncond.with_condition(torch.tensor([0, 1]))
    with pytest.raises(ScorekitError, match="needs a condition"):
        ClassifierFreeGuidance(cond, 2.0)(x, 10)
    with pytest.raises(ScorekitError, match="needs a condition"):
        ClassifierGuidance(uncond, lm.classifier(process))(x, 10)
    with pytest.raises(ScorekitError, match="0 <= lo < hi"):
        ClassifierFreeGuidance(cond, 2.0, interval=(3.0, 1.0))
    with pytest.raises(ScorekitError, match=r"rescale phi must lie in \[0, 1\]"):
        ClassifierFreeGuidance(cond, 2.0, rescale=1.5)
    with pytest.raises(ScorekitError, match="outside the classifier's classes 0..1"):
        ClassifierGuidance(uncond, lm.classifier(process)).with_condition(torch.tensor([0, 5]))(x, 10)
    three = LabelledMixture(multiscale_2d(), [0, 1, 2, 0, 1])
    with pytest.raises(ScorekitError, match="the classifier has 3 classes but the model has 2"):
        ClassifierGuidance(cond, three.classifier(process))
    with pytest.raises(ScorekitError, match="needs a guidance scale"):
        guided(cond, guidance_interval=(0.1, 1.0))
    from scorekit.train.checkpoint import NoisyClassifier

    exact = lm.classifier(process)
    with pytest.raises(ScorekitError, match=r"trained on samples of shape \(3,\) but the model draws \(2,\)"):
        ClassifierGuidance(uncond, NoisyClassifier(exact, process, 2, (3,))).with_condition(1)(x, 10)
    with pytest.raises(ScorekitError, match="another process"):
        ClassifierGuidance(uncond, NoisyClassifier(exact, DDPM(schedule="cosine"), 2, (2,)))
    with pytest.raises(ScorekitError, match="the model is unconditional"):
        scorekit.sample(lm.mixture.denoiser(process), x, process=process, condition=1)


# --- likelihood under a condition ---------------------------------------------------------------------------

def test_nll_batches_under_a_condition_is_the_class_mixtures_likelihood():
    """-log p(x | y) of the conditional model bound to y, batch by batch, equals the likelihood
    under the class mixture's own exact denoiser, computed in one call."""
    from scorekit.likelihood import nll_batches, ode_likelihood

    lm, process = labelled_multiscale(), VPSDE()
    d = Denoiser(lm.model(process, "x0"), process, "x0")
    x, y = lm.sample(7, generator=gen(4), dtype=F64)
    options = dict(divergence="exact", rtol=1e-6, atol=1e-6)
    got = nll_batches(d, x, method="ode", batch_size=3, condition=y, **options)
    assert len(got.calls) == 3 and got.nfe_per_batch > 0
    for c in range(2):
        own = Denoiser(lm.class_mixture(c).x0_model(process), process, "x0")
        expected = ode_likelihood(own, process, x[y == c], **options).bits_per_dim
        assert torch.allclose(got.bits_per_dim[y == c], expected.to(F64), atol=1e-4)
    elbo = nll_batches(ddpm_denoiser(lm), x, method="elbo", batch_size=4, condition=y, data_bits=None,
                       generator=gen(5))
    assert elbo.bits_per_dim.shape == (7,) and torch.isfinite(elbo.bits_per_dim).all()
    with pytest.raises(ScorekitError, match="unknown likelihood method"):
        nll_batches(d, x, method="bogus")


def ddpm_denoiser(lm):
    process = DDPM(num_steps=50)
    return Denoiser(lm.model(process, "eps"), process, "eps")


def test_invert_under_a_condition_round_trips_with_sample():
    """DDIM inversion bound to a class, then DDIM sampling under the same class, returns the data
    (first-order error, small with many steps); under the other class it does not."""
    lm, process = labelled_eight_gaussians(2), DDPM()
    d = Denoiser(lm.model(process, "eps"), process, "eps")
    x0, y = lm.sample(6, generator=gen(12), dtype=F64)
    x_T = scorekit.invert(d, x0, num_steps=500, condition=y)
    back = scorekit.sample(d, x_T, sampler="ddim", num_steps=500, condition=y)
    assert torch.allclose(back, x0, atol=0.05)
    other = scorekit.sample(d, x_T, sampler="ddim", num_steps=500, condition=1 - y)
    assert not torch.allclose(other, x0, atol=0.05)
