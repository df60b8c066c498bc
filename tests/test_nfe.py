"""Counting network evaluations (``scorekit.nfe``) and sampling in batches
(``scorekit.sample_batches``), on exact Gaussian mixtures that stand in for trained networks."""
import pytest
import torch

import scorekit
from scorekit import DDPM, EDM, VPSDE, ScorekitError
from scorekit.nfe import NFECounter, count_network_calls
from scorekit.prediction import Denoiser
from scorekit.samplers import ddim, ddpm
from scorekit.timesteps import make_timesteps
from scorekit.toy import eight_gaussians
from scorekit.variances import LearnedVarianceDenoiser

MIX = eight_gaussians()


def prior(process, n=12, seed=0):
    return process.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed))


def learned_variance_network(process):
    """The mixture's exact eps with a variance head that outputs 0 (``v = 0``: the small variance)."""
    eps = MIX.eps_model(process)

    def network(x_t, t):
        return torch.cat([eps(x_t, t), torch.zeros_like(x_t)], dim=1)

    return network


def counted_sample(model, process, sampler, n, **options):
    counted, counter = count_network_calls(model)
    scorekit.sample(counted, prior(process), process=process, sampler=sampler, num_steps=n,
                    generator=torch.Generator().manual_seed(1), **options)
    return counter.calls


@pytest.mark.parametrize("n", [1, 4, 10])
def test_first_order_samplers_evaluate_the_network_once_per_step(n):
    process = DDPM()
    for sampler in ("ddim", "ddpm", "euler", "dpmpp_2m", "unipc"):
        assert counted_sample(MIX.eps_model(process), process, sampler, n) == n, sampler


@pytest.mark.parametrize("process", [DDPM(), VPSDE(), EDM()], ids=["ddpm", "vp", "edm"])
@pytest.mark.parametrize("sampler", ["ode_heun", "edm_heun"])
def test_heun_evaluates_twice_per_step_but_once_onto_the_data(process, sampler):
    """``2 n - 1``: the last step ends where sigma = 0 and returns D (one evaluation)."""
    n = 6
    assert process.sigma(make_timesteps(process, n)[-1]).item() == 0
    assert counted_sample(MIX.eps_model(process), process, sampler, n) == 2 * n - 1


# The NFE each sampler's docstring promises for ``n`` model times, on a grid that ends at the data
# and on one that ends at sigma > 0: one evaluation per model time, except
# * Heun (ode_heun, edm_heun, edm): two per step, but one on a step onto sigma = 0 (``2 n - 1``);
# * pc: ``n * (1 + corrector_steps)`` (corrector_steps = 1 by default);
# * ode_adaptive: chosen by the solver; the docstring promises only that the callback fires at
#   every evaluation (None here: the count is checked against the callback alone).
DOCUMENTED_NFE = {
    "ode_heun": (lambda n: 2 * n - 1, lambda n: 2 * n),
    "edm_heun": (lambda n: 2 * n - 1, lambda n: 2 * n),
    "edm": (lambda n: 2 * n - 1, lambda n: 2 * n),
    "pc": (lambda n: 2 * n, lambda n: 2 * n),
    "ode_adaptive": (lambda n: None, lambda n: None),
}
ONE_PER_MODEL_TIME = (lambda n: n, lambda n: n)


