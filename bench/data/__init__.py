"""Datasets: a registry of builders, the in-memory sample table and an on-disk cache."""

from bench.data.records import ImageDataset, standard_split
from bench.data.registry import dataset_info, dataset_names, describe, load_dataset

__all__ = [
    "ImageDataset",
    "dataset_info",
    "dataset_names",
    "describe",
    "load_dataset",
    "standard_split",
]
