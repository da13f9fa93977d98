"""Embedded data sets for the demos, split and standardized the same way every time.

Every loader returns a :class:`ClassificationData`. The binary ones (:func:`load_breast_cancer`)
are built by :func:`prepare_classification`:

* a deterministic train/test split from ``numpy.random.default_rng(seed).permutation``;
* features standardized with the *training* statistics, x̃ = (x − μ_train) / σ_train
  (a feature constant on the training set keeps σ = 1 so nothing is divided by zero);
* a bias column of ones appended last, so a linear model's weight vector has D = F + 1 entries;
* labels as integers in {0, 1} (models that want ±1 use s = 2y − 1).

:func:`load_digits` (ten classes, for an MLP) instead scales pixel intensities to [0, 1], adds no
bias column and splits stratified by class.

Nothing is downloaded: the data ship inside scikit-learn (an optional dependency,
``natgrad[demo]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationData:
    """A train/test split for classification with K classes.

    Attributes:
      name: the data set's name, used in messages and reports.
      x_train: ``(N_train, D)`` features: from :func:`prepare_classification` standardized with
        a bias column last; from :func:`load_digits` pixel intensities in [0, 1].
      y_train: ``(N_train,)`` integer labels in {0, ..., K − 1} (K = 2 for
        :func:`prepare_classification`).
      x_test: ``(N_test, D)`` test features, prepared with the training statistics.
      y_test: ``(N_test,)`` integer labels in {0, ..., K − 1}.
      feature_names: the D column names (``"bias"`` last when there is one).
      target_names: the names of labels 0, ..., K − 1.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]

    @property
    def num_features(self) -> int:
        """D, the number of columns (including the bias, if any)."""
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.target_names)


def prepare_classification(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    seed: int,
    test_fraction: float = 0.2,
    dtype: np.dtype | type = np.float64,
    feature_names: Sequence[str] | None = None,
    target_names: Sequence[str] = ("0", "1"),
) -> ClassificationData:
    """Split, standardize with training statistics and append a bias column.

    With π a permutation from ``numpy.random.default_rng(seed)``, the first
    ``round(test_fraction · N)`` rows of X[π] are the test set and the rest the training set;
    then x̃ = ((x − μ_train) / σ_train, 1).

    Args:
      features: ``(N, F)`` raw features; every entry must be finite.
      labels: ``(N,)`` labels in {0, 1}.
      name: the data set's name (for messages).
      seed: seed of the split's permutation.
      test_fraction: the share of rows held out, in (0, 1).
      dtype: floating dtype of the returned features.
      feature_names: F names (default ``"x0"``, ``"x1"``, ...).
      target_names: names of label 0 and label 1.

    Returns:
      A :class:`ClassificationData`.

    Raises:
      ValueError: non-finite features or labels (the message names the data set, the columns and
        how many rows), labels outside {0, 1}, mismatched shapes or a ``test_fraction`` leaving
        an empty split.
    """
    features = np.asarray(features, dtype=np.float64)
    labels_raw = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"{name}: features must have shape (N, F), got {features.shape}")
    num_rows, num_cols = features.shape
    if labels_raw.shape != (num_rows,):
        raise ValueError(
            f"{name}: labels must have shape ({num_rows},) to match the features, "
            f"got {labels_raw.shape}"
        )
    names = (
        tuple(feature_names)
        if feature_names is not None
        else tuple(f"x{i}" for i in range(num_cols))
    )
    if len(names) != num_cols:
        raise ValueError(f"{name}: {len(names)} feature names for {num_cols} columns")
    bad = ~np.isfinite(features)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        listed = ", ".join(repr(names[c]) for c in cols[:5]) + (" ..." if len(cols) > 5 else "")
        raise ValueError(
            f"{name}: the features contain NaN or infinite values in {int(bad.any(axis=1).sum())} "
            f"row(s), column(s) {listed}; drop or impute those rows before splitting"
        )
    labels_float = labels_raw.astype(np.float64)
    if not np.all(np.isfinite(labels_float)):
        raise ValueError(f"{name}: the labels contain NaN or infinite values")
    if not np.all(np.isin(labels_float, (0.0, 1.0))):
        raise ValueError(f"{name}: labels must be 0 or 1, got {np.unique(labels_float)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{name}: `test_fraction` must be in (0, 1), got {test_fraction}")
    num_test = round(test_fraction * num_rows)
    if not 0 < num_test < num_rows:
        raise ValueError(
            f"{name}: test_fraction={test_fraction} of {num_rows} rows leaves an empty split"
        )

    order = np.random.default_rng(seed).permutation(num_rows)
    test_idx, train_idx = order[:num_test], order[num_test:]
    x_train, x_test = features[train_idx], features[test_idx]
    mu = x_train.mean(axis=0)
    sigma = x_train.std(axis=0)
    sigma = np.where(sigma > 0, sigma, 1.0)  # a constant column stays constant (0 after centring)

    def finish(x):
        x = (x - mu) / sigma
        return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1).astype(dtype)

    y = labels_float.astype(np.int64)
    return ClassificationData(
        name=name,
        x_train=finish(x_train),
        y_train=y[train_idx],
        x_test=finish(x_test),
        y_test=y[test_idx],
        feature_names=(*names, "bias"),
        target_names=(str(target_names[0]), str(target_names[1])),
    )


