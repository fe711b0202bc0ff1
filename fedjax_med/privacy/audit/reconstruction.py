"""Reconstruction error of a gradient-inversion attack.

A batch's gradient is a mean over examples and does not depend on their
order, so reconstructed records are first paired with true records by the
assignment of least total squared error (the Hungarian method,
`scipy.optimize.linear_sum_assignment`). Errors are then averaged over the
pairs. Reconstructions may be fewer than the true records (an attack on a
sum of several clients' updates), and each reconstruction still gets a
distinct true record.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize


def match_reconstructions(
  reconstructed: np.ndarray, true: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Pairs reconstructions with true records to minimise the total MSE.

  Args:
    reconstructed: `[num_reconstructed, *feature_shape]`.
    true: `[num_true, *feature_shape]`, with `num_true >= num_reconstructed`.

  Returns:
    `(reconstructed_index, true_index)`, int arrays of length
    `num_reconstructed`.

  Raises:
    ValueError: If the feature shapes differ or there are more
      reconstructions than true records.
  """
  reconstructed = np.asarray(reconstructed, np.float64)
  true = np.asarray(true, np.float64)
  if reconstructed.shape[1:] != true.shape[1:]:
    raise ValueError(
      f"reconstructed records have shape {reconstructed.shape[1:]} but true "
      f"records {true.shape[1:]}; reshape one to the other."
    )
  if len(reconstructed) > len(true):
    raise ValueError(
      f"{len(reconstructed)} reconstructions for {len(true)} true records; "
      "pass at least as many true records."
    )
  flat_rec = reconstructed.reshape(len(reconstructed), -1)
  flat_true = true.reshape(len(true), -1)
  cost = np.mean((flat_rec[:, None, :] - flat_true[None, :, :]) ** 2, axis=-1)
  return optimize.linear_sum_assignment(cost)


def reconstruction_error(
  reconstructed: np.ndarray,
  true: np.ndarray,
  data_range: float | None = None,
) -> dict[str, float | list[float]]:
  """Mean squared error and PSNR of matched reconstructions.

  Args:
    reconstructed: `[num_reconstructed, *feature_shape]`.
    true: `[num_true, *feature_shape]`.
    data_range: Peak-to-peak range of a record's values for PSNR (1.0 for
      pixels in [0, 1]), or None to omit PSNR.

  Returns:
    A dict with "mse" (mean over matched pairs of the per-record MSE),
    "per_example_mse" (one value per reconstruction, in the order of
    `reconstructed`) and "true_index" (the matched true record of each
    reconstruction). With `data_range` it also has "psnr", the mean over
    pairs of `10 log10(data_range^2 / mse)` in decibels. Each pair's MSE is
    floored at 1e-10, so an exact match gives 100 dB for a range of 1.
  """
  rec_index, true_index = match_reconstructions(reconstructed, true)
  reconstructed = np.asarray(reconstructed, np.float64)
  true = np.asarray(true, np.float64)
  diff = reconstructed[rec_index] - true[true_index]
  per_example = np.mean(diff.reshape(len(diff), -1) ** 2, axis=-1)

  order = np.argsort(rec_index)
  result: dict[str, float | list[float]] = {
    "mse": float(np.mean(per_example)),
    "per_example_mse": per_example[order].tolist(),
    "true_index": true_index[order].tolist(),
  }
  if data_range is not None:
    psnr = 10.0 * np.log10(data_range**2 / np.maximum(per_example, 1e-10))
    result["psnr"] = float(np.mean(psnr))
  return result
