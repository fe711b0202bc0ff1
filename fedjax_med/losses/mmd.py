"""Maximum mean discrepancy with a multi-kernel Gaussian kernel.

    k(a, b) = mean_s exp(-||a - b||^2 / (2 s^2))    over bandwidths s

`mmd_squared` is the biased (V-statistic) estimate

    MMD^2 = mean k(x, x') + mean k(x^, x^') - 2 mean k(x, x^),

every mean over all pairs, diagonal included. It is a batch statistic, but
its gradient with respect to the parameters that generate `x^` decomposes
over the real rows: the first term does not depend on those parameters, so

    grad MMD^2 = grad (1/n) sum_x [mean k(x^, x^') - 2 mean_j k(x, x^_j)].

`example_mmd_term` returns the bracket for one real row, a per-example loss
that DP-SGD can clip (see `fedjax_med.algorithms.fedhypevae`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DEFAULT_BANDWIDTHS = (0.5, 1.0, 2.0, 4.0)


def gaussian_kernel_matrix(
  a: jax.Array, b: jax.Array, bandwidths: Sequence[float]
) -> jax.Array:
  """Returns the kernel matrix `k(a_i, b_j)` of shape `[n, m]`."""
  squared = (
    jnp.sum(a**2, axis=-1)[:, None]
    + jnp.sum(b**2, axis=-1)[None, :]
    - 2.0 * a @ b.T
  )
  squared = jnp.maximum(squared, 0.0)
  scales = jnp.asarray(bandwidths, a.dtype)
  kernels = jnp.exp(-squared[None] / (2.0 * scales[:, None, None] ** 2))
  return jnp.mean(kernels, axis=0)


def mmd_squared(
  x: jax.Array,
  x_hat: jax.Array,
  bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> jax.Array:
  """Returns the biased MMD^2 between rows of `x [n, d]` and `x_hat [m, d]`."""
  return (
    jnp.mean(gaussian_kernel_matrix(x, x, bandwidths))
    + jnp.mean(gaussian_kernel_matrix(x_hat, x_hat, bandwidths))
    - 2.0 * jnp.mean(gaussian_kernel_matrix(x, x_hat, bandwidths))
  )


def example_mmd_term(
  x: jax.Array,
  x_hat: jax.Array,
  bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
) -> jax.Array:
  """Returns one real row's share `mean k(x^, x^') - 2 mean_j k(x, x^_j)`.

  Args:
    x: One real row `[d]`.
    x_hat: Synthetic rows `[m, d]`, drawn without looking at the data.
    bandwidths: Kernel bandwidths.

  Returns:
    A scalar whose mean over the real rows equals `mmd_squared(x_rows,
    x_hat)` minus `mean k(x, x')`, a term constant in the generator.
  """
  self_term = jnp.mean(gaussian_kernel_matrix(x_hat, x_hat, bandwidths))
  cross = jnp.mean(gaussian_kernel_matrix(x[None], x_hat, bandwidths))
  return self_term - 2.0 * cross
