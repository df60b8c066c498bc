"""Noise-aware classifiers p_phi(y | x_t, t) for classifier guidance: the networks
(scorekit.models.classifier), their training objective (scorekit.train.objectives.ClassifierObjective)
against the exact noisy posterior of a labelled Gaussian mixture, and classifier runs end to end."""
import pytest
import torch

from scorekit import ScorekitError
from scorekit.models import PRESETS, MLPClassifier, UNetClassifier, build_model, count_parameters


# --- the networks -----------------------------------------------------------------------------------

def perturbed(net, seed=0):
    """``net`` with every parameter moved a little (an untrained classifier's head is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("config, x", [
    ({**PRESETS["classifier-tiny"], "num_classes": 10}, torch.randn(3, 1, 8, 8)),
    ({**PRESETS["classifier-tiny"], "in_channels": 3, "num_classes": 4, "base_channels": 8, "groups": 4,
      "time_conditioning": "adagn"}, torch.randn(3, 3, 16, 16)),
    ({**PRESETS["classifier-mlp"], "dim": 5, "num_classes": 3}, torch.randn(3, 5)),
])
def test_classifiers_give_logits_rebuild_from_their_config_and_start_uniform(config, x):
    net = build_model(config)
    k = config["num_classes"]
    t = torch.tensor([0, 10, 900])
    logits = net(x, t)
    assert logits.shape == (3, k) and torch.equal(logits, torch.zeros(3, k))     # the head starts at zero
    again = build_model(net.config())
    assert net.config() == again.config() and net.config()["kind"] == config["kind"]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    net = perturbed(net)
    logits = net(x, t)
    assert torch.isfinite(logits).all() and not torch.allclose(logits[0], logits[1])
    x_same = x[:1].expand(2, *x.shape[1:])
    assert not torch.allclose(*net(x_same, torch.tensor([1, 700])))    # the time matters


def test_the_image_classifier_is_the_unet_encoder_with_a_pooled_head():
    """Same way down and middle as the U-Net of the same settings (the same parameter names and
    shapes), plus a GroupNorm and a linear head; about half the parameters of the U-Net."""
    unet = build_model({**PRESETS["tiny"], "num_classes": None})
    classifier = build_model({**PRESETS["classifier-tiny"], "num_classes": 10})
    shared = {k: v.shape for k, v in unet.state_dict().items()
              if k.startswith(("time_embed.", "conv_in.", "down.", "middle."))}
    mine = {k: v.shape for k, v in classifier.state_dict().items()}
    assert shared == {k: s for k, s in mine.items() if k in shared}
    assert set(mine) - set(shared) == {"norm_out.weight", "norm_out.bias", "head.weight", "head.bias"}
    assert mine["head.weight"] == (10, 32)
    assert 0.3 < count_parameters(classifier) / count_parameters(unet) < 0.6


@pytest.mark.parametrize("build, call, message", [
    (lambda: MLPClassifier(dim=2, num_classes=1), None, r"a classifier needs num_classes >= 2"),
    (lambda: UNetClassifier(in_channels=1, num_classes=None), None, r"a classifier needs num_classes >= 2"),
    (lambda: MLPClassifier(dim=2, num_classes=3), lambda net: net(torch.randn(4, 3), 1),
     r"the MLP classifier was built for data of shape \(N, 2\); got \(4, 3\)"),
    (lambda: build_model({**PRESETS["classifier-tiny"], "groups": 4, "base_channels": 8}),
     lambda net: net(torch.randn(2, 1, 6, 6), 1),
     r"input size 6x6 is not a multiple of 4: the U-Net classifier downsamples 2 times"),
    (lambda: build_model({**PRESETS["classifier-tiny"], "learn_variance": True}), None,
     r"unet_classifier model option.*learn_variance"),
])
def test_bad_classifier_settings_and_inputs_are_named(build, call, message):
    with pytest.raises(ScorekitError, match=message):
        net = build()
        call(net)


# --- the objective ------------------------------------------------------------------------------------

def classifier_objective(process_name="ddpm", process_options=None, **config):
    from scorekit.train.config import build_process, model_config_for
    from scorekit.train.objectives import ClassifierObjective
    from scorekit.data import load_dataset
    from scorekit.losses import UniformTimesteps
    from scorekit.train import TrainConfig

    cfg = TrainConfig(objective="classifier", data="moons", process=process_name,
                      process_options=process_options or {}, **config).validate()
    dataset = load_dataset("moons", n=64)
    process = build_process(cfg.process, cfg.process_options)
    net_config = ClassifierObjective.model_config(cfg, dataset, process)
    assert net_config == model_config_for(cfg, dataset, process, classifier=True)
    objective = ClassifierObjective(cfg, process=process, dataset=dataset, net_config=net_config,
                                    timestep_sampler=UniformTimesteps(process))
    return objective, dataset, perturbed(build_model(net_config))


@pytest.mark.parametrize("process_name, process_options", [("ddpm", {"num_steps": 50}), ("vp", {})])
def test_classifier_loss_is_the_cross_entropy_of_the_logits_on_the_same_draws(process_name, process_options):
    """Draw t from the run's time sampler, then eps from the generator; x_t = alpha(t) x_0 + sigma(t) eps;
    the loss is -mean log softmax(net(x_t, t))_y with log_softmax written out. The network's time is
    what a Denoiser of the process passes (integer steps for DDPM, float32 otherwise)."""
    from scorekit.prediction import Denoiser
    from scorekit.train.objectives import Batch

    objective, data, net = classifier_objective(process_name, process_options)
    x0, y = data.x[:32], data.y[:32]
    out = objective.loss(net, Batch(x0, y), torch.Generator().manual_seed(4))

    g = torch.Generator().manual_seed(4)
    process = objective.process
    t, weight = objective.timestep_sampler.sample(32, g)
    eps = torch.randn(x0.shape, generator=g)
    t64 = t.double()
    x_t = (process.alpha(t64)[:, None] * x0.double() + process.sigma(t64)[:, None] * eps.double()).float()
    t_net = Denoiser(lambda x, s: x, process).model_time(t64, 32, x0.device)
    assert out.t.dtype == t_net.dtype == (torch.long if process.discrete else torch.float32)
    assert torch.equal(out.t, t_net)
    logits = net(x_t, t_net).double()
    m = logits.max(dim=1, keepdim=True).values
    log_p = logits - (m + torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True)))
    cross_entropy = -log_p[torch.arange(32), y]
    assert torch.equal(weight, torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(out.per_sample.double(), cross_entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), cross_entropy.mean(), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.metrics["accuracy"], (logits.argmax(1) == y).float())
    assert 0.3 < out.loss.item() < 3                      # a perturbed net: neither perfect nor absurd
    out.loss.backward()                                   # differentiable in the weights
    assert net.head.weight.grad.abs().sum() > 0


XOR_CLASSES = torch.tensor([0, 0, 1, 1])


def xor_mixture():
    """Four Gaussians at (+-1, +-1) (std 0.35); class 0 on the diagonal, class 1 off it."""
    from scorekit.toy import GaussianMixture

    return GaussianMixture([1, 1, 1, 1], [[1, 1], [-1, -1], [1, -1], [-1, 1]], stds=0.35)


def exact_noisy_posterior(mixture, x_t, t, process):
    """p_t(y | x_t): the responsibilities of the mixture diffused to (alpha(t), sigma(t)), summed
    over each class's components."""
    t64 = t.double()
    r = mixture.responsibilities(x_t.double(), process.alpha(t64), process.sigma(t64))
    return torch.stack([r[:, XOR_CLASSES == k].sum(1) for k in range(2)], dim=1)


