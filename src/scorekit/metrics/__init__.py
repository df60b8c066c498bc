"""Measures of sample quality.

:mod:`scorekit.metrics.distribution` compares samples with a known distribution (the exact
Gaussian mixtures of :mod:`scorekit.toy`): sliced Wasserstein distance against its own noise
floor, mode weights, and within-mode (fine-scale) error. :mod:`scorekit.metrics.frechet` and
:mod:`scorekit.metrics.precision_recall` compare two sets of features (e.g. those of
:mod:`scorekit.metrics.digits_classifier`): the Fréchet distance, and improved precision and
recall, which tell fidelity and diversity apart.
"""
from .distribution import (
    mode_weight_error,
    mode_weight_stderr,
    mode_weights,
    random_directions,
    sliced_wasserstein,
    swd_noise_floor,
    within_mode_spread,
    within_mode_swd,
)
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from .precision_recall import knn_radii, manifold_coverage, precision_recall

__all__ = [
    "sliced_wasserstein", "swd_noise_floor", "random_directions",
    "mode_weights", "mode_weight_error", "mode_weight_stderr",
    "within_mode_swd", "within_mode_spread",
    "knn_radii", "manifold_coverage", "precision_recall",
]
from .features import DigitFeatures, FeatureExtractor, ModuleExtractor, state_hash
from .inception import FIDInceptionV3, InceptionFeatures

__all__ += [
    "FeatureExtractor", "ModuleExtractor", "DigitFeatures", "state_hash",
    "FIDInceptionV3", "InceptionFeatures",
]
