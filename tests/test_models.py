"""Tests of the denoising networks (scorekit.models) against hand-written formulas."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import scorekit
from scorekit import ScorekitError
from scorekit.models import (MLP, PRESETS, UNet, build_model, count_parameters, describe, preset,
                             preset_name)
from scorekit.models.layers import AttentionBlock, FourierFeatures, ResBlock, sinusoidal_embedding


def perturbed(net, scale=0.1, seed=0):
    """``net`` with every parameter moved by Gaussian noise, so zero-initialised layers are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def tiny_unet(**options):
    base = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), groups=4, image_size=8)
    return UNet(**{**base, **options})


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name,channels,size", [
    ("tiny", 1, (8, 8)), ("tiny", 1, (28, 28)), ("tiny", 3, (32, 32)), ("tiny", 1, (12, 20)),
    ("small", 1, (28, 28)), ("small", 3, (16, 16)),
])
def test_unet_output_shape(name, channels, size):
    net = build_model(preset(name, in_channels=channels))
    x = randn(2, channels, *size)
    out = net(x, torch.tensor([3, 700]))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_base_preset_is_the_ddpm_cifar10_network():
    net = build_model(PRESETS["base"])
    # Ho et al. (2020), Appendix B: "Our CIFAR10 model has 35.7 million parameters"
    assert abs(count_parameters(net) - 35.7e6) < 0.05e6
    assert describe(net) == f"UNet base: {count_parameters(net):,} parameters"
    x = randn(1, 3, 32, 32)
    assert perturbed(net, 0.01)(x, torch.tensor([10])).shape == x.shape


def test_preset_sizes():
    counts = {name: count_parameters(build_model(PRESETS[name])) for name in ("tiny", "small")}
    assert 0.3e6 <= counts["tiny"] <= 0.5e6
    assert 1.4e6 <= counts["small"] <= 1.7e6
    assert describe(build_model(preset("tiny", in_channels=3, num_classes=10))).startswith("UNet tiny: ")
    assert preset_name(tiny_unet()) is None
    preset("tiny")["channel_mults"].append(4)                              # presets hand out copies
    assert PRESETS["tiny"]["channel_mults"] == [1, 2, 2]
    assert describe(tiny_unet()) == f"UNet: {count_parameters(tiny_unet()):,} parameters"


def test_out_channels_may_differ():
    net = perturbed(tiny_unet(out_channels=2))
    assert net(randn(3, 1, 8, 8), 5).shape == (3, 2, 8, 8)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_mlp_output_shape(dim):
    net = MLP(dim, hidden=32, depth=2)
    assert net(randn(7, dim), torch.rand(7)).shape == (7, dim)


def test_untrained_networks_output_exactly_zero():
    # improved-diffusion's zero-initialised last layers: the network starts as the zero function
    assert torch.equal(tiny_unet()(randn(2, 1, 8, 8), 3), torch.zeros(2, 1, 8, 8))
    assert torch.equal(MLP(3, hidden=16, depth=2)(randn(4, 3), 0.5), torch.zeros(4, 3))


# ----------------------------------------------------------------------------- time and labels

@pytest.mark.parametrize("make", [lambda: tiny_unet(), lambda: tiny_unet(time_embedding="fourier"),
                                  lambda: tiny_unet(time_conditioning="adagn"),
                                  lambda: MLP(2, hidden=32, depth=2),
                                  lambda: MLP(2, hidden=32, depth=2, time_embedding="fourier", norm="none")])
def test_output_depends_on_time(make):
    net = perturbed(make())
    x = randn(4, *((1, 8, 8) if isinstance(net, UNet) else (2,)))
    t = torch.tensor([0.1, 0.2, 0.3, 0.4]) if net.config()["time_embedding"] == "fourier" else torch.tensor([1, 2, 3, 4])
    out = net(x, t)
    assert torch.equal(out, net(x, t))                                 # deterministic in eval mode
    scale = out.abs().max()
    assert scale > 1e-2
    differs = (out - net(x, t + (0.1 if t.is_floating_point() else 50))).flatten(1).abs().amax(1)
    assert torch.all(differs > 1e-4 * scale), differs / scale             # far above rounding error
    # a scalar time is every sample's time; long and float times give the same embedding
    assert torch.allclose(net(x, t[1].item()), net(x, t[1].expand(4)), rtol=0, atol=1e-6)
    if not t.is_floating_point():
        assert torch.equal(net(x, t), net(x, t.float()))


