"""Nothing in a step makes a GPU's host wait, checked on the CPU with the "meta" device: a read of
a value raises there, and ``device_probe.blocking_host_copies`` records the copies from the host
that PyTorch would wait on. Here: the probe itself, ``scorekit.devices.to_device``,
``Denoiser.model_time``, and the editing and inverse-problem methods' step loops."""
import os
import sys

import pytest
import torch

import scorekit
from scorekit import DDPM, Denoiser
from scorekit.devices import to_device
from scorekit.samplers._common import FiniteStates

sys.path.insert(0, os.path.dirname(__file__))
from device_probe import blocking_host_copies   # noqa: E402

META = torch.device("meta")


def test_the_probe_records_blocking_copies_from_the_host_and_nothing_else():
    with blocking_host_copies() as copies:
        torch.ones(3).to(META)                                      # 1
        torch.empty(3, device=META).copy_(torch.ones(3))            # 2
        torch.tensor([1.0, 2.0], device=META)                       # 3
        torch.as_tensor([1, 2], device=META)                        # 4
        torch.ones(3).to(META, non_blocking=True)                   # not waited on
        torch.empty(3, device=META) * torch.tensor(2.0)             # a CPU scalar: passed as a number
        torch.empty(3, device=META).to(torch.float64)               # on the device
        torch.ones(3).to(torch.float64)                             # on the host
    assert len(copies) == 4
    assert "(3,) from the host" in copies[0] and "torch.tensor of host data onto meta" in copies[2]


def test_to_device_copies_without_blocking_and_leaves_a_tensor_in_place_alone():
    t = torch.arange(4)
    assert to_device(t, "cpu") is t
    with blocking_host_copies() as copies:
        moved = to_device(t, META)
    assert copies == [] and moved.device == META and moved.dtype == t.dtype
    assert to_device(moved, "meta") is moved


def test_to_like_converts_on_the_host_then_copies_without_blocking():
    from scorekit.devices import to_like
    t = torch.tensor([1.5, 2.5], dtype=torch.float64)
    like = torch.empty(3, dtype=torch.float16, device=META)
    with blocking_host_copies() as copies:
        moved = to_like(t, like)
    assert copies == [] and moved.device == META and moved.dtype == torch.float16 and moved.shape == (2,)
    same = to_like(t, torch.empty(1, dtype=torch.float32))
    assert same.dtype == torch.float32 and same.tolist() == [1.5, 2.5]


@pytest.mark.parametrize("t, dtype", [(torch.tensor([3, 7]), torch.long),
                                      (torch.tensor([3.0, 7.0], dtype=torch.float64), torch.long),
                                      (torch.tensor([3.5, 7.0]), torch.float32),
                                      (5, torch.long), (5.5, torch.float32)])
def test_model_time_decides_on_the_host_and_copies_without_blocking(t, dtype):
    """Whole times on a discrete process become ``torch.long``; whether they are whole is read
    from the number, the integer dtype or the CPU tensor, never from the device."""
    den = Denoiser(lambda x, t: x, DDPM(num_steps=10))
    with blocking_host_copies() as copies:
        out = den.model_time(t, 2, META)
    assert copies == [] and out.device == META and out.dtype == dtype and out.shape == (2,)
    assert den.model_time(t, 2, "cpu").tolist() == torch.as_tensor(t).to(dtype).expand(2).tolist()


def test_model_time_gives_time_input_float64_times_from_a_list():
    seen = []
    den = Denoiser(lambda x, t: x, scorekit.VPSDE(), time_input=lambda t: seen.append(t) or t)
    den.model_time([0.123456789, 0.5], 2, "cpu")
    assert seen[0].dtype == torch.float64 and seen[0][0].item() == 0.123456789


def test_model_time_reads_float_times_that_are_already_on_the_device():
    """The documented exception: float times on the device of a discrete process are read there."""
    den = Denoiser(lambda x, t: x, DDPM(num_steps=10))
    with pytest.raises(RuntimeError):                  # meta: "cannot be called on meta tensors"
        den.model_time(torch.empty(2, device=META), 2, META)
    continuous = Denoiser(lambda x, t: x, scorekit.VPSDE())
    assert continuous.model_time(torch.empty(2, device=META), 2, META).dtype == torch.float32


