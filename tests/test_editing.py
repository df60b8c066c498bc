"""Training-free editing (scorekit.tasks: SDEdit, ILVR, RePaint, interpolation, inversion editing)
against exact oracles: Gaussian priors whose edits have closed forms, the exact denoisers of
scorekit.toy, and identities that hold bit for bit.

Tolerances: sample means and covariances within 4-5 standard errors of their sample size
(fixed seeds); where a method is not exact on a finite grid, the measured bias
(benchmarks/editing_gaussian.py, BENCHMARKS.md "Training-free editing on an exact Gaussian
prior") is the reason for the bound."""
import math

import pytest
import torch

import scorekit
from scorekit import DDPM, VPSDE, ScorekitError, ddim_invert, make_timesteps
from scorekit.metrics.distribution import mode_weight_stderr, mode_weights
from scorekit.tasks import (EDIT_METHODS, Downsample, Greyscale, Mask, edit, edit_options, ilvr, interpolate,
                            inversion_edit, repaint, sdedit, slerp)
from scorekit.tasks.repaint import repaint_schedule
from scorekit.tasks.segments import fraction_of, sampling_grid, time_at
from scorekit.toy import correlated_gaussian, eight_gaussians, image_mixture, labelled_eight_gaussians

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def exact(mix, process):
    return scorekit.Denoiser(mix.x0_model(process), process, "x0")


def covariance_stderr(cov, n):
    """Standard error of each entry of a sample covariance of Gaussian data:
    ``sqrt((C_ii C_jj + C_ij^2) / n)``."""
    d = cov.diagonal()
    return ((d[:, None] * d[None, :] + cov ** 2) / n).sqrt()


# --- SDEdit ------------------------------------------------------------------------------------------

def test_sdedit_strength_zero_returns_the_guide_bitwise():
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    guide = mix.sample(6, generator=gen(0))
    for kwargs in ({"strength": 0.0}, {"strength": 0}, {"t0": p.t_data}):
        out = sdedit(exact(mix, p), guide, generator=gen(1), **kwargs)
        assert torch.equal(out, guide) and out is not guide


@pytest.mark.parametrize("process,sampler,options", [
    (DDPM(), "ddpm", {}), (DDPM(), "ddim", {}), (VPSDE(), "dpmpp_2m", {}), (VPSDE(), "euler_ancestral", {})])
def test_sdedit_strength_one_is_the_unconditional_sampler_bitwise(process, sampler, options):
    """At strength 1 the start is the prior, not the noised guide, and the grid is the sampler's
    own: the edit is the unconditional sampler run from process.prior_sample on the same
    generator."""
    mix = eight_gaussians()
    guide = mix.sample(50, generator=gen(0), dtype=F64)
    D = exact(mix, process)
    out = sdedit(D, guide, strength=1.0, sampler=sampler, num_steps=20, sampler_options=options,
                 generator=gen(3))
    g = gen(3)
    x_T = process.prior_sample(guide.shape, generator=g, dtype=F64)
    plain = scorekit.SAMPLERS[sampler](D, process, x_T, make_timesteps(process, 20), generator=g, **options)
    assert torch.equal(out, plain)


def test_sdedit_strength_one_has_the_mixtures_distribution():
    """Every guide at one point far from the data: strength 1 forgets it, and the mode weights are
    the mixture's within 4 multinomial standard errors."""
    mix = eight_gaussians()
    p = DDPM()
    n = 3000
    guide = torch.full((n, 2), 3.0, dtype=F64)
    out = sdedit(exact(mix, p), guide, strength=1.0, num_steps=500, generator=gen(5),
                 sampler_options={"variance": "large"})
    err = (mode_weights(out, mix) - mix.weights).abs()
    assert torch.all(err < 4 * mode_weight_stderr(mix, n)), err
    assert (out.mean(0) - mix.mean()).abs().max() < 4 * math.sqrt(4.0 / n)


