"""A CPU proxy for FID on the 8x8 digits: the Fréchet distance in a small classifier's features.

NOT FID and not comparable with any published number. True FID needs Inception weights and
images far larger than 8x8; this proxy replaces Inception by a one-hidden-layer MLP trained on
scikit-learn's digits (deterministic, about a second on one CPU core, then cached in the
process) and uses the same float64 Fréchet distance (``cmjax.evaluation.fid``) on its hidden
(penultimate) layer: its ``HIDDEN`` ReLU units less those that are zero on every digit
(``DigitsClassifier.alive``, so that no covariance is singular). Lower is better.

* Classifier: trained on a fixed half of the 1,797 digits (``split_indices``, seed 0); its
  accuracy on the other half is ``DigitsClassifier.held_out_accuracy`` (about 0.97).
* Reference: the features of all 1,797 digits (``reference_statistics``).
* Floor: ``data_floor()``, the distance between the two halves' features (898 vs 899 images),
  i.e. what real held-out data scores; a model cannot be expected to go below it at a
  similar sample count (about 1,000 samples; the estimate is biased upwards for few samples).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from cmjax.evaluation.fid import activation_statistics, frechet_distance

HIDDEN = (64,)
SPLIT_SEED = 0
IMAGE_SHAPE = (8, 8, 1)


@dataclasses.dataclass(frozen=True)
class DigitsClassifier:
    """The trained MLP: ``weights[i]`` (D_in, D_out) and ``biases[i]`` (D_out,), float64;
    ``alive``: the indices of the hidden units used as features (D,)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    alive: np.ndarray
    held_out_accuracy: float

    def features(self, images_uint8: np.ndarray) -> np.ndarray:
        """uint8 (N, 8, 8, 1) images -> (N, D) float64 penultimate-layer features."""
        return self._hidden(images_uint8)[:, self.alive]

    def predict(self, images_uint8: np.ndarray) -> np.ndarray:
        """uint8 (N, 8, 8, 1) images -> (N,) predicted digit."""
        logits = self._hidden(images_uint8) @ self.weights[-1] + self.biases[-1]
        return np.argmax(logits, axis=1)

    def _hidden(self, images_uint8: np.ndarray) -> np.ndarray:
        h = _flat_inputs(images_uint8)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        return h


def _flat_inputs(images_uint8: np.ndarray) -> np.ndarray:
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"the digits proxy takes uint8 (N, 8, 8, 1) images, got {x.dtype} {x.shape}; "
            "convert samples in [-1, 1] with cmjax.images.to_uint8"
        )
    return x.reshape(len(x), -1).astype(np.float64) / 255.0


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as the training pipeline sees them: uint8 (N, 8, 8, 1), labels (N,)."""
    from cmjax.data.sources import digits_source

    src = digits_source()
    return src.x, src.labels


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a fixed random half of the digits and the rest."""
    n = len(digits_data()[0])
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


@functools.lru_cache(maxsize=1)
def digits_classifier() -> DigitsClassifier:
    """Train (once per process, deterministically) the feature MLP on the training half."""
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    train, held = split_indices()
    mlp = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        solver="lbfgs",
        alpha=1e-2,
        max_iter=400,
        random_state=0,
    )
    mlp.fit(_flat_inputs(x[train]), y[train])
    weights = tuple(np.asarray(w, np.float64) for w in mlp.coefs_)
    biases = tuple(np.asarray(b, np.float64) for b in mlp.intercepts_)
    net = DigitsClassifier(weights, biases, np.arange(HIDDEN[-1]), held_out_accuracy=0.0)
    alive = np.flatnonzero(net.features(x).max(axis=0) > 0)
    accuracy = float(np.mean(net.predict(x[held]) == y[held]))
    return dataclasses.replace(net, alive=alive, held_out_accuracy=accuracy)


@functools.lru_cache(maxsize=1)
def reference_statistics() -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) of all 1,797 digits' features."""
    return activation_statistics(digits_classifier().features(digits_data()[0]))


@functools.lru_cache(maxsize=1)
def data_floor() -> float:
    """The proxy between the two halves of the data (train half vs held-out half)."""
    x = digits_data()[0]
    train, held = split_indices()
    net = digits_classifier()
    return _frechet(net.features(x[train]), activation_statistics(net.features(x[held])))


def digits_fd_proxy(images_uint8: np.ndarray) -> float:
    """The proxy of uint8 (N, 8, 8, 1) samples (N >= 2; use about 1,000) against all digits."""
    return _frechet(digits_classifier().features(images_uint8), reference_statistics())


def _frechet(features_NxD: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    return frechet_distance(*activation_statistics(features_NxD), *reference)


def applies_to(data_name: str, shape: tuple[int, ...]) -> bool:
    """Whether a run on data ``data_name`` of example ``shape`` trains on the embedded 8x8
    digits (so the proxy can score it)."""
    return data_name == "digits" and tuple(shape) == IMAGE_SHAPE