# --- the tasks' step loops ---------------------------------------------------------------------------------

def _meta_net(name="tiny", channels=1, **options):
    """A network of the preset ``name`` for 8x8 images, built on the meta device."""
    from scorekit.models import build_model, preset

    if name == "tiny":
        options = {"in_channels": channels, "out_channels": channels, **options}
    with torch.device("meta"):
        return build_model(preset(name, image_size=8, **options))


def _meta_denoiser():
    return Denoiser(_meta_net(), DDPM(num_steps=100), "eps")


@pytest.mark.parametrize("method", ["sdedit", "ilvr", "repaint", "dps", "projection"])
def test_an_editing_or_inverse_method_reads_nothing_and_copies_without_blocking(method, monkeypatch):
    """Every step of the method on the meta device, after its one-time input checks (the
    measurement's values, left out here). The generator is on the CPU, as meta has none: the
    projection method's noise is then drawn there and copied without blocking; on a GPU with a
    generator on the device it is drawn there. PiGDM and moment matching are left out: their
    conjugate-gradient solve reads its residual once per step, by design."""
    import scorekit.tasks.inverse as inverse
    from scorekit.tasks import Downsample, edit, solve_inverse

    monkeypatch.setattr(FiniteStates, "finish", lambda self, x=None: None)
    monkeypatch.setattr(inverse, "check_measurement", lambda A, y, x_shape=None: ((2, 1, 8, 8), (2, 1, 4, 4)))
    den = _meta_denoiser()
    x = torch.empty(2, 1, 8, 8, device=META)
    g = torch.Generator().manual_seed(0)
    with blocking_host_copies() as copies:
        if method == "sdedit":
            out = edit("sdedit", den, x, strength=0.5, num_steps=5, generator=g)
        elif method == "ilvr":
            out = edit("ilvr", den, x, factor=2, num_steps=5, generator=g)
        elif method == "repaint":
            mask = torch.ones(1, 8, 8, dtype=torch.bool, device=META)
            out = edit("repaint", den, x, mask=mask, num_steps=5, resamplings=2, jump_length=2, generator=g)
        else:
            out = solve_inverse(den, Downsample(2), torch.empty(2, 1, 4, 4, device=META), method=method,
                                num_steps=5, x_T=torch.empty(2, 1, 8, 8, device=META), generator=g, sigma_y=0.05,
                                process=den.process)
    assert out.device == META and out.shape == x.shape
    assert copies == []


@pytest.mark.parametrize("variance", ["small", "large", "learned", "sampled"])
def test_the_elbo_reads_only_its_result_and_copies_without_blocking(variance, monkeypatch):
    """The ELBO's loop over the steps (5 chunks of 4 steps, or the sampled ELBO's 6 strata) on the
    meta device: no blocking copy, and the only read is the summary of the result at the end
    (``mean_bpd`` and its standard error are numbers), after the last network call. Its input
    check (8-bit data) is a one-time read, left out here."""
    import importlib

    from scorekit.variances import LearnedVarianceDenoiser

    elbo_module = importlib.import_module("scorekit.likelihood.elbo")
    monkeypatch.setattr(elbo_module, "_check_data", lambda x0, bits: x0)
    net = _meta_net(**({"out_channels": 2} if variance == "learned" else {}))
    calls = []

    def counted(x, t):
        calls.append(x.shape[0])
        return net(x, t)

    process = DDPM(num_steps=20)
    den = LearnedVarianceDenoiser(counted, process) if variance == "learned" else Denoiser(counted, process)
    x0 = torch.empty(4, 1, 8, 8, device=META)

    def run():
        if variance == "sampled":
            return elbo_module.sampled_elbo(den, process, x0, strata=5, generator=torch.Generator())
        return elbo_module.elbo(den, process, x0, variance=variance, batch_steps=4, generator=torch.Generator())

    with pytest.raises(RuntimeError, match="(?i)meta"):            # the first run moves the DDPM tables once
        run()
    calls.clear()
    with blocking_host_copies() as copies, pytest.raises(RuntimeError, match="(?i)meta") as info:
        run()
    assert copies == []
    assert len(calls) == (6 if variance == "sampled" else 5)
    last = [entry for entry in info.traceback if "scorekit" in str(entry.path)][-1]
    assert last.name == ("sampled_elbo" if variance == "sampled" else "elbo")