def sdedit_closed_form(mix, process, t0, guide):
    r"""Mean and covariance of ``E_{x_t0 ~ q(. | y)} p(x_0 | x_t0)`` for Gaussian data ``N(m, S)``:
    ``K = alpha S (alpha^2 S + sigma^2 I)^{-1}``, mean ``m + K alpha (y - m)``, covariance
    ``S - alpha K S + sigma^2 K K^T`` (the posterior's plus the spread of its mean)."""
    m, S = mix.means[0], mix.covs()[0]
    t = torch.tensor(float(t0), dtype=F64)
    a, s = process.alpha(t).item(), process.sigma(t).item()
    eye = torch.eye(m.numel(), dtype=F64)
    K = a * S @ torch.linalg.inv(a * a * S + s * s * eye)
    return m + K @ (a * (guide - m)), S - a * K @ S + s * s * K @ K.T


@pytest.mark.parametrize("strength", [0.2, 0.5])
def test_sdedit_matches_the_gaussian_posterior_of_the_noised_guide(strength):
    """Gaussian data, the exact denoiser and DDPM ancestral sampling over every step of the chain
    below t0: the edits' mean and covariance are those of p(x_0 | x_t0) averaged over
    x_t0 ~ q(x_t0 | guide). The chain with the exact denoiser has the exact mean at every step
    (the posterior mean is linear), and with the "large" variance its covariance errs by under
    0.1% of the data variance (propagated in closed form over the grid), well below the 1%
    standard error of 20000 samples."""
    p = DDPM()
    mix = correlated_gaussian(3, seed=1)
    guide = torch.tensor([1.5, 0.5, -1.0], dtype=F64)
    n = 20000
    t0 = time_at(p, strength)
    out = sdedit(exact(mix, p), guide.expand(n, 3).clone(), strength=strength, num_steps=int(t0) + 1,
                 sampler_options={"variance": "large"}, generator=gen(11))
    mean, cov = sdedit_closed_form(mix, p, t0, guide)
    assert torch.all((out.mean(0) - mean).abs() < 4 * (cov.diagonal() / n).sqrt())
    assert torch.all((torch.cov(out.T) - cov).abs() < 4 * covariance_stderr(cov, n))
    # the edit moves from the guide towards the data as the strength grows
    far = sdedit_closed_form(mix, p, time_at(p, 0.9), guide)[0]
    assert (far - mix.means[0]).norm() < (mean - mix.means[0]).norm()


def test_sdedit_strength_and_t0_name_the_same_start():
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    guide = mix.sample(4, generator=gen(0))
    assert time_at(p, 0.4) == 400.0 and fraction_of(p, 400.0) == pytest.approx(400 / 999)
    a = sdedit(exact(mix, p), guide, strength=0.4, num_steps=8, generator=gen(2))
    b = sdedit(exact(mix, p), guide, t0=400, num_steps=8, generator=gen(2))
    ts = sampling_grid(p, 8, None, None, t_start=400.0)
    c = sdedit(exact(mix, p), guide, timesteps=ts, generator=gen(2))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert ts[0] == 400 and len(ts) == 9 and ts[-1] == p.t_data


# --- ILVR ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler"])
def test_ilvr_low_pass_of_the_sample_is_the_references(sampler):
    """The last refinement follows the step into the data, where q(y_0 | y) is y itself: the
    sample's block means equal the reference's to float32 rounding, while the samples differ
    within each block (the high frequencies come from the model)."""
    p = DDPM()
    mix = image_mixture(3, (1, 4, 4))
    ref = mix.sample(8, generator=gen(0))
    phi = Downsample(2)
    out = ilvr(exact(mix, p), ref, factor=2, sampler=sampler, num_steps=10, generator=gen(1))
    assert out.dtype == torch.float32
    assert (phi.project(out) - phi.project(ref)).abs().max() < 1e-6
    assert (phi.complement(out) - phi.complement(ref)).abs().max() > 1e-2


def test_ilvr_takes_any_operators_projection():
    """Greyscale's projection: the sample's luminance is the reference's."""
    p = DDPM()
    mix = image_mixture(2, (3, 4, 4))
    ref = mix.sample(4, generator=gen(0))
    A = Greyscale()
    out = ilvr(exact(mix, p), ref, operator=A, num_steps=10, generator=gen(1))
    assert (A(out) - A(ref)).abs().max() < 1e-6


