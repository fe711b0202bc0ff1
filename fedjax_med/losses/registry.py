"""Builds a per-example loss by name.

`make_loss(name, class_counts, **options)` returns `(logits, labels) ->
[batch]` for `local_train` and every algorithm's `ClientConfig.loss_fn`:

  name               options (defaults)                       needs counts
  cross_entropy      none                                     no
  focal              gamma (2.0), alpha (None, binary only)   no
  class_balanced     beta (0.999), base ("softmax"|"focal"),  yes
                     gamma (2.0, for base="focal")
  balanced_softmax   none                                     yes
  logit_adjustment   tau (1.0)                                yes
  alpa               gamma_neg (4.0), gamma_pos (0.0),        no
                     clip (0.05), alpha (0.875), beta
                     (1.625), a0, a1, b1, c0, c1, d1 (the
                     Padé coefficients, -1.5, 1.5, 0, -1, 1,
                     0), focusing_gradient (True)

The class counts are the training examples per class, normally the sum of
the clients' label histograms (`class_statistics.global_class_counts`).
"""

from __future__ import annotations

import inspect

from fedjax_med.losses import asymmetric_pade, long_tail
from fedjax_med.losses.classification import cross_entropy
from fedjax_med.losses.long_tail import LossFn

LOSS_NAMES = (
  "cross_entropy",
  "focal",
  "class_balanced",
  "balanced_softmax",
  "logit_adjustment",
  "alpa",
)
_NEEDS_COUNTS = ("class_balanced", "balanced_softmax", "logit_adjustment")
_PADE_FIELDS = asymmetric_pade.PadeCoefficients._fields


def _alpa(**options) -> LossFn:
  pade = {k: options.pop(k) for k in _PADE_FIELDS if k in options}
  coefficients = asymmetric_pade.PadeCoefficients(**pade)
  return asymmetric_pade.alpa_loss(pade=coefficients, **options)


def _builder(name: str):
  builders = {
    "focal": long_tail.focal_loss,
    "class_balanced": long_tail.class_balanced_loss,
    "balanced_softmax": long_tail.balanced_softmax_loss,
    "logit_adjustment": long_tail.logit_adjusted_loss,
  }
  return builders[name]


def _accepted_options(name: str) -> list[str]:
  if name == "cross_entropy":
    return []
  if name == "alpa":
    parameters = inspect.signature(asymmetric_pade.alpa_loss).parameters
    return [p for p in parameters if p != "pade"] + list(_PADE_FIELDS)
  parameters = inspect.signature(_builder(name)).parameters
  return [p for p in parameters if p != "class_counts"]


def make_loss(name: str, class_counts=None, **options) -> LossFn:
  """Returns the per-example loss `name` built with `options`.

  Args:
    name: One of `LOSS_NAMES`.
    class_counts: `[num_classes]` training examples per class; required by
      class_balanced, balanced_softmax and logit_adjustment, ignored by the
      others.
    **options: The loss's options (see the module docstring).

  Raises:
    ValueError: For an unknown name or option, missing class counts, or an
      option value the loss rejects.
  """
  if name not in LOSS_NAMES:
    raise ValueError(
      f"loss {name!r} is unknown; use one of {list(LOSS_NAMES)}, e.g. "
      "--config.client.loss=focal."
    )
  accepted = _accepted_options(name)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(
      f"unknown options {unknown} for loss {name!r}; it accepts {accepted}."
    )
  if name == "cross_entropy":
    return cross_entropy
  if name == "alpa":
    return _alpa(**options)
  if name in _NEEDS_COUNTS:
    if class_counts is None:
      raise ValueError(
        f"loss {name!r} needs class_counts, the training examples per "
        "class; pass global_class_counts(data.train, data.num_classes)."
      )
    return _builder(name)(class_counts, **options)
  return _builder(name)(**options)