def load_breast_cancer(
    *, seed: int = 0, test_fraction: float = 0.2, dtype: np.dtype | type = np.float64
) -> ClassificationData:
    """The Wisconsin diagnostic breast-cancer data: 569 tumours, 30 features, D = 31 with bias.

    Loaded from the copy embedded in scikit-learn (``sklearn.datasets.load_breast_cancer``, no
    network) and prepared by :func:`prepare_classification`. Label 1 is *benign* (357 rows),
    label 0 *malignant* (212 rows), as scikit-learn codes them.

    Args:
      seed: seed of the train/test permutation.
      test_fraction: share of rows held out (0.2 gives 455 train and 114 test rows).
      dtype: floating dtype of the features.

    Returns:
      A :class:`ClassificationData` named ``"breast_cancer"``.

    Example:
      >>> data = load_breast_cancer(seed=0)
      >>> data.x_train.shape, data.x_test.shape
      ((455, 31), (114, 31))
    """
    try:
        from sklearn import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_breast_cancer needs scikit-learn; install it with `pip install natgrad[demo]`"
        ) from err
    raw = datasets.load_breast_cancer()
    return prepare_classification(
        raw.data,
        raw.target,
        name="breast_cancer",
        seed=seed,
        test_fraction=test_fraction,
        dtype=dtype,
        feature_names=[str(n) for n in raw.feature_names],
        target_names=[str(n) for n in raw.target_names],
    )


def load_digits(
    *, seed: int = 0, test_size: int = 450, dtype: np.dtype | type = np.float32
) -> ClassificationData:
    """The UCI handwritten digits: 1797 images of 8×8 pixels, ten classes, inputs in [0, 1].

    Loaded from the copy embedded in scikit-learn (``sklearn.datasets.load_digits``, no network).
    Pixel intensities 0, ..., 16 are divided by 16 (no standardization, no bias column: the
    models are MLPs with biases); the split is stratified by class
    (``sklearn.model_selection.train_test_split`` with ``random_state=seed``), so both parts
    have the classes in the proportions of the whole (about 180 images each).

    Args:
      seed: seed of the stratified split.
      test_size: number of test images (450 leaves 1347 for training).
      dtype: floating dtype of the inputs.

    Returns:
      A :class:`ClassificationData` named ``"digits"`` with D = 64 and labels 0, ..., 9.

    Example:
      >>> data = load_digits(seed=0)
      >>> data.x_train.shape, data.x_test.shape, data.num_classes
      ((1347, 64), (450, 64), 10)
    """
    try:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits needs scikit-learn; install it with `pip install natgrad[demo]`"
        ) from err
    raw = datasets.load_digits()
    features = np.asarray(raw.data, dtype=np.float64)
    labels = np.asarray(raw.target, dtype=np.int64)
    if not np.all(np.isfinite(features)):
        raise ValueError("digits: the features contain NaN or infinite values")
    if not 0 < test_size < len(labels):
        raise ValueError(f"digits: test_size must be in (0, {len(labels)}), got {test_size}")
    x_train, x_test, y_train, y_test = train_test_split(
        features / 16.0, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    return ClassificationData(
        name="digits",
        x_train=x_train.astype(dtype),
        y_train=y_train,
        x_test=x_test.astype(dtype),
        y_test=y_test,
        feature_names=tuple(str(n) for n in raw.feature_names),
        target_names=tuple(str(n) for n in raw.target_names),
    )