def test_ilvr_with_an_empty_range_is_plain_sampling_bitwise():
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    ref = mix.sample(5, generator=gen(0))
    D = exact(mix, p)
    ts = make_timesteps(p, 10)               # model times 999, 899, ..., 99: no step ends in (0.5, 0.55)
    for sampler in ("ddpm", "dpmpp_2m"):
        out = ilvr(D, ref, factor=2, condition_range=(0.5, 0.55), sampler=sampler, num_steps=10,
                   generator=gen(4))
        g = gen(4)
        x_T = p.prior_sample(ref.shape, generator=g)
        assert torch.equal(out, scorekit.SAMPLERS[sampler](D, p, x_T, ts, generator=g))
    # a range that stops above the data keeps the reference's low frequencies only roughly
    part = ilvr(D, ref, factor=2, condition_range=(0.3, 1.0), num_steps=10, generator=gen(4))
    phi = Downsample(2)
    assert (phi.project(part) - phi.project(ref)).abs().max() > 1e-3


def test_ilvr_refines_towards_the_reference_noised_to_the_steps_end():
    """One ILVR step by hand (Choi et al. 2021, Alg. 1): a grid of one DDIM step 999 -> s = 300, ending
    there, so the refinement x_s <- x_s - phi(x_s) + phi(y_s), y_s ~ q(y_s | y) = N(alpha_s y,
    sigma_s^2 I), is the last thing done. Oracles: (1) the high frequencies are the plain DDIM step's
    from the same x_T, to float64 rounding; (2) the 2x2 block means of the result are those of y_s:
    per block, alpha_s mean(y) + sigma_s / 2 z with z ~ N(0, 1) independent over the n * 4 blocks
    (a block averages 4 independent pixels of the noise). The z's mean is within 5 standard errors
    1 / sqrt(4 n) of 0 and their standard deviation within 5 standard errors 1 / sqrt(2 * 4 n) of 1.
    The clean reference (no scaling, no noise) would give z = (1 - alpha_s) mean(y) / (sigma_s / 2)
    for every sample: a spread of 0."""
    p, n, s = DDPM(), 2000, 300
    mix = image_mixture(2, (1, 4, 4))
    D = exact(mix, p)
    ref = (mix.sample(1, generator=gen(0), dtype=F64) + 1.0).expand(n, 1, 4, 4).contiguous()
    ts = torch.tensor([float(p.t_max), float(s)], dtype=F64)
    out = ilvr(D, ref, factor=2, sampler="ddim", timesteps=ts, generator=gen(6))
    phi = Downsample(2)
    x_T = p.prior_sample(ref.shape, generator=gen(6), dtype=F64)
    step = scorekit.SAMPLERS["ddim"](D, p, x_T, ts, generator=gen(7))
    torch.testing.assert_close(phi.complement(out), phi.complement(step), rtol=0, atol=1e-12)
    a, sig = p.alpha(torch.tensor(float(s), dtype=F64)).item(), p.sigma(torch.tensor(float(s), dtype=F64)).item()
    z = ((phi(out) - a * phi(ref)) / (sig / 2)).flatten()
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * z.numel())
    # the reference's low frequencies are scaled by alpha_s: a clean one would be off by far more
    assert ((1 - a) * phi(ref[:1]).abs() / (sig / 2)).min() > 10 / math.sqrt(z.numel())


# --- RePaint ------------------------------------------------------------------------------------------

def test_repaint_schedule_is_the_papers():
    """r = 1 walks straight down; otherwise every block of j steps ending at the j-th, 2j-th, ...
    model time from the data is taken r times (the top block once)."""
    assert repaint_schedule(5, 1, 1) == [0, 1, 2, 3, 4, 5]
    path = repaint_schedule(10, 3, 2)
    down = sum(b == a + 1 for a, b in zip(path, path[1:]))
    up = sum(b == a - 1 for a, b in zip(path, path[1:]))
    blocks = len(range(0, 10 - 3, 3))                   # labels 0, 3, 6
    assert up == blocks * 3 and down == 10 + up
    assert path[0] == 0 and path[-1] == 10 and all(abs(b - a) == 1 for a, b in zip(path, path[1:]))
    assert path[:9] == [0, 1, 2, 3, 2, 1, 0, 1, 2]     # down to label 6 (index 3), up 3, down again