@pytest.mark.parametrize("process", [DDPM(), VPSDE()], ids=["ddpm", "vp"])
@pytest.mark.parametrize("sampler", list(scorekit.SAMPLERS))
def test_every_sampler_calls_the_denoiser_as_often_as_documented_and_reports_each_call(process, sampler):
    """The denoiser itself counts its calls (a plain closure, no scorekit counter): that count equals
    the number of callback reports ("once per network evaluation", numbered 0, 1, ...) and the
    documented NFE above, for 1 and 4 model times, on the default grid (ending at the data) and on
    one ending at a model time, with sigma > 0 (where the Heun samplers correct the last step too).
    An extra or skipped network call anywhere shows up here, whatever the samples are."""
    denoiser = MIX.denoiser(process)
    for n in (1, 4):
        # to sigma > 0: the grid of n + 1 model times stopped at its last one (inside the model's range)
        for end, grid in ((0, make_timesteps(process, n)), (1, make_timesteps(process, n + 1)[:-1])):
            assert (process.sigma(grid[-1]).item() == 0) == (end == 0)
            calls, reports = [], []

            def counting(x, t):
                calls.append(t)
                return denoiser(x, t)

            scorekit.SAMPLERS[sampler](counting, process, prior(process, 4).double(), grid,
                                       generator=torch.Generator().manual_seed(1),
                                       callback=lambda i, t, x, x0: reports.append(i))
            expected = DOCUMENTED_NFE.get(sampler, ONE_PER_MODEL_TIME)[end](n)
            assert len(calls) > 0 and reports == list(range(len(calls))), (n, end, len(calls), reports)
            if expected is not None:
                assert len(calls) == expected, (n, end)


def test_a_denoiser_is_counted_at_its_network_and_left_unchanged():
    process = DDPM()
    model = MIX.eps_model(process)
    d = Denoiser(model, process, "eps")
    counted, counter = count_network_calls(d)
    assert isinstance(counted, Denoiser) and counted is not d and counter is not counted
    assert d.model is model and counted.model is counter and counter.__wrapped__ is model
    assert counted.process is process and counted.prediction_type == "eps"
    x = prior(process)
    torch.testing.assert_close(counted(x, 500), d(x, 500), rtol=0, atol=0)
    assert counter.calls == 1
    counter.reset()
    assert counter.calls == 0


def test_a_learned_variance_denoiser_counts_both_ways_its_network_is_reached():
    """``D(x_t, t)`` and ``x0_and_log_variance`` each evaluate the whole network once."""
    process = DDPM()
    d = LearnedVarianceDenoiser(learned_variance_network(process), process, "eps")
    counted, counter = count_network_calls(d)
    assert counted.learned_variance and counted.network is counter and d.network is not counter
    n = 5
    x0 = scorekit.sample(counted, prior(process), process=process, sampler="ddpm", num_steps=n,
                         variance="learned", generator=torch.Generator().manual_seed(1))
    assert counter.calls == n
    plain = scorekit.sample(d, prior(process), process=process, sampler="ddpm", num_steps=n,
                            variance="learned", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x0, plain, rtol=0, atol=0)
    counter.reset()
    counted(prior(process), 10)
    assert counter.calls == 1


def test_the_counter_forwards_every_attribute_of_what_it_wraps():
    process = DDPM()
    d = LearnedVarianceDenoiser(learned_variance_network(process), process, "eps")
    counter = NFECounter(d)
    assert counter.process is process and counter.learned_variance and counter.prediction_type == "eps"
    with pytest.raises(AttributeError, match="no_such"):
        counter.no_such
    n = 4
    timesteps = make_timesteps(process, n)
    x = ddpm(counter, process, prior(process), timesteps, generator=torch.Generator().manual_seed(1),
             variance="learned")                         # through counter.x0_and_log_variance
    assert counter.calls == n and torch.isfinite(x).all()
    counter = NFECounter(Denoiser(MIX.eps_model(process), process, "eps"))
    ddim(counter, process, prior(process), timesteps)
    assert counter.calls == n
    assert "calls=4" in repr(counter)


def test_the_counter_refuses_what_cannot_be_called():
    with pytest.raises(ScorekitError, match="cannot be called"):
        NFECounter(3)


