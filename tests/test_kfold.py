"""Class-disjoint k-fold layout, Reality-Check style."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import BenchError
from bench.splits import ClassSplit
from bench.splits.kfold import check_folds, kfold_splits, split_hash

CLASSES = np.arange(1, 201)  # a 200-class set, classes numbered 1..200


def test_reality_check_layout_for_200_classes() -> None:
    folds = kfold_splits(CLASSES[:100], CLASSES[100:], 4)
    assert len(folds) == 4
    validations = []
    for i, fold in enumerate(folds):
        np.testing.assert_array_equal(fold.test, np.arange(101, 201))
        assert len(fold.train) == 75 and len(fold.validation) == 25
        # each validation fold is one contiguous block of 25 classes
        np.testing.assert_array_equal(fold.validation, np.arange(1 + 25 * i, 26 + 25 * i))
        assert not set(fold.train) & set(fold.validation)
        assert not set(fold.train) & set(fold.test)
        assert not set(fold.validation) & set(fold.test)
        validations.append(set(fold.validation))
    assert set().union(*validations) == set(range(1, 101))


def test_blocks_wrap_around_the_end() -> None:
    folds = kfold_splits(CLASSES[:10], CLASSES[10:20], 3, validation_fraction=0.3)
    np.testing.assert_array_equal(folds[2].validation, [7, 8, 9])
    folds = kfold_splits(CLASSES[:10], CLASSES[10:20], 2, validation_fraction=0.3)
    np.testing.assert_array_equal(folds[1].validation, [6, 7, 8])
    wrapped = kfold_splits(CLASSES[:10], CLASSES[10:20], 1, validation_fraction=0.3)
    assert len(wrapped[0].validation) == 3


def test_overlapping_validation_folds_are_refused() -> None:
    with pytest.raises(BenchError, match="overlap"):
        kfold_splits(CLASSES[:100], CLASSES[100:], 4, validation_fraction=0.4)


def test_broken_layouts_are_refused() -> None:
    good = kfold_splits(CLASSES[:100], CLASSES[100:], 2)
    leaky = ClassSplit("fold1", good[1].train, good[1].validation, np.arange(50, 150))
    with pytest.raises(BenchError, match="share"):
        check_folds([good[0], leaky])
    other_test = ClassSplit("fold1", good[1].train, good[1].validation, np.arange(101, 150))
    with pytest.raises(BenchError, match="different test set"):
        check_folds([good[0], other_test])


def test_split_hash_is_stable_and_sensitive() -> None:
    a = kfold_splits(CLASSES[:100], CLASSES[100:], 4)
    assert split_hash(a) == split_hash(kfold_splits(CLASSES[:100], CLASSES[100:], 4))
    assert split_hash(a) != split_hash(kfold_splits(CLASSES[:100], CLASSES[100:], 2))