def test_output_depends_on_time_after_training_from_zero_init():
    # without any perturbation: a few optimiser steps make the output depend on t
    net = tiny_unet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = randn(8, 1, 8, 8)
    t = torch.arange(8) * 100
    target = randn(8, 1, 8, 8, seed=1) * (t.float() / 700).view(-1, 1, 1, 1)
    for _ in range(5):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x1 = x[:1].expand(8, -1, -1, -1)
    out = net(x1, t)
    assert (out[0] - out[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("make", [lambda: tiny_unet(num_classes=3), lambda: MLP(2, hidden=16, depth=2, num_classes=3)])
def test_output_depends_on_label_and_none_is_the_null_label(make):
    net = perturbed(make())
    x = randn(3, *((1, 8, 8) if isinstance(net, UNet) else (2,)))
    t = torch.tensor([5, 5, 5])
    outs = [net(x, t, torch.full((3,), k)) for k in range(4)]
    assert torch.equal(net(x, t), outs[3])                               # y=None is label num_classes
    assert torch.equal(net(x, t, [3, 3, 3]), outs[3])                    # lists are accepted
    for i in range(4):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-3
    # each sample is conditioned on its own label
    mixed = net(x, t, torch.tensor([0, 1, 2]))
    for k in range(3):
        assert torch.allclose(mixed[k], outs[k][k], atol=1e-5)


# ----------------------------------------------------------------------------- time embeddings

def test_sinusoidal_embedding_matches_closed_form():
    t = torch.tensor([0.0, 1.0, 37.0, 999.0])
    dim = 6
    emb = sinusoidal_embedding(t, dim)
    for i, ti in enumerate(t.tolist()):
        w = [10000 ** (-k / 3) for k in range(3)]                         # w_k = 10000^(-k/(d/2))
        expected = [math.sin(ti * wk) for wk in w] + [math.cos(ti * wk) for wk in w]
        assert emb[i].tolist() == pytest.approx(expected, abs=2e-4)
    # odd dimension: the same, with a zero column appended
    odd = sinusoidal_embedding(t, 7)
    assert torch.equal(odd[:, :6], emb) and torch.equal(odd[:, 6], torch.zeros(4))


def test_sinusoidal_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 3, 250, 999])
    ours = sinusoidal_embedding(t, 64)
    theirs = get_timestep_embedding(t, 64, flip_sin_to_cos=False, downscale_freq_shift=0)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_fourier_features_closed_form_and_frequency_scale():
    ff = FourierFeatures(512, scale=16.0, seed=3)
    b = ff.frequencies
    assert b.shape == (256,)
    # b_k ~ N(0, 16^2): the sample standard deviation is within 4 standard errors (16 / sqrt(2 n))
    assert abs(b.std().item() - 16.0) < 4 * 16.0 / math.sqrt(2 * 256)
    t = torch.tensor([0.0, 0.25, 1.0])
    angle = 2 * math.pi * t.double()[:, None] * b.double()[None, :]
    expected = torch.cat([angle.sin(), angle.cos()], 1).float()
    assert torch.allclose(ff(t), expected, atol=1e-4, rtol=0)
    assert not torch.equal(FourierFeatures(512, seed=4).frequencies, ff.frequencies)


@pytest.mark.parametrize("make", [lambda: tiny_unet(time_embedding="fourier", seed=7),
                                  lambda: MLP(2, hidden=16, depth=1, time_embedding="fourier", seed=7)])
