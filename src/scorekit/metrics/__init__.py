"""Measures of sample quality.

* :mod:`.distribution` compares samples with a known distribution (the exact Gaussian mixtures of
  :mod:`scorekit.toy`): sliced Wasserstein distance against its own noise floor, mode weights,
  and within-mode (fine-scale) error.
* Metrics on features of images: :mod:`.frechet` (the Fréchet distance of FID), :mod:`.kid`
  (Kernel Inception Distance), :mod:`.inception_score`, :mod:`.precision_recall` (improved
  precision and recall).
* Feature extractors (:mod:`.features`): one interface for the FID Inception network
  (:mod:`.inception`, from a weights file), the digit classifier (:mod:`.digits_classifier`),
  the classifiers scorekit trains and caches as feature networks for digits and CIFAR-10
  (:mod:`.feature_nets`: :func:`trained_feature_network`, :func:`load_feature_network`) and any
  user module.
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
from .feature_nets import FEATURE_KINDS, load_feature_network, trained_feature_network
from .features import ClassifierFeatures, DigitFeatures, FeatureExtractor, ModuleExtractor, state_hash
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from .inception import FIDInceptionV3, InceptionFeatures
from .inception_score import InceptionScore, inception_score
from .kid import KID, kernel_inception_distance, mmd2_jackknife, mmd2_unbiased
from .precision_recall import knn_radii, manifold_coverage, manifold_membership, precision_recall

__all__ = [
    "sliced_wasserstein", "swd_noise_floor", "random_directions",
    "mode_weights", "mode_weight_error", "mode_weight_stderr",
    "within_mode_swd", "within_mode_spread",
    "feature_statistics", "frechet_distance", "frechet_distance_from_features",
    "KID", "kernel_inception_distance", "mmd2_jackknife", "mmd2_unbiased",
    "InceptionScore", "inception_score",
    "knn_radii", "manifold_coverage", "manifold_membership", "precision_recall",
    "FeatureExtractor", "ModuleExtractor", "ClassifierFeatures", "DigitFeatures", "state_hash",
    "FEATURE_KINDS", "trained_feature_network", "load_feature_network",
    "FIDInceptionV3", "InceptionFeatures",
]
