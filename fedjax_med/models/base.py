"""One init/apply contract for flax and haiku models.

A `Model` is a NamedTuple of two pure functions, so algorithms never see which
library built the network:

  variables = model.init(rng, x)            # x: [batch, *feature_shape]
  logits, model_state = model.apply(variables, x, train=True, rng=rng)

`variables` is a dict with a "params" entry (trained by gradient descent) and
optional entries for non-trainable state, such as flax's "batch_stats". The
split matters to aggregation: server optimizers and control variates act on
"params" only, while non-trainable state is averaged by example weight.
`apply` returns the updated non-trainable state (an empty dict for stateless
models); with `train=False` it returns the state unchanged.

Methods that regularize representations (MOON, UniVarFL, FedAlign) also need
the features the head reads. Models that provide them set `apply_features`:

  logits, features, model_state = model.apply_features(variables, x, ...)

where `features` has shape `[batch, feature_dim]`. The zoo's flax models
provide it; a model that does not leaves it None and those methods refuse it.

Binary tasks use one output logit (the log-odds of class 1); tasks with more
classes use one logit per class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import haiku as hk
import jax

Variables = dict[str, Any]


class Model(NamedTuple):
  """A network as two pure functions.

  Attributes:
    init: `(rng, x) -> variables`, where `x` is a sample batch
      `[batch, *feature_shape]`.
    apply: `(variables, x, train=False, rng=None) -> (logits, model_state)`,
      logits of shape `[batch, num_outputs]`; `model_state` holds the
      non-"params" entries of `variables` after the call.
    num_outputs: Width of the logits: 1 for a binary task, else the number
      of classes.
    apply_features: Optional `(variables, x, train=False, rng=None) ->
      (logits, features, model_state)`, where `features [batch, dim]` is
      the representation the model's last dense layer (the head) reads.
  """

  init: Callable[[jax.Array, jax.Array], Variables]
  apply: Callable[..., tuple[jax.Array, Variables]]
  num_outputs: int
  apply_features: (
    Callable[..., tuple[jax.Array, jax.Array, Variables]] | None
  ) = None


def num_outputs_for(num_classes: int) -> int:
  """Returns the logit width for a task: 1 when binary, else `num_classes`."""
  if num_classes < 2:
    raise ValueError(
      f"num_classes={num_classes}; a classification task needs at least 2."
    )
  return 1 if num_classes == 2 else num_classes


def from_flax(module: nn.Module, num_outputs: int) -> Model:
  """Wraps a flax linen module whose `__call__` takes `(x, train)`.

  The module may hold non-trainable collections such as "batch_stats"; they
  are updated when `train=True`. A module that uses dropout reads the
  "dropout" rng, which `apply` takes from its `rng` argument. A module whose
  `__call__` also takes `return_features` (returning `(logits, features)`
  when it is True) gets `apply_features`.
  """

  def init(rng, x):
    variables = module.init({"params": rng, "dropout": rng}, x, train=False)
    return dict(variables)

  def call(variables, x, train, rng, **kwargs):
    state_names = [k for k in variables if k != "params"]
    rngs = {"dropout": rng} if rng is not None else None
    if train and state_names:
      out, new_state = module.apply(
        variables, x, train=True, rngs=rngs, mutable=state_names, **kwargs
      )
      return out, dict(new_state)
    out = module.apply(variables, x, train=train, rngs=rngs, **kwargs)
    return out, {k: variables[k] for k in state_names}

  def apply(variables, x, train=False, rng=None):
    return call(variables, x, train, rng)

  def apply_features(variables, x, train=False, rng=None):
    (logits, features), model_state = call(
      variables, x, train, rng, return_features=True
    )
    return logits, features, model_state

  has_features = (
    "return_features" in inspect.signature(module.__call__).parameters
  )
  return Model(
    init=init,
    apply=apply,
    num_outputs=num_outputs,
    apply_features=apply_features if has_features else None,
  )


def from_haiku(transformed: hk.TransformedWithState, num_outputs: int) -> Model:
  """Wraps `hk.transform_with_state(f)` where `f(x, train)` returns logits.

  Haiku's parameters become `variables["params"]` and its state (if any)
  `variables["state"]`.
  """

  def init(rng, x):
    params, state = transformed.init(rng, x, False)
    variables = {"params": params}
    if state:
      variables["state"] = state
    return variables

  def apply(variables, x, train=False, rng=None):
    state = variables.get("state", {})
    logits, new_state = transformed.apply(
      variables["params"], state, rng, x, train
    )
    if not state:
      return logits, {}
    return logits, {"state": new_state if train else state}

  return Model(init=init, apply=apply, num_outputs=num_outputs)
