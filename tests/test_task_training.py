"""Trained image-to-image tasks: a network conditioned by concatenation learns the exact conditional
denoiser of a Gaussian problem; task runs record their task, resume bit for bit and refuse
settings that do not fit."""
import functools
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from scorekit import ScorekitError
from scorekit.conditioning import Condition
from scorekit.losses import diffusion_loss
from scorekit.models import MLP
from scorekit.prediction import Denoiser
from scorekit.processes import DDPM
from scorekit.train import TrainConfig, list_checkpoints, load_checkpoint, read_metrics, train
from scorekit.train.objectives import Batch, DiffusionObjective


def test_a_network_conditioned_by_concatenation_learns_the_exact_conditional_denoiser():
    r"""``x = (x_a, x_b)`` jointly Gaussian (unit variances, correlation ``rho = 0.9``), condition
    ``c = x_a``. Given ``c`` the data are ``x_a = c`` and ``x_b ~ N(rho c, 1 - rho^2)``, so the exact
    conditional denoiser is ``E[x_0 | x_t, c] = (c, rho c + v alpha (x_b,t - alpha rho c) / (alpha^2 v
    + sigma^2))`` with ``v = 1 - rho^2``; the unconditional one is ``Sigma alpha (alpha^2 Sigma +
    sigma^2 I)^{-1} x_t``. A 2-block MLP with ``cond_channels=1`` trained 400 steps of 256 by the
    v-loss on a 100-step cosine DDPM is compared with both on 4000 fresh ``(x_0, c, t, x_t)``: its
    mean squared distance to the exact conditional denoiser was 0.0077, the unconditional exact
    denoiser's 0.74 (ratio 0.010); the test asks for a ratio below 0.1, which training that ignored
    ``c`` could not reach (its best is the unconditional denoiser, ratio 1)."""
    rho = 0.9
    sigma_x = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(sigma_x)

    def draw(n, g):
        x = torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T
        return x.float(), x[:, :1].float()

    process = DDPM(num_steps=100, schedule="cosine")
    net = MLP(dim=2, hidden=64, depth=2, cond_channels=1, seed=0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x, c = draw(256, g)
        out = diffusion_loss(functools.partial(net, cond=c), process, x, prediction_type="v", generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    net.eval()

    gt = torch.Generator().manual_seed(1)
    n = 4000
    x, c = draw(n, gt)
    t = torch.randint(0, 100, (n,), generator=gt)
    a, s = process.alpha(t).double(), process.sigma(t).double()
    x_t = a[:, None] * x.double() + s[:, None] * torch.randn(n, 2, generator=gt, dtype=torch.float64)
    with torch.no_grad():
        pred = Denoiser(net, process, "v").predict(x_t.float(), t, Condition(image=c)).double()
    v, cb = 1 - rho ** 2, c.double()[:, 0]
    exact = torch.stack([cb, rho * cb + v * a * (x_t[:, 1] - a * rho * cb) / (a ** 2 * v + s ** 2)], 1)
    precision = a[:, None, None] ** 2 * sigma_x + s[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
    unconditional = a[:, None] * (sigma_x @ torch.linalg.solve(precision, x_t[:, :, None]))[:, :, 0]
    err_net = float(((pred - exact) ** 2).sum(1).mean())
    err_unconditional = float(((unconditional - exact) ** 2).sum(1).mean())
    assert err_unconditional > 0.5
    assert err_net < 0.1 * err_unconditional, (err_net, err_unconditional)


def task_config(**overrides) -> TrainConfig:
    """A tiny task run on 8x8 digits with every source of randomness: data order, label dropout
    off (a task model has no classes), inpainting masks of every kind with noise fill, condition
    dropout, dropout layers, timesteps and noise; plus gradient accumulation."""
    base = dict(data="digits", data_options={"stop": 96}, model="tiny",
                model_options={"dropout": 0.1, "base_channels": 8, "groups": 4},
                process_options={"num_steps": 10}, task="inpaint",
                task_options={"kind": "mixed", "fill": "noise"}, cond_dropout=0.3, steps=6,
                batch_size=8, grad_accum=2, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1,
                checkpoint_every=2, keep_checkpoints=None, sample_num=4, sample_steps=3)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")
def test_a_task_run_records_its_task_and_resumes_bit_for_bit(tmp_path):
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    train(task_config(), straight, progress=False)
    train(task_config(), stopped, progress=False, stop_at_step=3)
    assert [s for s, _ in list_checkpoints(stopped)] == [2, 3]
    train(task_config(), stopped, progress=False, resume=True)
    for name in ("model", "ema", "trainer"):
        a = load_file(os.path.join(straight, "checkpoints", "step-0000006", f"{name}.safetensors"))
        b = load_file(os.path.join(stopped, "checkpoints", "step-0000006", f"{name}.safetensors"))
        assert a.keys() == b.keys()
        assert not [k for k in a if not torch.equal(a[k], b[k])], name
    assert "rng.degrade" in a
    rows = [[{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")}
             for r in read_metrics(os.path.join(run, "metrics.jsonl"))] for run in (straight, stopped)]
    assert rows[0] == rows[1]
    config = json.load(open(os.path.join(straight, "config.json")))
    assert config["task"] == {"name": "inpaint", "options": {"kind": "mixed", "fill": "noise"},
                              "cond_dropout": 0.3, "cond_channels": 2}
    assert config["model"]["cond_channels"] == 2 and config["model"]["num_classes"] is None
    assert config["train"]["task"] == "inpaint" and config["label_dropout"] == 0.0
    ckpt = load_checkpoint(straight)
    assert ckpt.task["name"] == "inpaint" and ckpt.ema_net.cond_channels == 2
    with pytest.raises(ScorekitError, match="task 'inpaint' -> 'sr2'"):
        train(task_config(task="sr2", task_options={}, steps=8), stopped, progress=False, resume=True)


def test_a_task_run_makes_its_conditions_on_the_host():
    """A task's degradation runs where it costs the GPU no wait: the objective says so, and a GPU
    run then keeps the data in host memory ("pinned") whatever their size."""
    from scorekit.data import load_dataset
    from scorekit.train.trainer import place_data

    data = load_dataset("digits", stop=64)
    args = dict(process=DDPM(num_steps=10), dataset=data, timestep_sampler=None)
    task = DiffusionObjective(task_config(task="sr2", task_options={}).validate(),
                              net_config={"kind": "unet", "cond_channels": 2}, **args)
    plain = DiffusionObjective(task_config(task=None, task_options={}, cond_dropout=0.0).validate(),
                               net_config={"kind": "unet"}, **args)
    assert task.conditions_on_host and not plain.conditions_on_host
    x, y, placement = place_data(data, torch.device("cuda"), host=True)   # decided without a GPU
    assert placement == "pinned" and x is data.x and y is data.y


def test_the_condition_is_drawn_from_the_degrade_generator_with_dropout():
    from scorekit.data import load_dataset

    cfg = task_config(task="sr2", task_options={}, cond_dropout=0.5).validate()
    data = load_dataset("digits", stop=64)
    obj = DiffusionObjective(cfg, process=DDPM(num_steps=10), dataset=data,
                             net_config={"kind": "unet", "cond_channels": 2}, timestep_sampler=None)
    batch = Batch(data.x[:64], None)
    a = obj.attach_condition(batch, torch.Generator().manual_seed(3))
    b = obj.attach_condition(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a.cond, b.cond) and a.cond.shape == (64, 2, 8, 8)
    dropped = Condition(image=a.cond).is_null
    assert 16 <= int(dropped.sum()) <= 48                    # Binomial(64, 0.5): 4 standard deviations
    assert bool((a.cond[~dropped, 1] == 1).all())            # sr: every pixel observed


@pytest.mark.parametrize("overrides, message", [
    (dict(task="deblur"), "unknown task 'deblur'"),
    (dict(task="jpeg", task_options={"quality": 5}), "unknown jpeg task option quality"),
    (dict(task=None, task_options={}, cond_dropout=0.1), "cond_dropout=0.1 needs a task"),
    (dict(task="colorize", task_options={}), "RGB images"),
    (dict(task="sr2", task_options={}, data="moons", data_options={}, model="mlp", model_options={}),
     "degrades images"),
    (dict(task="sr2", task_options={}, objective="classifier", cond_dropout=0.0, model="auto",
          model_options={}), "leave task at None"),
])
def test_settings_that_do_not_fit_a_task_are_refused(tmp_path, overrides, message):
    with pytest.raises(ScorekitError, match=message):
        train(task_config(**overrides), str(tmp_path / "run"), progress=False)
