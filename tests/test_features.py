"""Tests of the feature-extractor interface (scorekit.metrics.features): batching, devices,
evaluation mode, no_grad, float64 results, the weights hash, wrapped modules and the digit
classifier. Oracles: the wrapped network called directly on the whole set."""
import pytest
import torch
from torch import nn

from scorekit.errors import ScorekitError
from scorekit.metrics import DigitFeatures, FeatureExtractor, ModuleExtractor, state_hash
from scorekit.metrics.digits_classifier import DigitClassifier, save_digit_classifier

F64 = torch.float64


def close32(a, b):
    """Equal up to float32 rounding (a batch of another size may sum in another order)."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def images(n, c=3, side=8, seed=0):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Recorder(nn.Module):
    """A linear map with a dropout layer, recording how it is called."""

    def __init__(self, logits=False):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.lin = nn.Linear(3 * 8 * 8, 5)
        self.head = nn.Linear(5, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.drop = nn.Dropout(0.5)
        self.logits = logits
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], x.device.type, x.dtype, self.training, torch.is_grad_enabled()))
        f = self.drop(self.lin(x.flatten(1)))
        return (f[:, :, None, None], self.head(f)) if self.logits else f[:, :, None, None]


def test_module_extractor_matches_the_module_in_any_batching():
    net = Recorder()
    x = images(7)
    ex = ModuleExtractor(net, name="recorder")
    assert isinstance(ex, FeatureExtractor) and not ex.has_probabilities
    f = ex.features(x, batch_size=3)
    assert f.dtype == F64 and f.device.type == "cpu" and f.shape == (7, 5)
    # batches of 3, 3, 1 on the module's device, in evaluation mode, without gradients
    assert net.calls == [(3, "cpu", torch.float32, False, False)] * 2 + [(1, "cpu", torch.float32, False, False)]
    assert net.training                      # its mode is restored
    with torch.no_grad():
        want = net.eval().lin(x.flatten(1)).double()
    net.train()
    assert close32(f, want)
    assert close32(ex.features(x, batch_size=100, progress=True), f)


def test_module_extractor_transform_and_logits():
    net = Recorder(logits=True)
    x = images(5)
    ex = ModuleExtractor(net, name="recorder", transform=lambda b: b.flip(-1), logits=True)
    f, p = ex.features_and_probabilities(x, batch_size=2)
    with torch.no_grad():
        net.eval()
        feats = net.lin(x.flip(-1).flatten(1))
        want_p = torch.softmax(net.head(feats).double(), dim=1)
    assert close32(f, feats.double())
    assert p.dtype == F64 and close32(p, want_p)
    assert torch.allclose(p.sum(1), torch.ones(5, dtype=F64))
    assert close32(ex.probabilities(x, batch_size=5), p)


def test_module_extractor_refuses_mismatched_outputs_and_inputs():
    x = images(2)
    with pytest.raises(ScorekitError, match="gives features only"):
        ModuleExtractor(Recorder(), name="r").probabilities(x)
    with pytest.raises(ScorekitError, match="pass logits=True"):
        ModuleExtractor(Recorder(logits=True), name="r").features(x)
    with pytest.raises(ScorekitError, match="must return a pair"):
        ModuleExtractor(Recorder(), name="r", logits=True).features(x)
    ex = ModuleExtractor(Recorder(), name="r")
    with pytest.raises(ScorekitError, match=r"images must be a tensor \(N, C, H, W\)"):
        ex.features(x[0])
    with pytest.raises(ScorekitError, match="float tensor"):
        ex.features(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ScorekitError, match="batch_size must be a whole number"):
        ex.features(x, batch_size=0)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ScorekitError, match="images 0 .. 1 contain NaN"):
        ex.features(bad)
    with pytest.raises(ScorekitError, match="name must be a non-empty string"):
        ModuleExtractor(Recorder(), name="")
    with pytest.raises(ScorekitError, match="torch.nn.Module"):
        ModuleExtractor(lambda b: b, name="f")


def test_weights_hash_follows_the_weights_only():
    a, b = Recorder(), Recorder()
    assert ModuleExtractor(a, name="a").weights_hash == ModuleExtractor(b, name="b").weights_hash
    assert len(state_hash(a)) == 64
    with torch.no_grad():
        b.lin.bias[0] += 1e-3
    assert state_hash(a) != state_hash(b)
    # BatchNorm's step counter does not change what the network computes, nor its hash
    bn1, bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    bn2.num_batches_tracked += 5
    assert state_hash(bn1) == state_hash(bn2)
    bn2.running_mean += 1
    assert state_hash(bn1) != state_hash(bn2)


def test_digit_features_are_the_classifiers_outputs(tmp_path):
    net = DigitClassifier(seed=3).eval()
    x = images(5, c=1, side=28, seed=2)
    ex = DigitFeatures(net)
    assert isinstance(ex, FeatureExtractor) and ex.has_probabilities and ex.name == "digit_classifier"
    f, p = ex.features_and_probabilities(x, batch_size=2)
    assert f.shape == (5, 128) and p.shape == (5, 10) and f.dtype == p.dtype == F64
    assert close32(f, net.features(x).double())
    assert torch.allclose(p, net.predict_proba(x).double(), rtol=0, atol=1e-6)
    saved = DigitFeatures(save_digit_classifier(net, tmp_path / "clf"))
    assert saved.weights_hash == ex.weights_hash
    assert torch.equal(saved.features(x, batch_size=2), f)