def test_fourier_features_survive_rebuild_and_load_state_dict(make):
    net = perturbed(make())
    frequencies = net.time_embed.features.frequencies.clone()
    rebuilt = build_model(json.loads(json.dumps(net.config())))
    assert torch.equal(rebuilt.time_embed.features.frequencies, frequencies)
    assert "time_embed.features.frequencies" in net.state_dict()
    rebuilt.load_state_dict(net.state_dict())
    x = randn(2, *((1, 8, 8) if isinstance(net, UNet) else (2,)))
    assert torch.equal(rebuilt(x, torch.tensor([0.3, 0.6])), net(x, torch.tensor([0.3, 0.6])))


def test_time_scale_multiplies_the_time():
    a = perturbed(MLP(2, hidden=16, depth=1, time_scale=1000.0))
    b = MLP(2, hidden=16, depth=1)
    b.load_state_dict(a.state_dict())
    x = randn(3, 2)
    assert torch.allclose(a(x, torch.tensor([0.001, 0.5, 0.999])), b(x, torch.tensor([1.0, 500.0, 999.0])), atol=1e-5)


# ----------------------------------------------------------------------------- config and weights

@pytest.mark.parametrize("make", [lambda: build_model(preset("tiny", num_classes=10, seed=4)),
                                  lambda: tiny_unet(time_conditioning="adagn", dropout=0.1),
                                  lambda: build_model(PRESETS["mlp"])])
def test_config_rebuilds_the_same_network_with_the_same_weights(make):
    state = torch.get_rng_state()
    net = make()
    assert torch.equal(torch.get_rng_state(), state)                      # global RNG untouched
    config = net.config()
    assert json.loads(json.dumps(config)) == config and config["kind"] in ("unet", "mlp")
    rebuilt = build_model(json.loads(json.dumps(config)))
    assert rebuilt.config() == config
    a, b = net.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_model({**config, "seed": config["seed"] + 1})
    assert not torch.equal(next(iter(other.parameters())), next(iter(net.parameters())))


def test_initialisation_follows_pytorch_defaults():
    net = MLP(2, hidden=64, depth=1, seed=0)
    w = net.blocks[0].linear1.weight                                       # U(-1/8, 1/8)
    assert w.abs().max() <= 1 / 8 and w.abs().max() > 0.12
    assert abs(w.var().item() - (1 / 8) ** 2 / 3) < 0.15 * (1 / 8) ** 2 / 3
    assert torch.equal(net.linear_out.weight, torch.zeros_like(net.linear_out.weight))
    assert torch.equal(net.blocks[0].linear2.bias, torch.zeros(64))


# ----------------------------------------------------------------------------- blocks against formulas

def _group_norm(x, groups, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1).double()
    mean = xg.mean(-1, keepdim=True)
    var = xg.var(-1, unbiased=False, keepdim=True)
    return ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape).float()


@pytest.mark.parametrize("conditioning", ["add", "adagn"])
def test_res_block_matches_formula(conditioning):
    block = perturbed(ResBlock(4, 6, 5, groups=2, conditioning=conditioning), scale=0.3).eval()
    x, emb = randn(2, 4, 5, 5), randn(2, 5, seed=1)
    h = F.conv2d(F.silu(_group_norm(x, 2) * block.norm1.weight[:, None, None] + block.norm1.bias[:, None, None]),
                 block.conv1.weight, block.conv1.bias, padding=1)
    e = (F.silu(emb) @ block.emb_proj.weight.T + block.emb_proj.bias)[:, :, None, None]
    g2, b2 = block.norm2.weight[:, None, None], block.norm2.bias[:, None, None]
    if conditioning == "add":
        h = _group_norm(h + e, 2) * g2 + b2
    else:                                                                  # GN(h) (1 + scale) + shift
        scale, shift = e[:, :6], e[:, 6:]
        h = (_group_norm(h, 2) * g2 + b2) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = F.conv2d(x, block.skip.weight, block.skip.bias)
    assert torch.allclose(block(x, emb), skip + h, atol=1e-5)


