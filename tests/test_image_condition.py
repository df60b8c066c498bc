"""The image condition: ``Condition(image=...)``, its null value and batching, and the networks that
concatenate it to their input (``cond_channels`` of the U-Net and the MLP)."""
import pytest
import torch

import scorekit
from scorekit import ScorekitError
from scorekit.conditioning import Condition
from scorekit.guidance import ClassifierFreeGuidance
from scorekit.models import build_model, preset, preset_name
from scorekit.prediction import Denoiser
from scorekit.processes import DDPM
from scorekit.sampling import sample_batches


def tiny_unet(**overrides):
    return build_model(preset("tiny", in_channels=1, base_channels=8, groups=4, **overrides))


class Recorder(torch.nn.Module):
    """``x_t + mean(cond)`` per sample, and the condition images of every call."""

    cond_channels = 2

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond=None):
        self.seen.append(cond)
        return x + cond.mean(dim=(1, 2, 3), keepdim=True)


def test_the_image_condition_its_null_value_batching_and_joining():
    c = torch.randn(3, 2, 4, 4)
    cond = Condition(image=c, labels=torch.tensor([1, 0, -1]))
    assert cond.network_kwargs().keys() == {"y", "cond"}
    assert torch.equal(cond.network_kwargs()["cond"], c)
    null = cond.null()
    assert torch.equal(null.image, torch.zeros_like(c)) and torch.equal(null.labels, torch.full((3,), -1))
    assert null.is_null.all() and not cond.is_null.any()
    # null in every field: labels alone are not enough
    assert not Condition(image=c, labels=torch.full((3,), -1)).is_null.any()
    assert Condition(image=torch.zeros(2, 5)).is_null.all()                 # vectors for an MLP
    assert torch.equal(cond[1:].image, c[1:]) and cond[1:].batch_size == 2
    joined = cond.cat(null)
    assert joined.batch_size == 6 and torch.equal(joined.image[3:], torch.zeros_like(c))
    one = Condition(image=c[:1])
    assert torch.equal(one.for_batch(4).image, c[:1].expand(4, 2, 4, 4))
    with pytest.raises(ScorekitError, match="floating point"):
        Condition(image=torch.ones(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ScorekitError, match=r"\(N, C, H, W\)"):
        Condition(image=torch.ones(2, 4, 4))
    with pytest.raises(ScorekitError, match="different numbers of samples"):
        Condition(image=c, labels=torch.tensor([1, 2]))


def test_unet_and_mlp_concatenate_the_condition_and_keep_the_data_channels():
    net = tiny_unet(cond_channels=2)
    assert net.conv_in.in_channels == 3 and net.conv_out.out_channels == 1
    assert net.config()["cond_channels"] == 2
    assert preset_name(build_model(preset("tiny", cond_channels=4))) == "tiny"
    rebuilt = build_model(net.config())
    x, c, t = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8), torch.tensor([3, 7])
    for p in net.parameters():                      # a non-zero output layer: the condition matters
        torch.nn.init.normal_(p, std=0.1)
    rebuilt.load_state_dict(net.state_dict())
    assert net(x, t, cond=c).shape == x.shape
    assert torch.equal(net(x, t, cond=c), rebuilt(x, t, cond=c))
    assert not torch.allclose(net(x, t, cond=c), net(x, t, cond=torch.zeros_like(c)))
    old = {k: v for k, v in tiny_unet().config().items()}
    assert "cond_channels" not in old and build_model(old).cond_channels == 0       # runs before the field
    mlp = build_model(preset("mlp", dim=3, hidden=16, depth=1, cond_channels=2))
    assert mlp(torch.randn(4, 3), torch.arange(4), cond=torch.randn(4, 2)).shape == (4, 3)


@pytest.mark.parametrize("call, message", [
    (lambda net, x, t: net(x, t), "call it with cond= of shape"),
    (lambda net, x, t: net(x, t, cond=torch.zeros(2, 3, 8, 8)), "must have shape"),
    (lambda net, x, t: net(x, t, cond=torch.zeros(2, 2, 4, 4)), "the size of x_t"),
    (lambda net, x, t: tiny_unet()(x, t, cond=torch.zeros(2, 2, 8, 8)), "built without one"),
])
def test_a_conditional_image_network_refuses_a_missing_or_misshapen_condition(call, message):
    with pytest.raises(ScorekitError, match=message):
        call(tiny_unet(cond_channels=2), torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ScorekitError, match="cond_channels must be"):
        tiny_unet(cond_channels=-1)


def test_samplers_wrappers_and_batches_pass_the_image_condition_unchanged():
    """The condition is bound once; ``sample_batches`` slices it; classifier-free guidance puts the
    null (zero) image beside it in one call: ``D_w = D(0) + w (D(c) - D(0))``."""
    process = DDPM(num_steps=20)
    rec = Recorder()
    d = Denoiser(rec, process, "x0")
    assert d.cond_channels == 2 and not d.conditional
    c = torch.randn(5, 2, 4, 4)
    with pytest.raises(ScorekitError, match="has 1 channels but the model takes 2"):
        d.with_condition(Condition(image=c[:, :1]))
    x_T = torch.randn(5, 1, 4, 4)
    out = sample_batches(d, x_T, batch_size=2, condition=Condition(image=c), num_steps=3,
                         sampler="ddim", check_finite=False).x
    assert [s.shape[0] for s in rec.seen[:3]] == [2, 2, 2] and torch.equal(rec.seen[0], c[:2])
    assert torch.equal(rec.seen[-1], c[4:])
    whole = scorekit.sample(d, x_T, condition=Condition(image=c), num_steps=3, sampler="ddim")
    torch.testing.assert_close(out, whole)
    rec.seen.clear()
    g = ClassifierFreeGuidance(d, 3.0).with_condition(Condition(image=c))
    x = torch.randn(5, 1, 4, 4)
    got = g(x, 10)
    assert rec.seen[0].shape[0] == 10 and torch.equal(rec.seen[0][5:], torch.zeros_like(c))
    shift = c.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(got, x + 3.0 * shift)
