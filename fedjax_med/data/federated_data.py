"""Federated datasets as stacked, padded arrays with fixed shapes.

Every client's examples sit in one array with a leading client axis, padded to
the largest client, so that a round over any cohort compiles once. Padding
rows carry `mask == False`; `num_examples` counts the real rows. Padding is at
the end of each client's rows: rows `[0, num_examples[k])` are real.

`FederatedData` is a pytree (a `flax.struct` dataclass): the arrays are leaves
and the names and sizes are static metadata, so it can be passed straight into
a jit-compiled round without retracing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import struct


@struct.dataclass
class ClientArrays:
  """One split (train or test) of every client, stacked and padded.

  Attributes:
    x: Features, shape `[num_clients, max_examples, *feature_shape]`, float32.
    y: Integer labels, shape `[num_clients, max_examples]`, int32.
    mask: Shape `[num_clients, max_examples]`, bool; False on padding rows.
    num_examples: Real rows per client, shape `[num_clients]`, int32.
  """

  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  num_examples: np.ndarray

  @property
  def num_clients(self) -> int:
    return int(self.x.shape[0])

  @property
  def max_examples(self) -> int:
    return int(self.x.shape[1])

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(int(d) for d in self.x.shape[2:])

  def client(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns client `k`'s real rows `(x, y)` without padding."""
    n = int(self.num_examples[k])
    return np.asarray(self.x[k, :n]), np.asarray(self.y[k, :n])

  def pooled(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns every client's real rows concatenated, client 0 first."""
    parts = [self.client(k) for k in range(self.num_clients)]
    return (
      np.concatenate([p[0] for p in parts]),
      np.concatenate([p[1] for p in parts]),
    )


def stack_clients(
  clients: Sequence[tuple[np.ndarray, np.ndarray]],
  max_examples: int | None = None,
) -> ClientArrays:
  """Stacks per-client `(x, y)` arrays into one padded `ClientArrays`.

  Args:
    clients: One `(x, y)` pair per client; `x` has shape
      `[n_k, *feature_shape]` and `y` shape `[n_k]`. A client may be empty.
    max_examples: Padded size; defaults to the largest client. Passing a
      larger value lets several datasets share one compiled round.

  Returns:
    The stacked arrays, padding rows filled with zeros.

  Raises:
    ValueError: If the clients disagree on the feature shape, a client has
      more rows than `max_examples`, or a feature is NaN or infinite.
  """
  if not clients:
    raise ValueError("stack_clients needs at least one client, got none.")
  feature_shape = np.asarray(clients[0][0]).shape[1:]
  sizes = []
  for k, (x, y) in enumerate(clients):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[1:] != feature_shape:
      raise ValueError(
        f"client {k} has feature shape {x.shape[1:]}, but client 0 has "
        f"{feature_shape}; reshape the clients to one feature shape."
      )
    if x.shape[0] != y.shape[0]:
      raise ValueError(
        f"client {k} has {x.shape[0]} feature rows but {y.shape[0]} labels."
      )
    if x.size and not np.all(np.isfinite(x)):
      bad = int(np.sum(~np.isfinite(x)))
      raise ValueError(
        f"client {k} has {bad} NaN or infinite feature values; impute or "
        "drop those rows before building a FederatedData."
      )
    sizes.append(x.shape[0])
  if max_examples is None:
    max_examples = max(max(sizes), 1)
  if max(sizes) > max_examples:
    raise ValueError(
      f"a client has {max(sizes)} examples, more than max_examples="
      f"{max_examples}; raise max_examples or leave it unset."
    )

  num_clients = len(clients)
  xs = np.zeros((num_clients, max_examples, *feature_shape), np.float32)
  ys = np.zeros((num_clients, max_examples), np.int32)
  mask = np.zeros((num_clients, max_examples), bool)
  for k, (x, y) in enumerate(clients):
    n = sizes[k]
    xs[k, :n] = x
    ys[k, :n] = y
    mask[k, :n] = True
  return ClientArrays(
    x=xs, y=ys, mask=mask, num_examples=np.asarray(sizes, np.int32)
  )


@struct.dataclass
class FederatedData:
  """Train and test splits of every client, plus static metadata.

  Attributes:
    train: Training split, `ClientArrays` with a leading client axis.
    test: Test split, same client order as `train`.
    client_names: One name per client (hospital names for natural sites).
    feature_names: Names of the feature columns (empty for images).
    num_classes: Number of label classes; 2 means a binary task.
    name: Dataset name, such as "fed_heart_disease".
  """

  train: ClientArrays
  test: ClientArrays
  client_names: tuple[str, ...] = struct.field(pytree_node=False)
  feature_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
  num_classes: int = struct.field(pytree_node=False, default=2)
  name: str = struct.field(pytree_node=False, default="")

  @property
  def num_clients(self) -> int:
    return self.train.num_clients

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return self.train.feature_shape

  @classmethod
  def from_clients(
    cls,
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    test: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    client_names: Sequence[str] | None = None,
    feature_names: Sequence[str] = (),
    num_classes: int | None = None,
    name: str = "",
  ) -> FederatedData:
    """Builds a `FederatedData` from per-client `(x, y)` arrays.

    Raises:
      ValueError: If train and test list different numbers of clients, the
        names do not match the clients, or a label is outside
        `[0, num_classes)`.
    """
    if len(train) != len(test):
      raise ValueError(
        f"train has {len(train)} clients but test has {len(test)}; pass "
        "one (x, y) pair per client to both."
      )
    if client_names is None:
      client_names = [f"client_{k}" for k in range(len(train))]
    if len(client_names) != len(train):
      raise ValueError(
        f"{len(client_names)} client_names for {len(train)} clients."
      )
    labels = [np.asarray(y) for _, y in [*train, *test] if len(y)]
    max_label = max((int(y.max()) for y in labels), default=0)
    min_label = min((int(y.min()) for y in labels), default=0)
    if num_classes is None:
      num_classes = max(max_label + 1, 2)
    if min_label < 0 or max_label >= num_classes:
      raise ValueError(
        f"labels span [{min_label}, {max_label}], outside [0, "
        f"{num_classes}) for num_classes={num_classes}; relabel the data "
        "or raise num_classes."
      )
    return cls(
      train=stack_clients(train),
      test=stack_clients(test),
      client_names=tuple(str(n) for n in client_names),
      feature_names=tuple(str(n) for n in feature_names),
      num_classes=int(num_classes),
      name=name,
    )