def mean_total_variation(net, mixture, process):
    """(20,) the mean total variation between net's p(y | x_t, t) and the exact one over 400 fresh
    x_t at each of t = 0, 50, ..., 950."""
    g = torch.Generator().manual_seed(11)
    out = []
    for step in range(0, 1000, 50):
        x0 = mixture.sample(400, generator=g)
        t = torch.full((400,), step)
        x_t = process.sample_marginal(x0, t.double(), torch.randn(x0.shape, generator=g))
        with torch.no_grad():
            p = torch.softmax(net(x_t, t).double(), dim=1)
        out.append(0.5 * (p - exact_noisy_posterior(mixture, x_t, t, process)).abs().sum(1).mean())
    return torch.stack(out)


def test_a_briefly_trained_classifier_matches_the_exact_noisy_posterior_of_a_mixture(tmp_path):
    """train(objective="classifier") on 4000 labelled samples of the XOR mixture (npz data, an MLP
    classifier, 300 steps of DDPM's 1000): the EMA network's p(y | x_t, t) is within 0.04 in mean
    total variation of the exact posterior over t = 0 .. 950 (measured: about 0.014, at most 0.025
    at any t), where an untrained one (p = 1/2) is 0.25 away; the exact posterior is sharp at small t
    (the classes are 3 standard deviations apart) and 1/2 at large t, so both ends are tested."""
    import numpy as np

    from scorekit.train import TrainConfig, load_checkpoint, train

    mixture = xor_mixture()
    x, comp = mixture.sample(4000, generator=torch.Generator().manual_seed(0), return_components=True)
    np.savez(tmp_path / "xor.npz", x=x.numpy(), y=XOR_CLASSES[comp].numpy())
    cfg = TrainConfig(objective="classifier", data=f"npz:{tmp_path / 'xor.npz'}",
                      model_options={"hidden": 64, "depth": 2}, steps=300, batch_size=256, lr=3e-3,
                      warmup_steps=20, lr_schedule="cosine", ema_decay=0.99, checkpoint_every=300, log_every=50)
    train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.model_config["kind"] == "mlp_classifier" and ckpt.config["model_preset"] == "classifier-mlp"
    trained = mean_total_variation(ckpt.ema_net, mixture, ckpt.process)
    untrained = mean_total_variation(build_model(ckpt.model_config), mixture, ckpt.process)
    assert trained.mean() < 0.04 and trained.max() < 0.06, trained
    assert untrained.mean() > 0.2 and untrained[0] > 0.45           # the test can fail


