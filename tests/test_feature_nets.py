"""Tests of the feature networks scorekit trains for evaluation (scorekit.metrics.feature_nets):
the cache (its key follows the data's content and every setting, a second call loads, the folder
appears whole or not at all), the held-out split, the refusals, and the accuracy the digits kind
reaches on real MNIST digits (the documented >= 98 %)."""
import json
import os
from pathlib import Path

import pytest
import torch

from scorekit.data import Dataset, load_dataset
from scorekit.errors import ScorekitError
from scorekit.metrics import FEATURE_KINDS, FeatureExtractor, load_feature_network, trained_feature_network
from scorekit.metrics import feature_nets
from scorekit.metrics.digits_classifier import DigitClassifier, confident_share, save_digit_classifier
from scorekit.metrics.feature_nets import RECIPES, heldout_split

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-test"

INFO_KEYS = {"kind", "heldout_accuracy", "heldout_accuracy_per_class", "num_train", "num_heldout",
             "heldout_share", "epochs", "seed", "data_spec", "data_hash", "train_seconds", "image_shape",
             "num_classes", "feature_dim", "parameters", "key", "recipe", "loaded"}


@pytest.fixture(scope="module")
def digits():
    """120 of scikit-learn's 8x8 digits (every class present): trains in well under a second."""
    return load_dataset("digits", stop=120)


