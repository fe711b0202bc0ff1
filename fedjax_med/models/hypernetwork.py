"""A hypernetwork: an MLP that maps a descriptor to a target model's weights.

    phi = hypernetwork.init(rng, target_params)
    theta = hypernetwork.generate(phi, descriptor)   # shaped like target

The network is `descriptor [d] -> Dense -> ReLU -> ... -> Dense(P)`, where P
is the number of scalars in the target tree, and the last layer's output is
unflattened into that tree with `jax.flatten_util.ravel_pytree`. This is the
hypernetwork of pFedHN (Shamsian, Navon, Fetaya, Chechik, "Personalized
Federated Learning using Hypernetworks", ICML 2021, arXiv:2103.04628), with
one output layer for all target weights where the authors' code has one
linear head per target tensor; the two are the same affine map.

Initialization: the output layer's bias is the flattened initial target
weights and its kernel is drawn with standard deviation `output_scale`, so
every descriptor starts near the target model's own initialization and
different descriptors start apart by about `output_scale` times the norm of
the hidden features.

The output layer is affine, so the gradient of a loss with respect to its
bias is exactly the gradient with respect to the generated weights. A
server that receives hypernetwork gradients or deltas therefore sees the
target model's gradient; see docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


class HyperMLP(nn.Module):
  """Maps descriptors `[..., d]` to flat target weights `[..., num_outputs]`.

  Attributes:
    num_outputs: Scalars in the target tree.
    hidden_sizes: Width of each hidden layer; empty makes the map affine.
    output_scale: Standard deviation of the output kernel at init.
  """

  num_outputs: int
  hidden_sizes: Sequence[int] = (100, 100, 100)
  output_scale: float = 0.01

  @nn.compact
  def __call__(self, descriptor: jax.Array) -> jax.Array:
    h = descriptor
    for size in self.hidden_sizes:
      h = nn.relu(nn.Dense(size)(h))
    output = nn.Dense(
      self.num_outputs,
      kernel_init=nn.initializers.normal(self.output_scale),
      name="output",
    )
    return output(h)


class Hypernetwork(NamedTuple):
  """A hypernetwork as pure functions.

  Attributes:
    init: `(rng, target_params) -> phi`; the output bias is set to the
      flattened `target_params`.
    generate: `(phi, descriptor [d]) -> target params tree`.
    descriptor_dim: d.
    num_target_parameters: P, scalars in the generated tree.
  """

  init: Callable[[jax.Array, PyTree], PyTree]
  generate: Callable[[PyTree, jax.Array], PyTree]
  descriptor_dim: int
  num_target_parameters: int


def hypernetwork(
  target_params: PyTree,
  descriptor_dim: int,
  *,
  hidden_sizes: Sequence[int] = (100, 100, 100),
  output_scale: float = 0.01,
) -> Hypernetwork:
  """Builds a hypernetwork that generates trees shaped like `target_params`.

  Args:
    target_params: A tree of arrays (or `jax.ShapeDtypeStruct`s) with the
      generated weights' structure, shapes and dtypes.
    descriptor_dim: Length d of the descriptor (a client embedding,
      possibly concatenated with fixed site features).
    hidden_sizes: Hidden widths of the MLP.
    output_scale: Standard deviation of the output kernel at init.

  Returns:
    The hypernetwork's `init` and `generate`.

  Raises:
    ValueError: For a non-positive size or a negative scale.
  """
  if descriptor_dim < 1:
    raise ValueError(
      f"descriptor_dim={descriptor_dim} must be at least 1; set "
      "algorithm.embedding_dim to a positive size."
    )
  if any(size < 1 for size in hidden_sizes):
    raise ValueError(
      f"hypernetwork hidden_sizes={tuple(hidden_sizes)} must be positive; "
      "pass e.g. --config.algorithm.hidden_sizes='(100, 100)'."
    )
  if not output_scale >= 0:
    raise ValueError(
      f"hypernetwork output_scale={output_scale} must be non-negative."
    )
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target_params)
  flat_zeros, unravel = ravel_pytree(zeros)
  module = HyperMLP(
    num_outputs=flat_zeros.shape[0],
    hidden_sizes=tuple(hidden_sizes),
    output_scale=float(output_scale),
  )

  def init(rng, initial_target_params):
    sample = jnp.zeros((descriptor_dim,), jnp.float32)
    phi = module.init(rng, sample)["params"]
    flat_target, _ = ravel_pytree(initial_target_params)
    output = dict(phi["output"])
    output["bias"] = flat_target.astype(output["bias"].dtype)
    return {**phi, "output": output}

  def generate(phi, descriptor):
    return unravel(module.apply({"params": phi}, descriptor))

  return Hypernetwork(
    init=init,
    generate=generate,
    descriptor_dim=descriptor_dim,
    num_target_parameters=int(flat_zeros.shape[0]),
  )