@pytest.mark.parametrize("guidance", ["labels", "cfg", "classifier"])
def test_labels_given_on_the_host_are_copied_once_and_checked_once(guidance, monkeypatch):
    """Labels on the CPU for a model on the device (meta): the network's condition is moved there
    once per sampling call (it was copied at every network call), and classifier guidance checks
    its labels against the classifier's classes once, not at every step."""
    from scorekit.guidance import ClassifierGuidance

    checks = []
    monkeypatch.setattr(ClassifierGuidance, "check_classes", staticmethod(lambda labels, k: checks.append(k)))
    monkeypatch.setattr(FiniteStates, "finish", lambda self, x=None: None)
    net = _meta_net(num_classes=None if guidance == "classifier" else 10)
    classifier = _meta_net("classifier-tiny")
    options = {"labels": {}, "cfg": dict(guidance_scale=2.0),
               "classifier": dict(classifier=classifier, classifier_scale=2.0)}[guidance]
    with blocking_host_copies() as copies:
        scorekit.sample(net, torch.empty(4, 1, 8, 8, device=META), process=DDPM(), sampler="ddim", num_steps=5,
                        condition=torch.tensor([1, 2, 3, 4]), **options)
    assert copies == []
    assert checks == ([10] if guidance == "classifier" else [])


@pytest.mark.parametrize("operator", ["mask", "greyscale", "random projection"])
@pytest.mark.parametrize("method", ["dps", "projection"])
def test_an_operator_made_on_the_host_is_copied_to_the_device_once(operator, method, monkeypatch):
    """Operators keep their mask, weights or matrix where they were made (the host, here) and a
    copy of it on the images' device (``devices.kept_like``): applying one at every step copies
    nothing more. The measurement, on the host too, is kept likewise."""
    import scorekit.tasks.inverse as inverse
    from scorekit.tasks import Greyscale, Mask, RandomProjection, solve_inverse

    A, channels, y_shape = {"mask": (Mask(torch.rand(1, 8, 8) > 0.5), 1, (2, 1, 8, 8)),
                            "greyscale": (Greyscale(), 3, (2, 1, 8, 8)),
                            "random projection": (RandomProjection((1, 8, 8), 16), 1, (2, 16))}[operator]
    monkeypatch.setattr(FiniteStates, "finish", lambda self, x=None: None)
    monkeypatch.setattr(inverse, "check_measurement", lambda A, y, x_shape=None: ((2, channels, 8, 8), y_shape))
    den = Denoiser(_meta_net(channels=channels), DDPM(num_steps=100), "eps")
    y = torch.zeros(y_shape)                                    # on the host
    with blocking_host_copies() as copies:
        solve_inverse(den, A, y, method=method, num_steps=5, x_T=torch.empty(2, channels, 8, 8, device=META),
                      generator=torch.Generator().manual_seed(0), sigma_y=0.05, process=den.process)
    assert copies == []


def test_kept_like_copies_once_per_device_and_dtype_and_follows_a_new_tensor():
    from scorekit.devices import kept_like

    class Owner:
        pass

    owner = Owner()
    owner.m = torch.arange(3.0, dtype=torch.float64)
    a = kept_like(owner, "m", torch.empty(2, device=META))
    assert a.device == META and a.dtype == torch.float32
    assert kept_like(owner, "m", torch.empty(5, device=META)) is a          # kept
    assert kept_like(owner, "m", torch.empty(2)).tolist() == [0.0, 1.0, 2.0]  # another device
    owner.m = new = torch.ones(3, dtype=torch.float64)
    assert kept_like(owner, "m", torch.empty(2)).tolist() == [1.0, 1.0, 1.0]  # a new tensor is followed
    assert owner.m is new and owner.m.dtype == torch.float64                    # left as it was
