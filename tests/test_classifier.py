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