def build(data, cache, **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("progress", False)
    return trained_feature_network("digits", data, cache, **kw)


def folders(cache) -> list[str]:
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def colour_images(n, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.arange(n) % classes,
                   num_classes=classes, spec="colour-noise")


def test_cache_key_follows_the_data_content_and_every_setting(tmp_path, digits):
    base = build(digits, tmp_path)
    assert base.name == "digits-classifier" and isinstance(base, FeatureExtractor) and base.has_probabilities
    assert INFO_KEYS <= set(base.info) and base.info["loaded"] is False
    assert base.info["kind"] == "digits" and base.info["image_shape"] == [1, 8, 8]
    assert base.info["num_classes"] == 10 and base.info["data_spec"] == "digits"
    per_class = torch.bincount(digits.y, minlength=10).double()
    assert base.info["num_heldout"] == int(torch.floor(0.2 * per_class + 0.5).sum())
    assert base.info["num_train"] + base.info["num_heldout"] == 120
    assert 0 <= base.info["heldout_accuracy"] <= 1 and base.info["epochs"] == 1
    assert folders(tmp_path) == [f"digits-{base.info['key']}"] and len(base.info["key"]) == 12
    # the same images under another name are the same data; one changed pixel or label is not
    renamed = Dataset(digits.x.clone(), digits.y.clone(), num_classes=10, spec="elsewhere")
    assert build(renamed, tmp_path).info["loaded"] is True
    pixel = digits.x.clone()
    pixel[5, 0, 3, 3] = -pixel[5, 0, 3, 3]
    label = digits.y.clone()
    label[7] = (label[7] + 1) % 10
    variants = [build(Dataset(pixel, digits.y, num_classes=10, spec="digits"), tmp_path),
                build(Dataset(digits.x, label, num_classes=10, spec="digits"), tmp_path),
                build(digits, tmp_path, epochs=2), build(digits, tmp_path, seed=1),
                build(digits, tmp_path, heldout_share=0.25)]
    keys = {base.info["key"]} | {v.info["key"] for v in variants}
    assert len(keys) == 6 and not any(v.info["loaded"] for v in variants)
    assert len(folders(tmp_path)) == 6
    assert variants[0].info["data_hash"] != base.info["data_hash"] != variants[1].info["data_hash"]


def test_a_second_call_loads_the_folder_without_training(tmp_path, digits, monkeypatch):
    lines = []
    first = build(digits, tmp_path, progress=True, log=lines.append)
    assert any(f"training on {first.info['num_train']} images" in line for line in lines)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(feature_nets, "train_image_classifier", no_training)
    lines.clear()
    again = build(digits, tmp_path, log=lines.append)
    assert again.info["loaded"] is True and any("loaded from" in line for line in lines)
    assert again.weights_hash == first.weights_hash
    assert {k: v for k, v in again.info.items() if k != "loaded"} == \
        {k: v for k, v in first.info.items() if k != "loaded"}
    f1, p1 = first.features_and_probabilities(digits.x)
    f2, p2 = again.features_and_probabilities(digits.x)
    assert torch.equal(f1, f2) and torch.equal(p1, p2)
    assert f1.shape == (120, RECIPES["digits"].feature_dim) == (120, 128) and p1.shape == (120, 10)
    assert torch.allclose(p1.sum(1), torch.ones(120, dtype=torch.float64))
    loaded = load_feature_network(again.path)
    assert loaded.weights_hash == first.weights_hash and loaded.info["heldout_accuracy"] == first.info["heldout_accuracy"]


def test_the_folder_appears_whole_or_not_at_all(tmp_path, digits, monkeypatch):
    def broken(state, path):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise RuntimeError("interrupted while writing the weights")

    monkeypatch.setattr(feature_nets, "_write_weights", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        build(digits, tmp_path)
    assert folders(tmp_path) == []                        # no folder, no hidden temporary one
    monkeypatch.undo()
    net = build(digits, tmp_path)
    assert folders(tmp_path) == [os.path.basename(net.path)]
    assert sorted(os.listdir(net.path)) == ["config.json", "model.safetensors"]


def test_other_image_shapes_are_refused_naming_both(tmp_path, digits):
    ex = build(digits, tmp_path)
    with pytest.raises(ScorekitError, match=r"\(1, 8, 8\).*got \(1, 28, 28\)"):
        ex.features(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ScorekitError, match=r"\(1, 8, 8\).*got \(3, 8, 8\)"):
        ex.probabilities(torch.zeros(2, 3, 8, 8))
    assert ex.features(digits.x[:3]).shape == (3, 128)


def test_bad_inputs_are_refused(tmp_path, digits):
    unlabelled = Dataset(digits.x, spec="digits")
    with pytest.raises(ScorekitError, match="has no labels; a feature network .* needs labelled images"):
        build(unlabelled, tmp_path)
    with pytest.raises(ScorekitError, match="needs images"):
        build(load_dataset("moons", n=50), tmp_path)
    with pytest.raises(ScorekitError, match="unknown feature network kind 'imagenet'"):
        trained_feature_network("imagenet", digits, tmp_path)
    for share in (0, 1, 1.5, "0.2"):
        with pytest.raises(ScorekitError, match="heldout_share must be a number between 0 and 1"):
            build(digits, tmp_path, heldout_share=share)
    with pytest.raises(ScorekitError, match="epochs must be a whole number"):
        build(digits, tmp_path, epochs=0)
    with pytest.raises(ScorekitError, match="seed must be a whole number"):
        build(digits, tmp_path, seed=-1)
    assert folders(tmp_path) == []
    assert FEATURE_KINDS == ("digits", "cifar10")
    # the overshoot of resampling filters that load_dataset admits (IMAGE_LIMIT) is not refused
    ringing = Dataset(digits.x * 1.2, digits.y, num_classes=10, spec="resampled")
    assert build(ringing, tmp_path / "ringing").info["num_train"] == 95


def test_heldout_split_is_stratified_disjoint_and_seeded():
    counts = [50, 7, 1, 23, 2]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(5))]
    train, held = heldout_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(labels.numel()))
    assert set(train.tolist()).isdisjoint(held.tolist())
    # floor(0.2 n_c + 1/2) of every class: 10, 1, 0, 5, 0
    assert torch.bincount(labels[held], minlength=5).tolist() == [10, 1, 0, 5, 0]
    again, held_again = heldout_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again, train) and torch.equal(held_again, held)
    other = heldout_split(labels, 0.2, torch.Generator().manual_seed(1))[1]
    assert not torch.equal(other, held)
    assert torch.bincount(labels[other], minlength=5).tolist() == [10, 1, 0, 5, 0]


