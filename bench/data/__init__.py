"""Datasets: a registry of builders, the in-memory sample table and an on-disk cache."""

from bench.data.records import ImageDataset, default_class_split
from bench.data.registry import dataset_info, dataset_names, describe, load_dataset

__all__ = [
    "ImageDataset",
    "dataset_info",
    "dataset_names",
    "describe",
    "load_dataset",
    "default_class_split",
]
