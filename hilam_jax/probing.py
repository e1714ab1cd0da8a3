"""The linear probe of the project's evaluations: what do per-frame / per-pair features carry?

One probe for every question of that kind: the skill-discovery probes to ground-truth subtasks
(`hilam_jax.skill.discovery.subtask_probe`) and the LAM's action probe (`hilam_jax.lam.probe`).
Features are standardised with their training mean / std, and the weights minimise a mean loss
plus l2 ||W||^2 with L-BFGS (scipy): the multinomial cross-entropy for class labels, half the
squared error of standardised targets with `regression=True`. Train and test frames should come
from disjoint episodes (`data_pipeline.episode_split`).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, l2: float = 1e-3,
                     max_iter: int = 500, balanced: bool = True, regression: bool = False
                     ) -> dict[str, np.ndarray]:
  """Multinomial logistic regression (L-BFGS on weighted mean cross-entropy + l2 ||W||^2), or
  linear least squares with `regression`.

  Features are standardised with their training mean / std (stored in the result). With
  `balanced`, every class carries the same total weight (weights n / (K n_c)), so a rare class
  (a 1-frame Pickup among 40-frame GoNextTo segments) is not ignored; balanced accuracy is the
  matching score. With `regression` the targets are standardised too (their mean / std stored),
  the loss is 0.5 * mean squared error in those units and `balanced` does not apply.

  Args:
    features: float [N, D].
    labels: [N] hashable class labels (strings or ints); with `regression`, float [N, K].

  Returns:
    {"classes" [K], "mean" [D], "std" [D], "weights" [D, K], "bias" [K]}; with `regression`,
    "target_mean" [K] and "target_std" [K] instead of "classes".
  """
  if regression:
    return _fit_linear_regression(features, labels, l2, max_iter)
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64)
  classes, y = np.unique(np.asarray(labels), return_inverse=True)
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = (x - mean) / std
  n, d = x.shape
  k = len(classes)
  onehot = np.eye(k)[y]
  counts = np.bincount(y, minlength=k)
  weight = (n / (k * counts))[y] if balanced else np.ones(n)  # [N], mean 1

  def loss(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    logits = x @ w + b
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = np.exp(logp)
    value = -np.sum(weight[:, None] * onehot * logp) / n + l2 * np.sum(w * w)
    grad_logits = weight[:, None] * (p - onehot) / n
    grad = np.concatenate([(x.T @ grad_logits + 2 * l2 * w).ravel(), grad_logits.sum(0)])
    return value, grad

  theta = np.zeros(d * k + k)
  if k > 1:
    theta = optimize.minimize(loss, theta, jac=True, method="L-BFGS-B",
                              options={"maxiter": max_iter}).x
  return {"classes": classes, "mean": mean, "std": std,
          "weights": theta[:d * k].reshape(d, k), "bias": theta[d * k:]}


def _fit_linear_regression(features: np.ndarray, targets: np.ndarray, l2: float,
                           max_iter: int) -> dict[str, np.ndarray]:
  """`fit_linear_probe(regression=True)`: the same standardisation, penalty and solver."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  x = np.asarray(features, np.float64)
  y = np.asarray(targets, np.float64).reshape(len(x), -1)
  mean, std = x.mean(0), x.std(0) + 1e-6
  target_mean, target_std = y.mean(0), y.std(0) + 1e-6
  x, y = (x - mean) / std, (y - target_mean) / target_std
  n, d = x.shape
  k = y.shape[1]

  def loss(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    residual = x @ w + b - y
    value = 0.5 * np.sum(residual * residual) / n + l2 * np.sum(w * w)
    grad_out = residual / n
    grad = np.concatenate([(x.T @ grad_out + 2 * l2 * w).ravel(), grad_out.sum(0)])
    return value, grad

  theta = optimize.minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter}).x
  return {"target_mean": target_mean, "target_std": target_std, "mean": mean, "std": std,
          "weights": theta[:d * k].reshape(d, k), "bias": theta[d * k:]}


def probe_predict(probe: Mapping[str, np.ndarray], features: np.ndarray) -> np.ndarray:
  """Predicted class labels [N] of a `fit_linear_probe` result; for a regression probe the
  predicted targets [N, K] in the targets' units."""
  x = (np.asarray(features, np.float64) - probe["mean"]) / probe["std"]
  if "classes" not in probe:
    return (x @ probe["weights"] + probe["bias"]) * probe["target_std"] + probe["target_mean"]
  return probe["classes"][np.argmax(x @ probe["weights"] + probe["bias"], axis=1)]


def probe_scores(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and balanced accuracy (mean per-class recall over the classes present)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  classes = np.unique(labels)
  recalls = [float(np.mean(predicted[labels == c] == c)) for c in classes]
  return {"accuracy": float(np.mean(predicted == labels)) if len(labels) else 0.0,
          "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0}


def r_squared(y: np.ndarray, prediction: np.ndarray) -> float:
  """Mean over output dims of 1 - SSE / SST (0 = predicting the mean, 1 = perfect)."""
  sse = ((y - prediction) ** 2).sum(0)
  sst = ((y - y.mean(0)) ** 2).sum(0) + 1e-12
  return float(np.mean(1.0 - sse / sst))