@pytest.mark.parametrize("conditioning", ["add", "adagn"])
def test_res_block_dropout_sits_between_the_second_activation_and_the_last_convolution(conditioning):
    """DDPM's position of dropout (Ho et al. 2020; Nichol & Dhariwal 2021):
    ``skip(x) + conv2(dropout(SiLU(h)))``, not on the input, the skip path or the residual sum.
    A train-mode block with p = 0.5 is run with torch's generator seeded, then the output is rebuilt
    by hand from the block's own layers (whose formula test_res_block_matches_formula checks) with
    ``F.dropout`` at that position, from the same seed: the same Bernoulli mask, so the same output
    up to float32 rounding (the block's fused ``addcmul`` rounds once where the rebuild rounds
    twice; outputs reach about 13, where float32's spacing is 1e-6, so 1e-5 relative and
    absolute). The mask makes a difference: the output moves by several units between train and
    eval mode (asserted above 1e-2), and a dropout elsewhere in the block changes it by as much."""
    block = perturbed(ResBlock(4, 6, 5, groups=2, dropout=0.5, conditioning=conditioning), scale=0.3)
    x, emb = randn(2, 4, 5, 5), randn(2, 5, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        out = block.train()(x, emb)
        torch.manual_seed(7)
        h = block.conv1(F.silu(block.norm1(x)))
        e = block.emb_proj(F.silu(emb))[:, :, None, None]
        if conditioning == "add":
            h = block.norm2(h + e)
        else:
            scale, shift = e.chunk(2, dim=1)
            h = block.norm2(h) * (1 + scale) + shift
        expected = block.skip(x) + block.conv2(F.dropout(F.silu(h), p=0.5, training=True))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (out - block.eval()(x, emb)).abs().max() > 1e-2


@pytest.mark.parametrize("fused_layout", ["auto", True])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_block_matches_softmax_formula(num_heads, fused_layout, monkeypatch):
    """Both layouts of Q, K, V (as on a CPU, and as off it, for the fused kernels) compute the formula."""
    monkeypatch.setattr(AttentionBlock, "fused_layout", fused_layout)
    block = perturbed(AttentionBlock(4, num_heads, groups=2), scale=0.5)
    x = randn(2, 4, 3, 2)
    n, c, L = 2, 4, 6
    d = c // num_heads
    hn = _group_norm(x, 2) * block.norm.weight[:, None, None] + block.norm.bias[:, None, None]
    qkv = torch.einsum("oc,ncl->nol", block.qkv.weight[:, :, 0, 0], hn.reshape(n, c, L)) + block.qkv.bias[:, None]
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    heads = []
    for i in range(num_heads):
        qi, ki, vi = (z[:, i * d:(i + 1) * d].transpose(1, 2) for z in (q, k, v))   # (n, L, d)
        weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
        heads.append((weights @ vi).transpose(1, 2))                                 # (n, d, L)
    a = torch.cat(heads, 1)
    expected = x + (torch.einsum("oc,ncl->nol", block.proj.weight[:, :, 0, 0], a)
                    + block.proj.bias[:, None]).reshape(x.shape)
    assert torch.allclose(block(x), expected, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_layout_for_the_fused_kernels(channels_last, monkeypatch):
    """The Q, K, V that SDPA gets: off the CPU (meta here) each head's channels are adjacent,
    which the fused kernels need (PyTorch's own choice of kernel says so where it can tell, on
    the CPU); on the CPU the default layout is the convolution's, served by the math kernel."""
    seen = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v: seen.append((q, k, v)) or q)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for device in ("cpu", "meta"):
        block = AttentionBlock(64, 2, groups=8).to(device=device, memory_format=fmt)
        block.attend(torch.zeros(3, 64, 4, 4, device=device).contiguous(memory_format=fmt))
    (cpu_qkv, meta_qkv) = seen
    for q in meta_qkv:
        assert q.shape == (3, 2, 16, 32) and q.stride(-1) == 1
    assert all(q.stride(-1) == (1 if channels_last else 16) for q in cpu_qkv)
    choose = getattr(torch, "_fused_sdp_choice", None)           # 0 is the math kernel
    if choose is not None:
        assert choose(*[torch.randn(q.shape) for q in meta_qkv]) != 0          # the layout of meta_qkv
        plain = [torch.randn(3, 2, 32, 16).transpose(-1, -2) for _ in range(3)]
        assert choose(*plain) == 0


def test_res_block_parameter_count_matches_formula():
    i, o, e = 16, 32, 64
    for conditioning, factor in (("add", 1), ("adagn", 2)):
        block = ResBlock(i, o, e, groups=8, conditioning=conditioning)
        expected = (2 * i + 9 * i * o + o + factor * (e * o + o) + 2 * o + 9 * o * o + o + i * o + o)
        assert count_parameters(block) == expected


def test_adagn_and_add_both_train():
    x, target = randn(8, 1, 8, 8), randn(8, 1, 8, 8, seed=1)
    t = torch.arange(8) * 120
    for conditioning in ("add", "adagn"):
        net = tiny_unet(time_conditioning=conditioning)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        losses = []
        for _ in range(30):
            loss = (net(x, t) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], conditioning


# ----------------------------------------------------------------------------- gradients flow

def test_every_unet_parameter_gets_a_gradient_after_a_few_steps():
    net = tiny_unet(num_classes=2, time_conditioning="adagn")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, target = randn(4, 1, 8, 8), randn(4, 1, 8, 8, seed=1)
    t, y = torch.tensor([1, 200, 400, 900]), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        opt.zero_grad()
        (net(x, t, y) - target).pow(2).mean().backward()
        opt.step()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_mlp_overfits_a_handful_of_points():
    net = MLP(2, hidden=64, depth=2, seed=1)
    x = randn(8, 2)
    t = torch.linspace(0, 900, 8)
    target = randn(8, 2, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = (net(x, t) - target).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.5 and loss.item() < 1e-3 * first


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call,message", [
    (lambda net: net(randn(1, 1, 30, 30), 1), r"input size 30x30 is not a multiple of 4: .* pad or crop .* 32x32"),
    (lambda net: net(randn(1, 1, 32, 28), 1), None),
    (lambda net: net(randn(1, 3, 32, 32), 1), r"input has 3 channels but the U-Net was built with in_channels=1"),
    (lambda net: net(randn(1, 32, 32), 1), r"images of shape \(N, C, H, W\); got \(1, 32, 32\)"),
    (lambda net: net(randn(2, 1, 8, 8), 1, torch.tensor([0, 1])), r"labels y were given but the network was built without classes"),
    (lambda net: net(randn(2, 1, 8, 8), torch.tensor([1, 2, 3])), r"time t has shape \(3,\); pass one time per sample, shape \(2,\)"),
    (lambda net: net(randn(2, 1, 8, 8), torch.tensor([True, False])), r"time t must be a real number"),
    (lambda net: net(randn(2, 1, 8, 8), torch.tensor([1j, 2j])), r"time t must be a real number .*torch.complex64"),
])
def test_unet_input_errors(call, message):
    net = build_model(PRESETS["tiny"])
    if message is None:
        assert call(net).shape == (1, 1, 32, 28)
    else:
        with pytest.raises(ScorekitError, match=message):
            call(net)