@pytest.mark.parametrize("sampler,r,j", [("ddpm", 1, 1), ("ddpm", 3, 2), ("ddim", 2, 3), ("dpmpp_2m", 2, 1)])
def test_repaint_keeps_the_known_pixels_exactly(sampler, r, j):
    p = DDPM()
    mix = image_mixture(3, (1, 4, 4))
    x0 = mix.sample(6, generator=gen(0))
    mask = (torch.rand(6, 1, 4, 4, generator=gen(1)) < 0.5).float()          # one mask per sample
    out = repaint(exact(mix, p), x0, mask=mask, resamplings=r, jump_length=j, sampler=sampler, num_steps=8,
                  generator=gen(2))
    known = mask.bool()
    assert torch.equal(out[known], x0[known])
    assert not torch.equal(out[~known], x0[~known])
    # the unknown pixels of the original are never read
    scrambled = torch.where(known, x0, torch.randn(x0.shape, generator=gen(3)))
    again = repaint(exact(mix, p), scrambled, mask=Mask(mask), resamplings=r, jump_length=j, sampler=sampler,
                    num_steps=8, generator=gen(2))
    assert torch.equal(again, out)


def _repaint_gaussian_error(r, n=4000, num_steps=50):
    """The unknown half's error against the exact conditional, in the conditional's own units:
    the norm of the whitened mean error and the Frobenius norm of the whitened covariance minus I."""
    p = DDPM()
    mix = correlated_gaussian(6, seed=0)
    known = torch.tensor([[1, 1, 1, 0, 0, 0]], dtype=F64)
    x0 = mix.sample(1, generator=gen(7), dtype=F64)
    post = mix.condition_on(Mask(known), known * x0)                 # the exact p(x | x_known)
    u = ~known[0].bool()
    mean, cov = post.mean()[u], post.covariance()[u][:, u]
    out = repaint(exact(mix, p), x0.expand(n, 6).clone(), mask=known, resamplings=r, jump_length=1,
                  num_steps=num_steps, sampler_options={"variance": "large"}, generator=gen(8))
    assert torch.equal(out[:, ~u], x0.expand(n, 6)[:, ~u])
    L = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(L, (out[:, u].mean(0) - mean)[:, None], upper=False)
    W = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, torch.cov(out[:, u].T), upper=False).T,
                                      upper=False)
    return z.norm().item(), (W - torch.eye(3, dtype=F64)).norm().item()


def test_repaint_approaches_the_exact_conditional_as_resampling_grows():
    """D = 6 Gaussian with strong correlations, three coordinates known, the exact denoiser, 50
    DDPM steps, jump length 1, 4000 samples (whitened mean error's noise floor
    sqrt(3 / 4000) = 0.027). The property tested: replacement alone (r = 1) is not exact, and the
    errors of the unknown half's mean and covariance fall as the resamplings r grow. Measured
    with 20000 samples (BENCHMARKS.md), the whitened mean error is 0.57, 0.35, 0.17 and 0.08 at
    r = 1, 3, 10 and 30 and the covariance error 0.31, 0.14, 0.04, 0.03: the limit is the
    conditional, approached slowly (about r^-0.65 in the mean), so r = 10 keeps a bias of 0.17
    and the bound there is that bias plus five standard errors."""
    errors = {r: _repaint_gaussian_error(r) for r in (1, 3, 10)}
    floor = math.sqrt(3 / 4000)
    assert errors[1][0] > 15 * floor and errors[1][1] > 0.25
    assert errors[1][0] - errors[3][0] > 4 * floor and errors[3][0] - errors[10][0] > 4 * floor
    assert errors[1][1] > errors[3][1] > errors[10][1]
    assert errors[10][0] < 0.17 + 5 * floor and errors[10][1] < 0.04 + 5 * math.sqrt(12 / 4000)


# --- interpolation and inversion editing -------------------------------------------------------------

def test_slerp_endpoints_are_exact_and_the_path_keeps_the_norm():
    z0 = torch.randn(5, 1, 4, 4, generator=gen(0))
    z1 = torch.randn(5, 1, 4, 4, generator=gen(1))
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1), z1)
    a = torch.tensor([[3.0, 0.0]], dtype=F64)
    b = torch.tensor([[0.0, 3.0]], dtype=F64)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([[1.5, 1.5]], dtype=F64) * math.sqrt(2))
    assert torch.allclose(slerp(a, 2 * a, 0.25), 1.25 * a)            # parallel: linear


