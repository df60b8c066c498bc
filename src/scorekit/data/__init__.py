r"""Datasets for training: 2-D toy sets, scikit-learn's digits, MNIST IDX files, image folders
and NumPy files, loaded into memory as float32 tensors (images ``(N, C, H, W)`` in ``[-1, 1]``,
vectors ``(N, D)``).

``load_dataset(spec, **options)`` is the entry point; :class:`Dataset` holds the result and its
``config()``; :func:`dataset_from_config` rebuilds it; :func:`check_compatible` checks it
against a network before training. See :mod:`scorekit.data.dataset` for every spec and option.
"""
from .dataset import (DATASETS, PATH_KINDS, Dataset, check_compatible, check_finite,
                      convert_channels, dataset_from_config, load_dataset, parse_spec)
from .images import (RawData, load_digits, load_idx_images, load_image_folder, load_npz,
                     read_idx)
from .toy2d import MIXTURES, TOYS, mixture

__all__ = [
    "Dataset", "load_dataset", "dataset_from_config", "check_compatible", "check_finite",
    "convert_channels", "parse_spec", "DATASETS", "PATH_KINDS",
    "RawData", "load_digits", "load_idx_images", "load_image_folder", "load_npz", "read_idx",
    "TOYS", "MIXTURES", "mixture",
]