@pytest.mark.parametrize("y,message", [
    (torch.tensor([0, 4]), r"label 4 in y is outside 0..3: the network has num_classes=3 .* 3 \(or -1\) means 'no label'"),
    (torch.tensor([-2, 0]), r"label -2 in y is outside 0..3"),
    (torch.tensor([0.0, 1.0]), r"labels y must be integers"),
    (torch.tensor([True, False]), r"labels y must be integers .* torch.bool"),
    (torch.tensor([0j, 1j]), r"labels y must be integers .* torch.complex64"),
    (torch.tensor([0, 1, 2]), r"labels y have shape \(3,\)"),
])
def test_label_errors(y, message):
    net = MLP(2, hidden=8, depth=1, num_classes=3)
    with pytest.raises(ScorekitError, match=message):
        net(randn(2, 2), 0.5, y)


@pytest.mark.parametrize("config,message", [
    ({"kind": "transformer"}, r"unknown model kind 'transformer'.*unet, mlp"),
    ({"dim": 2}, r"must be a dict with a 'kind' key"),
    ({"kind": "mlp", "width": 3}, r"unknown mlp model option width; valid: dim, hidden"),
    ({**PRESETS["tiny"], "image_size": 28}, r"attention_resolutions \[8\]: \[8\] is not the resolution of any level; .* \[28, 14, 7\]"),
    ({**PRESETS["tiny"], "groups": 5}, r"groups=5 does not divide 16 channels"),
    ({**PRESETS["tiny"], "num_heads": 3}, r"num_heads=3 does not divide 32 channels"),
    ({**PRESETS["tiny"], "time_embedding": "learned"}, r"unknown time_embedding 'learned'; choose one of sinusoidal, fourier"),
    ({**PRESETS["tiny"], "time_conditioning": "film"}, r"unknown time_conditioning 'film'; choose one of add, adagn"),
    ({**PRESETS["tiny"], "channel_mults": []}, r"channel_mults must be a non-empty list"),
])
def test_config_errors(config, message):
    with pytest.raises(ScorekitError, match=message):
        build_model(config)
    with pytest.raises(ScorekitError, match="unknown model preset 'huge'"):
        preset("huge")