def test_interpolation_endpoints_decode_back_to_the_images():
    """Latents at w = 0 and 1 are the inverted ones exactly; with the exact denoiser they decode
    to the inputs up to DDIM inversion's discretisation error, which falls with the steps."""
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    xa, xb = mix.sample(6, generator=gen(0), dtype=F64), mix.sample(6, generator=gen(1), dtype=F64)
    D = exact(mix, p)
    errors = []
    for steps in (10, 40, 160):
        out, z = interpolate(D, xa, other=xb, weights=[0.0, 0.5, 1.0], num_steps=steps, return_latents=True)
        assert out.shape == (6, 3, 1, 4, 4)
        ts = make_timesteps(p, steps)
        assert torch.equal(z[:, 0], ddim_invert(D, p, xa, ts)) and torch.equal(z[:, 2], ddim_invert(D, p, xb, ts))
        errors.append(max((out[:, 0] - xa).abs().max().item(), (out[:, 2] - xb).abs().max().item()))
    # first order: each four times the steps cuts the error by more than 2.5 (measured: 0.37, 0.12, 0.043)
    assert errors[0] > 2.5 * errors[1] > 6.25 * errors[2] and errors[2] < 0.05, errors


def test_inversion_edit_moves_points_into_the_target_class():
    """Two classes of four alternating modes each: a point of class 0 inverted under its class and
    decoded under class 1 lands in a class-1 mode; decoded under its own class it comes back."""
    lm = labelled_eight_gaussians(2)
    p = DDPM()
    D = scorekit.Denoiser(lm.model(p), p, "x0")
    x, _ = lm.sample(64, labels=0, generator=gen(0), dtype=F64)
    moved = inversion_edit(D, x, source=0, target=1, num_steps=100)
    assert torch.all(lm.classes[lm.mixture.classify(moved)] == 1)
    back = inversion_edit(D, x, source=0, target=0, num_steps=100)
    assert (back - x).abs().max() < 0.05
    same = inversion_edit(D.with_condition(torch.zeros(64, dtype=torch.long)), x, target=0, num_steps=100)
    assert torch.equal(same, back)


# --- the registry ---------------------------------------------------------------------------------------

def _inputs(method):
    """A small input and options for each registered method, on 1x4x4 images."""
    mix = image_mixture(2, (1, 4, 4))
    x = mix.sample(3, generator=gen(0))
    common = {"num_steps": 6}
    options = {
        "sdedit": {"strength": "0.6", "generator": gen(1)},
        "ilvr": {"factor": "2", "generator": gen(1)},
        "repaint": {"mask": torch.ones(1, 1, 4, 4).tril(), "resamplings": 2, "jump_length": 2, "generator": gen(1)},
        "interpolate": {"other": x.flip(0), "weights": "0,0.5,1"},
        "inversion": {"target": 1, "source": 0},
    }[method]
    if method == "inversion":
        lm = labelled_eight_gaussians(2)
        p = DDPM()
        return scorekit.Denoiser(lm.model(p), p, "x0"), lm.sample(3, generator=gen(0))[0], {**common, **options}
    return exact(mix, DDPM()), x, {**common, **options}


def test_every_method_is_in_the_conformance_suite():
    assert set(EDIT_METHODS) == {"sdedit", "ilvr", "repaint", "interpolate", "inversion"}


@pytest.mark.parametrize("method", list(EDIT_METHODS))
def test_conformance(method):
    """Each method by name: options checked and converted from text, the output shaped and typed
    like the input, reproducible from the generator alone (torch's global generator untouched),
    one output per input sample (a sample's edit does not depend on the others' inputs), an
    unknown option refused naming the valid ones."""
    D, x, options = _inputs(method)
    state = torch.random.get_rng_state()
    fresh = lambda: {k: gen(1) if k == "generator" else v for k, v in options.items()}   # noqa: E731
    out = edit(method, D, x, **fresh())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(edit(method, D, x, **fresh()), out)
    assert out.dtype == x.dtype and out.shape[0] == x.shape[0]
    assert out.shape[-len(x.shape[1:]):] == x.shape[1:] and torch.isfinite(out).all()
    if "generator" not in options:                         # deterministic: sample i sees only input i
        one = edit(method, D, x[:1], **{k: (v[:1] if torch.is_tensor(v) and v.shape[0] == 3 else v)
                                        for k, v in fresh().items()})
        assert torch.allclose(one, out[:1], atol=1e-6)
    with pytest.raises(ScorekitError, match="unknown .* option .*bogus.*valid"):
        edit(method, D, x, bogus=1, **fresh())
    assert set(edit_options(method)) >= {"process", "num_steps", "spacing", "timesteps"}