# --- sample_batches ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 5, 12, 100])
def test_deterministic_batches_give_the_samples_of_one_call(batch_size):
    process = DDPM()
    model = MIX.eps_model(process)
    x_T = prior(process, 12)
    whole = scorekit.sample(model, x_T, process=process, sampler="ddim", num_steps=8)
    got = scorekit.sample_batches(model, x_T, batch_size=batch_size, process=process,
                                  sampler="ddim", num_steps=8)
    # equal up to float32 rounding: a BLAS may order a batch's sums by its size
    torch.testing.assert_close(got.x, whole, rtol=1e-5, atol=1e-6)
    assert len(got.calls) == -(-12 // batch_size) and set(got.calls) == {8} and got.nfe == 8
    assert got.seconds >= 0


def test_stochastic_batches_draw_from_the_generator_batch_after_batch():
    process = DDPM()
    model = MIX.eps_model(process)
    x_T = prior(process, 10)
    kwargs = dict(process=process, sampler="ddpm", num_steps=6)
    got = scorekit.sample_batches(model, x_T, batch_size=4,
                                  generator=torch.Generator().manual_seed(7), **kwargs)
    g = torch.Generator().manual_seed(7)
    by_hand = torch.cat([scorekit.sample(model, x_T[lo:lo + 4], generator=g, **kwargs) for lo in (0, 4, 8)])
    torch.testing.assert_close(got.x, by_hand, rtol=0, atol=0)
    one = scorekit.sample_batches(model, x_T, batch_size=10,
                                  generator=torch.Generator().manual_seed(7), **kwargs)
    torch.testing.assert_close(one.x, scorekit.sample(model, x_T, generator=torch.Generator().manual_seed(7),
                                                      **kwargs), rtol=0, atol=0)


def test_each_batch_gets_its_slice_of_the_condition():
    """A class-conditional "network": each label picks the mode its samples go to."""
    process = DDPM()
    means = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    seen = []

    per_label = [scorekit.toy.GaussianMixture(torch.ones(1), means[k:k + 1], stds=0.05).x0_model(process)
                 for k in range(3)]

    def model(x_t, t, y=None):
        seen.append(tuple(y.tolist()))
        out = torch.empty_like(x_t)
        for k in range(3):
            if (y == k).any():
                out[y == k] = per_label[k](x_t[y == k], t[y == k])
        return out

    model.num_classes = 3
    labels = torch.arange(7) % 3
    got = scorekit.sample_batches(model, prior(process, 7), batch_size=3, condition=labels, process=process,
                                  prediction_type="x0", sampler="ddim", num_steps=10)
    assert seen == [(0, 1, 2)] * 20 + [(0,)] * 10          # 10 steps per batch
    torch.testing.assert_close(got.x, means[labels], atol=0.5, rtol=0)


def test_guided_batches_count_network_and_classifier_calls():
    """Classifier-free guidance: one network call per step on the doubled batch; classifier
    guidance: one classifier evaluation (with its gradient) per step and batch."""
    lm, process = scorekit.toy.labelled_eight_gaussians(2), DDPM()
    d = Denoiser(lm.model(process, "eps"), process, "eps")
    x_T = prior(process, 10)
    got = scorekit.sample_batches(d, x_T, batch_size=4, condition=1, sampler="ddim", num_steps=6,
                                  guidance_scale=3.0)
    assert got.calls == [6, 6, 6] and got.classifier_calls == 0
    u = Denoiser(lm.mixture.eps_model(process), process, "eps")
    got = scorekit.sample_batches(u, x_T, batch_size=4, condition=1, sampler="ddim", num_steps=6,
                                  classifier=lm.classifier(process))
    assert got.calls == [6, 6, 6] and got.classifier_calls == 18


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(batch_size=0), "batch_size must be a positive whole number"),
    (dict(batch_size=2.0), "batch_size must be a positive whole number"),
    (dict(batch_size=2, condition=torch.zeros(3, dtype=torch.long)), "the condition is for 3 samples but the batch has 4"),
])
def test_sample_batches_refuses_bad_arguments(kwargs, fragment):
    process = DDPM()
    with pytest.raises(ScorekitError) as info:
        scorekit.sample_batches(MIX.eps_model(process), prior(process, 4), process=process, **kwargs)
    assert fragment in str(info.value)