def test_mlp_shape_error():
    with pytest.raises(ScorekitError, match=r"built for data of shape \(N, 2\); got \(4, 3\)"):
        MLP(2, hidden=8, depth=1)(randn(4, 3), 0.1)


# ----------------------------------------------------------------------------- use with the library

def test_unet_samples_through_denoiser_with_integer_ddpm_steps():
    net = perturbed(tiny_unet(), scale=0.02)
    process = scorekit.DDPM(schedule="linear")
    seen = []
    original = net.forward

    def spy(x, t, y=None):
        seen.append(t.dtype)
        return original(x, t, y)

    net.forward = spy
    x_T = process.prior_sample((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = scorekit.sample(net, x_T, process=process, prediction_type="eps", sampler="ddim", num_steps=4,
                             generator=torch.Generator().manual_seed(1))
    assert x0.shape == x_T.shape and torch.isfinite(x0).all()
    assert seen and all(d == torch.long for d in seen)


# ----------------------------------------------------------------------------- reference implementation

def _diffusers_twin(net: UNet):
    """diffusers' UNet2DModel with the same layout as ``net`` and ``net``'s weights copied in."""
    from diffusers import UNet2DModel

    cfg = net.config()
    levels = [cfg["image_size"] // 2 ** i for i in range(len(cfg["channel_mults"]))]
    attn = [r in cfg["attention_resolutions"] for r in levels]
    channels = tuple(cfg["base_channels"] * m for m in cfg["channel_mults"])
    twin = UNet2DModel(
        sample_size=cfg["image_size"], in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        block_out_channels=channels, layers_per_block=cfg["num_res_blocks"], norm_num_groups=cfg["groups"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=channels[-1] // cfg["num_heads"],     # heads = channels // head_dim
        resnet_time_scale_shift="scale_shift" if cfg["time_conditioning"] == "adagn" else "default",
        attn_norm_num_groups=cfg["groups"],          # else diffusers drops this norm when "scale_shift"
        num_class_embeds=cfg["num_classes"] + 1 if cfg["num_classes"] else None,
        flip_sin_to_cos=True, freq_shift=0).eval()

    theirs = []
    for blocks in (twin.down_blocks, [twin.mid_block], twin.up_blocks):
        for b in blocks:
            if b is twin.mid_block:
                theirs += [b.resnets[0], b.attentions[0], b.resnets[1]]
                continue
            for i, r in enumerate(b.resnets):
                theirs.append(r)
                if getattr(b, "attentions", None) is not None:
                    theirs.append(b.attentions[i])
            theirs += list(getattr(b, "downsamplers", None) or []) + list(getattr(b, "upsamplers", None) or [])
    ours = [layer for stage in [*net.down, net.middle, *net.up] for layer in stage]
    assert len(ours) == len(theirs)

    def copy(dst, src):
        dst.weight.copy_(src.weight.reshape(dst.weight.shape))
        dst.bias.copy_(src.bias)

    with torch.no_grad():
        for a, b in zip(ours, theirs):
            if isinstance(a, ResBlock):
                for name in ("norm1", "conv1", "norm2", "conv2"):
                    copy(getattr(b, name), getattr(a, name))
                copy(b.time_emb_proj, a.emb_proj)
                if b.conv_shortcut is not None:
                    copy(b.conv_shortcut, a.skip)
            elif isinstance(a, AttentionBlock):
                copy(b.group_norm, a.norm)
                c = a.proj.weight.shape[0]
                for i, lin in enumerate((b.to_q, b.to_k, b.to_v)):
                    lin.weight.copy_(a.qkv.weight[i * c:(i + 1) * c, :, 0, 0])
                    lin.bias.copy_(a.qkv.bias[i * c:(i + 1) * c])
                copy(b.to_out[0], a.proj)
            else:                                                              # Downsample / Upsample
                copy(b.conv, a.conv)
        copy(twin.conv_in, net.conv_in)
        copy(twin.conv_norm_out, net.norm_out)
        copy(twin.conv_out, net.conv_out)
        half = cfg["base_channels"] // 2                                        # diffusers: [cos, sin]
        twin.time_embedding.linear_1.weight.copy_(torch.roll(net.time_embed.mlp[0].weight, half, dims=1))
        twin.time_embedding.linear_1.bias.copy_(net.time_embed.mlp[0].bias)
        copy(twin.time_embedding.linear_2, net.time_embed.mlp[2])
        if cfg["num_classes"]:
            twin.class_embedding.weight.copy_(net.class_embed.weight)
    return twin


@pytest.mark.parametrize("options", [
    dict(),
    dict(time_conditioning="adagn", num_heads=2, channel_mults=(1, 2, 2), attention_resolutions=(4, 2),
         in_channels=3, out_channels=2),
    dict(num_classes=3, num_res_blocks=2),
])
def test_unet_equals_diffusers_unet2dmodel_with_the_same_weights(options):
    net = perturbed(tiny_unet(**options), scale=0.05).eval()
    twin = _diffusers_twin(net)
    assert count_parameters(twin) == count_parameters(net)
    x = randn(3, net.in_channels, 8, 8)
    t = torch.tensor([0, 17, 999])
    y = torch.tensor([0, 2, 3]) if net.num_classes else None
    with torch.no_grad():
        ours = net(x, t, y)
        theirs = twin(x, t, class_labels=y).sample
    assert ours.abs().max() > 0.1
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()


def test_bfloat16_compute_stays_close_to_float32():
    net = perturbed(tiny_unet(), scale=0.05)
    fast = tiny_unet(compute_dtype="bfloat16")
    fast.load_state_dict(net.state_dict())
    x, t = randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    exact, approx = net(x, t), fast(x, t)
    assert approx.dtype == torch.float32
    rel = ((approx - exact).norm() / exact.norm()).item()
    assert 1e-4 < rel < 0.03                                  # really in bfloat16, yet close to float32
    approx.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())


# --- variance heads (Improved DDPM) --------------------------------------------------------------

def test_learn_variance_doubles_the_output_and_round_trips_through_the_config():
    """learn_variance=True: 2C outputs (UNet) / 2D (MLP), the flag kept in config() so build_model
    rebuilds the same network, the preset name unchanged; a conflicting out_channels is refused."""
    unet = perturbed(tiny_unet(learn_variance=True))
    x = randn(3, 1, 8, 8)
    assert unet(x, 5).shape == (3, 2, 8, 8)
    rebuilt = build_model(json.loads(json.dumps(unet.config())))
    rebuilt.load_state_dict(unet.state_dict())
    assert rebuilt.config()["learn_variance"] is True
    torch.testing.assert_close(rebuilt(x, 5), unet(x, 5))
    mlp = MLP(3, hidden=16, depth=1, learn_variance=True)
    assert mlp(randn(4, 3), torch.rand(4)).shape == (4, 6)
    assert build_model(mlp.config()).config() == mlp.config()
    assert "learn_variance" not in MLP(3, hidden=16, depth=1).config()       # old configs unchanged
    assert preset_name(build_model(preset("tiny", learn_variance=True))) == "tiny"
    with pytest.raises(ScorekitError, match="learn_variance needs out_channels"):
        tiny_unet(learn_variance=True, out_channels=3)