def test_load_feature_network_names_the_bad_file(tmp_path, digits):
    with pytest.raises(ScorekitError, match="config.json does not exist"):
        load_feature_network(tmp_path / "missing")
    folder = build(digits, tmp_path / "cache").path
    config_path = os.path.join(folder, "config.json")
    with open(config_path, encoding="utf-8") as fh:
        good = fh.read()
    with open(config_path, "w", encoding="utf-8") as fh:
        fh.write("{not json")
    with pytest.raises(ScorekitError, match="config.json is not a feature network configuration"):
        load_feature_network(folder)
    newer = json.loads(good)
    newer["format"] = feature_nets.FORMAT + 1
    with open(config_path, "w", encoding="utf-8") as fh:
        json.dump(newer, fh)
    with pytest.raises(ScorekitError, match="newer than this scorekit reads"):
        load_feature_network(folder)
    with open(config_path, "w", encoding="utf-8") as fh:
        fh.write(good)
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(b"not a safetensors file")
    with pytest.raises(ScorekitError, match="model.safetensors does not hold this feature network's weights"):
        load_feature_network(folder)
    # a digit classifier's folder is a classifier, not a feature network
    digit_folder = save_digit_classifier(DigitClassifier(), tmp_path / "digit")
    with pytest.raises(ScorekitError, match="is not a feature network"):
        load_feature_network(digit_folder)


def test_cifar10_kind_runs_on_colour_images(tmp_path):
    data = colour_images(60)
    ex = trained_feature_network("cifar10", data, tmp_path, epochs=1, progress=False)
    assert ex.name == "cifar10-classifier" and ex.info["image_shape"] == [3, 32, 32]
    assert ex.feature_dim == RECIPES["cifar10"].feature_dim == 256
    f, p = ex.features_and_probabilities(data.x[:7], batch_size=4)
    assert f.shape == (7, 256) and p.shape == (7, 10)
    assert bool(torch.isfinite(f).all()) and bool(torch.isfinite(p).all())
    # the same seed and data give the same network, bit for bit
    same = trained_feature_network("cifar10", data, tmp_path / "other", epochs=1, progress=False)
    assert same.weights_hash == ex.weights_hash
    with pytest.raises(ScorekitError, match=r"\(3, 32, 32\).*got \(1, 32, 32\)"):
        ex.features(torch.zeros(1, 1, 32, 32))


@pytest.mark.skipif(not MNIST.is_dir(), reason="no ../shared/data/mnist-test (the MNIST test set)")
def test_digits_kind_reaches_98_percent_on_held_out_mnist(tmp_path):
    data = load_dataset(f"mnist:{MNIST}")
    ex = trained_feature_network("digits", data, tmp_path, epochs=2, heldout_share=0.1, progress=False)
    info = ex.info
    assert info["num_train"] == 9000 and info["num_heldout"] == 1000 and info["image_shape"] == [1, 28, 28]
    assert info["heldout_accuracy"] >= 0.98, info["heldout_accuracy"]
    # trained with outliers, it does not take noise for a digit
    noise = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    assert confident_share(ex.probabilities(noise)) < 0.05


def test_saving_into_a_path_inside_a_file_is_one_error_and_writes_nothing(tmp_path):
    from scorekit.errors import FileWriteError
    from scorekit.metrics.feature_nets import ImageClassifier, save_classifier

    (tmp_path / "file.txt").write_text("x")
    net = ImageClassifier(in_channels=1, image_size=(8, 8), widths=(4, 4), feature_dim=8)
    with pytest.raises(FileWriteError, match=r"cannot write the classifier folder .*file.txt.*Not a directory"):
        save_classifier(net, tmp_path / "file.txt" / "cache" / "digits-0")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"] and (tmp_path / "file.txt").read_text() == "x"