def test_required_options_and_unknown_methods_are_named():
    D, x, _ = _inputs("repaint")
    with pytest.raises(ScorekitError, match="repaint needs the option mask"):
        edit("repaint", D, x, generator=gen(0))
    with pytest.raises(ScorekitError, match="unknown editing method 'paint'.*sdedit"):
        edit("paint", D, x)
    with pytest.raises(ScorekitError, match="sdedit option strength=high: expected a number"):
        edit("sdedit", D, x, strength="high")


# --- bad input ------------------------------------------------------------------------------------------

def _bad_cases():
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    D = exact(mix, p)
    D.sample_shape = (1, 4, 4)
    x = mix.sample(2, generator=gen(0))
    g = gen(1)
    return [
        (lambda: sdedit(D, torch.zeros(2, 1, 8, 8), strength=0.5, generator=g), "samples of shape \\(1, 8, 8\\)"),
        (lambda: sdedit(D, torch.zeros(16), strength=0.5, generator=g), "guide must have shape \\(N, ...\\)"),
        (lambda: sdedit(D, x, strength=1.5, generator=g), "strength must be a number in \\[0, 1\\]"),
        (lambda: sdedit(D, x, strength=-0.1, generator=g), "strength must be a number in \\[0, 1\\]"),
        (lambda: sdedit(D, x, strength=True, generator=g), "strength must be a number in \\[0, 1\\]"),
        (lambda: sdedit(D, x, strength=0.5, t0=300, generator=g), "either strength .* or t0"),
        (lambda: sdedit(D, x, t0=2000, generator=g), "t0=2000 must lie in \\[0, 999\\]"),
        (lambda: sdedit(D, x, strength=0.5), "sdedit draws random noise: pass generator="),
        (lambda: sdedit(D, x, t0=9, num_steps=20, generator=g), "num_steps=20 is more than the 10 steps"),
        (lambda: sdedit(D, x, strength=0.5, sampler="dpm", generator=g), "unknown sampler 'dpm'"),
        (lambda: sdedit(D, x, strength=0.5, sampler_options={"eta": 1}, generator=g),
         "sampler 'ddpm' has no option eta"),
        (lambda: ilvr(D, x, factor=3, generator=g), "multiples of 3"),
        (lambda: ilvr(D, x, factor=2, operator=Greyscale(), generator=g), "either factor .* or operator"),
        (lambda: ilvr(D, x, condition_range=(0.8, 0.2), generator=g), "must have lo <= hi"),
        (lambda: ilvr(D, x, condition_range=(0, 2), generator=g), "condition_range's hi must be a number in"),
        (lambda: repaint(D, x, mask=torch.ones(1, 1, 4, 3), generator=g), "the mask has shape \\(1, 1, 4, 3\\)"),
        (lambda: repaint(D, x, mask=torch.ones(3, 1, 4, 4), generator=g), "the mask has shape \\(3, 1, 4, 4\\)"),
        (lambda: repaint(D, x, mask=2 * torch.ones(1, 1, 4, 4, dtype=torch.long), generator=g), "other values"),
        (lambda: repaint(D, x, mask=torch.ones(1, 1, 4, 4), jump_length=10, num_steps=10, generator=g),
         "jump_length=10 leaves no room"),
        (lambda: repaint(D, x, mask=torch.ones(1, 1, 4, 4), resamplings=0, generator=g),
         "resamplings must be a whole number >= 1"),
        (lambda: interpolate(D, x, other=x[:1]), "other has shape \\(1, 1, 4, 4\\) but x has shape \\(2, 1, 4, 4\\)"),
        (lambda: interpolate(D, x, other=x, weights=[0.5, 2]), "weights must be a non-empty list"),
        (lambda: inversion_edit(lambda x, t: x, x, target=1, process=p), "needs a denoiser that takes a condition"),
        (lambda: sdedit(lambda x, t: x, x, strength=0.5, generator=g), "give process="),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_is_one_scorekit_error(case):
    fn, message = _bad_cases()[case]
    with pytest.raises(ScorekitError, match=message):
        fn()