# --- classifier runs ------------------------------------------------------------------------------------

def digits_classifier(**overrides):
    from scorekit.train import TrainConfig

    base = dict(objective="classifier", data="digits", data_options={"stop": 200},
                model_options={"base_channels": 8, "groups": 4}, steps=4, batch_size=16, warmup_steps=1,
                log_every=1, checkpoint_every=2, keep_checkpoints=None, seed=2)
    base.update(overrides)
    return TrainConfig(**base)


def test_a_classifier_run_records_what_it_trained_loads_and_resumes_exactly(tmp_path, capsys):
    import json
    import os

    from safetensors.torch import load_file

    from scorekit.cli import main
    from scorekit.train import checkpoint_denoiser, load_checkpoint, read_metrics, train

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = train(digits_classifier(), straight, progress=False)
    assert result.files["samples"] is None and not (straight / "samples").exists()   # no sample grids
    train(digits_classifier(), stopped, progress=False, stop_at_step=2)
    train(None, stopped, progress=False, resume=True)
    for name in ("model", "ema", "trainer"):
        a = load_file(straight / "checkpoints" / "step-0000004" / f"{name}.safetensors")
        b = load_file(stopped / "checkpoints" / "step-0000004" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = read_metrics(os.path.join(straight, "metrics.jsonl"))
    assert rows == [dict(r, seconds=s["seconds"], images_per_second=s["images_per_second"])
                    for r, s in zip(read_metrics(os.path.join(stopped, "metrics.jsonl")), rows)]
    assert all(0 <= r["accuracy"] <= 1 and r["accuracy"] * 16 == round(r["accuracy"] * 16) for r in rows)

    saved = json.load(open(straight / "config.json"))
    assert saved["objective"] == "classifier" and saved["train"]["objective"] == "classifier"
    assert saved["prediction_type"] == "logits" and saved["num_classes"] == 10
    assert saved["classifier"] == {"loss": "cross_entropy", "num_classes": 10, "timesteps": "uniform",
                                   "timesteps_options": {}}
    assert saved["process"]["kind"] == "DDPM" and saved["model_preset"] == "classifier-tiny"
    assert saved["model"]["kind"] == "unet_classifier" and saved["model"]["num_classes"] == 10
    assert saved["train"]["prediction"] is None and saved["label_dropout"] == 0.0

    ckpt = load_checkpoint(straight)
    assert ckpt.objective == "classifier" and ckpt.prediction_type == "logits" and ckpt.num_classes == 10
    assert isinstance(ckpt.ema_net, UNetClassifier) and type(ckpt.process).__name__ == "DDPM"
    x = torch.zeros(3, 1, 8, 8)
    assert ckpt.ema_net(x, torch.tensor([0, 500, 999])).shape == (3, 10)
    with pytest.raises(ScorekitError, match="holds a noise-aware classifier trained with objective 'classifier', "
                                            "not a denoiser"):
        checkpoint_denoiser(ckpt)

    assert main(["info", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "unet_classifier preset classifier-tiny" in out and "objective:  classifier" in out
    assert main(["sample", str(straight), "--out", str(tmp_path / "s.png")]) == 2
    assert "give the folder of a diffusion run" in capsys.readouterr().err


def test_classifier_settings_are_checked_before_training(tmp_path):
    from scorekit.train import TrainConfig, train

    for setting, value in (("weighting", "elbo"), ("prediction", "eps"), ("precondition", "edm"),
                           ("variance", "learned"), ("label_dropout", 0.1), ("sample_every", 5),
                           ("weighting_options", {"min_snr_gamma": 2.0})):
        with pytest.raises(ScorekitError, match=rf"{setting}=.* does not apply to objective 'classifier'"):
            digits_classifier(**{setting: value}).validate()
    digits_classifier(label_dropout=0.0).validate()
    with pytest.raises(ScorekitError, match="objective 'classifier' learns p\\(y | x_t, t\\) from labelled data, "
                                            "but swiss_roll has no labels"):
        train(TrainConfig(objective="classifier", data="swiss_roll", data_options={"n": 64}, steps=1),
              tmp_path / "a", progress=False)
    with pytest.raises(ScorekitError, match="objective 'classifier' trains a noise-aware classifier, but model "
                                            "'tiny' is a denoising network; choose one of auto, classifier-tiny"):
        train(digits_classifier(model="tiny"), tmp_path / "b", progress=False)
    with pytest.raises(ScorekitError, match="model 'classifier-mlp' is a noise-aware classifier .* choose one of "
                                            "auto, tiny, small, base, mlp, or train the classifier with "
                                            "objective='classifier'"):
        train(TrainConfig(data="moons", data_options={"n": 64}, model="classifier-mlp", steps=1),
              tmp_path / "c", progress=False)
    with pytest.raises(ScorekitError, match="is an MLP for vectors, but digits holds .* images; use an image "
                                            r"preset \(classifier-tiny\)"):
        train(digits_classifier(model="classifier-mlp", model_options={}), tmp_path / "d", progress=False)
