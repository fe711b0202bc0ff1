"""Communication graphs and their gossip mixing matrices.

A graph over `n` nodes is a symmetric boolean adjacency matrix `[n, n]` with
a zero diagonal. Gossip averaging mixes the nodes' models with a matrix `W`
that is symmetric, doubly stochastic and nonnegative, with `W_ij > 0` only
where `i` and `j` are neighbours (or `i == j`). On a connected graph repeated
gossip `X <- W X` then converges to the average at a linear rate. Each
step multiplies the norm of the deviation from the average by at most
`|lambda_2(W)|`, the second largest eigenvalue magnitude, so the spectral gap
`1 - |lambda_2|` sets the speed.

Graphs provided: the ring, the 2-D torus (a grid with wrap-around), random
d-regular graphs and the complete graph. Mixing weights are the
Metropolis-Hastings weights of L. Xiao, S. Boyd, "Fast linear iterations for
distributed averaging", Systems & Control Letters 53 (2004):

  W_ij = 1 / (1 + max(deg_i, deg_j))  for neighbours i, j,
  W_ii = 1 - sum_{j != i} W_ij.

They need only each node's and its neighbours' degrees, and every diagonal
entry is positive, so no eigenvalue equals -1 and gossip on a connected graph
converges even when the graph is bipartite (a ring of even length).

Random d-regular graphs are drawn with the pairing model of A. Steger,
N. C. Wormald, "Generation of random regular graphs quickly", Combinatorics,
Probability and Computing 8 (1999): `d` stubs per node are paired one edge at
a time, choosing uniformly among the pairs that form neither a self-loop nor
a repeated edge, and a draw that gets stuck or gives a disconnected graph is
redrawn. The draw depends only on `(num_nodes, degree, seed)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

TOPOLOGIES = ("ring", "torus", "random_regular", "complete")
# Redraws of a random regular graph before giving up.
_MAX_DRAWS = 1000


class Graph(NamedTuple):
  """A communication graph with its gossip mixing matrix.

  Attributes:
    name: The topology, one of `TOPOLOGIES`.
    adjacency: `[n, n]` bool, symmetric, False on the diagonal.
    mixing_matrix: `[n, n]` float64 Metropolis-Hastings weights.
    spectral_gap: `1 - |lambda_2(mixing_matrix)|`.
  """

  name: str
  adjacency: np.ndarray
  mixing_matrix: np.ndarray
  spectral_gap: float

  @property
  def num_nodes(self) -> int:
    return int(self.adjacency.shape[0])

  @property
  def degrees(self) -> np.ndarray:
    return self.adjacency.sum(axis=1)


def _check_num_nodes(num_nodes: int, minimum: int = 1) -> None:
  if num_nodes < minimum:
    raise ValueError(
      f"num_nodes={num_nodes}; a graph needs at least {minimum} node(s)."
    )


def ring(num_nodes: int) -> np.ndarray:
  """Returns the adjacency of a cycle; node `i` links to `i - 1` and `i + 1`.

  Two nodes form a single edge, and one node has no edges.
  """
  _check_num_nodes(num_nodes)
  adjacency = np.zeros((num_nodes, num_nodes), bool)
  for i in range(num_nodes):
    adjacency[i, (i + 1) % num_nodes] = True
    adjacency[(i + 1) % num_nodes, i] = True
  np.fill_diagonal(adjacency, False)
  return adjacency


def torus(rows: int, cols: int) -> np.ndarray:
  """Returns the adjacency of a `rows x cols` grid with wrap-around.

  Node `r * cols + c` links to its four grid neighbours; a side of length 2
  gives one edge in that direction instead of two.
  """
  if rows < 2 or cols < 2:
    raise ValueError(
      f"torus rows={rows}, cols={cols}; both sides need at least 2 nodes "
      "(a torus with one row is a ring, so use topology='ring')."
    )
  num_nodes = rows * cols
  adjacency = np.zeros((num_nodes, num_nodes), bool)
  for r in range(rows):
    for c in range(cols):
      i = r * cols + c
      for j in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
        adjacency[i, j] = True
        adjacency[j, i] = True
  return adjacency


def torus_shape(num_nodes: int) -> tuple[int, int]:
  """Returns the most nearly square `(rows, cols)` with `rows * cols = n`.

  Raises:
    ValueError: If `num_nodes` has no factorization with both sides >= 2.
  """
  for rows in range(math.isqrt(num_nodes), 1, -1):
    if num_nodes % rows == 0:
      return rows, num_nodes // rows
  raise ValueError(
    f"num_nodes={num_nodes} is not a product of two integers >= 2, so no "
    "2-D torus has that many nodes; use topology='ring' or 'random_regular'."
  )


def complete(num_nodes: int) -> np.ndarray:
  """Returns the adjacency of the complete graph."""
  _check_num_nodes(num_nodes)
  return ~np.eye(num_nodes, dtype=bool)


def _pair_stubs(
  num_nodes: int, degree: int, rng: np.random.Generator
) -> np.ndarray | None:
  """Draws one simple d-regular graph by pairing stubs, or None if stuck.

  Each edge joins two free stubs drawn uniformly among the pairs that form
  neither a self-loop nor a repeated edge. Rejection sampling finds such a
  pair quickly while most pairs qualify. After 50 rejections in a row the
  qualifying pairs are enumerated instead, which keeps the same
  distribution.
  """
  adjacency = np.zeros((num_nodes, num_nodes), bool)
  stubs = list(np.repeat(np.arange(num_nodes), degree))
  while stubs:
    for _ in range(50):
      a, b = rng.choice(len(stubs), size=2, replace=False)
      i, j = stubs[a], stubs[b]
      if i != j and not adjacency[i, j]:
        break
    else:
      free = np.bincount(stubs, minlength=num_nodes).astype(np.float64)
      weights = np.triu(np.outer(free, free), k=1)
      weights[adjacency] = 0.0
      total = weights.sum()
      if total == 0:
        return None
      flat = rng.choice(weights.size, p=weights.ravel() / total)
      i, j = divmod(int(flat), num_nodes)
      a, b = stubs.index(i), stubs.index(j)
    adjacency[i, j] = adjacency[j, i] = True
    for index in sorted((a, b), reverse=True):
      stubs[index] = stubs[-1]
      stubs.pop()
  return adjacency


def random_regular(num_nodes: int, degree: int, seed: int) -> np.ndarray:
  """Returns a connected random `degree`-regular graph, fixed by `seed`.

  Raises:
    ValueError: If no connected simple graph with these sizes exists, or
      none was found in 1000 draws.
  """
  _check_num_nodes(num_nodes, 2)
  if not 1 <= degree < num_nodes:
    raise ValueError(
      f"degree={degree} is invalid for {num_nodes} nodes; a simple regular "
      f"graph needs 1 <= degree <= {num_nodes - 1}."
    )
  if num_nodes * degree % 2:
    raise ValueError(
      f"num_nodes * degree = {num_nodes} * {degree} is odd, so no "
      "degree-regular graph exists; change the degree by one."
    )
  if degree == 1 and num_nodes > 2:
    raise ValueError(
      f"a 1-regular graph on {num_nodes} nodes is a set of disjoint edges "
      "and never connected; use degree >= 2."
    )
  rng = np.random.default_rng(seed)
  for _ in range(_MAX_DRAWS):
    adjacency = _pair_stubs(num_nodes, degree, rng)
    if adjacency is not None and is_connected(adjacency):
      return adjacency
  raise ValueError(
    f"no connected {degree}-regular graph on {num_nodes} nodes was found in "
    f"{_MAX_DRAWS} draws with seed={seed}; raise the degree or use "
    "topology='ring'."
  )


def is_connected(adjacency: np.ndarray) -> bool:
  """Returns whether every node is reachable from node 0."""
  num_nodes = adjacency.shape[0]
  seen = np.zeros(num_nodes, bool)
  seen[0] = True
  frontier = [0]
  while frontier:
    node = frontier.pop()
    for neighbour in np.flatnonzero(adjacency[node] & ~seen):
      seen[neighbour] = True
      frontier.append(int(neighbour))
  return bool(seen.all())


def validate_adjacency(adjacency: np.ndarray) -> np.ndarray:
  """Checks that `adjacency` is a connected undirected simple graph.

  Returns:
    The adjacency as a bool array.

  Raises:
    ValueError: If it is not square, not symmetric, has self-loops or is
      disconnected.
  """
  adjacency = np.asarray(adjacency)
  if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
    raise ValueError(
      f"the adjacency matrix has shape {adjacency.shape}; it must be "
      "square, [num_nodes, num_nodes]."
    )
  if adjacency.shape[0] == 0:
    raise ValueError("the adjacency matrix is empty; a graph needs a node.")
  adjacency = adjacency.astype(bool)
  if not np.array_equal(adjacency, adjacency.T):
    raise ValueError(
      "the adjacency matrix is not symmetric; gossip needs undirected "
      "links, so add the reverse of every edge."
    )
  if np.any(np.diag(adjacency)):
    raise ValueError(
      "the adjacency matrix has self-loops; clear its diagonal (the mixing "
      "matrix puts each node's own weight there)."
    )
  if not is_connected(adjacency):
    raise ValueError(
      "the graph is disconnected, so gossip cannot reach consensus; add "
      "edges between its components."
    )
  return adjacency


def metropolis_hastings_weights(adjacency: np.ndarray) -> np.ndarray:
  """Returns the Metropolis-Hastings mixing matrix of a graph (float64)."""
  adjacency = validate_adjacency(adjacency)
  degrees = adjacency.sum(axis=1)
  weights = 1.0 / (1.0 + np.maximum(degrees[:, None], degrees[None, :]))
  mixing = np.where(adjacency, weights, 0.0)
  np.fill_diagonal(mixing, 1.0 - mixing.sum(axis=1))
  return mixing


def validate_mixing_matrix(
  mixing_matrix: np.ndarray,
  adjacency: np.ndarray | None = None,
  atol: float = 1e-9,
) -> np.ndarray:
  """Checks that `W` can drive gossip averaging to consensus.

  Args:
    mixing_matrix: `[n, n]` candidate `W`.
    adjacency: If given, `W_ij` must be zero wherever `i != j` are not
      neighbours.
    atol: Tolerance of the symmetry and row-sum checks.

  Returns:
    `W` as a float64 array.

  Raises:
    ValueError: If `W` is not square, symmetric, nonnegative and doubly
      stochastic, puts weight on a non-edge, or its support graph is
      disconnected.
  """
  mixing = np.asarray(mixing_matrix, np.float64)
  if mixing.ndim != 2 or mixing.shape[0] != mixing.shape[1]:
    raise ValueError(
      f"the mixing matrix has shape {mixing.shape}; it must be square."
    )
  if not np.allclose(mixing, mixing.T, rtol=0.0, atol=atol):
    raise ValueError(
      "the mixing matrix is not symmetric; use Metropolis-Hastings weights "
      "(metropolis_hastings_weights) or symmetrize it."
    )
  if np.any(mixing < -atol):
    raise ValueError(
      f"the mixing matrix has a negative entry ({mixing.min():.3g}); gossip "
      "weights must be nonnegative."
    )
  row_sums = mixing.sum(axis=1)
  if not np.allclose(row_sums, 1.0, rtol=0.0, atol=atol):
    worst = row_sums[np.argmax(np.abs(row_sums - 1.0))]
    raise ValueError(
      f"the mixing matrix is not doubly stochastic: a row sums to {worst!r} "
      "instead of 1, so gossip would not preserve the average."
    )
  off_diagonal = (mixing > atol) & ~np.eye(mixing.shape[0], dtype=bool)
  if adjacency is not None:
    adjacency = np.asarray(adjacency, bool)
    if adjacency.shape != mixing.shape:
      raise ValueError(
        f"the adjacency matrix has shape {adjacency.shape} but the mixing "
        f"matrix {mixing.shape}; both must cover the same nodes."
      )
    stray = off_diagonal & ~adjacency
    if np.any(stray):
      i, j = np.argwhere(stray)[0]
      raise ValueError(
        f"the mixing matrix gives weight {mixing[i, j]:.3g} to nodes {i} "
        f"and {j}, which are not neighbours; a node can only mix with its "
        "neighbours."
      )
  if not is_connected(off_diagonal):
    raise ValueError(
      "the mixing matrix's support graph is disconnected, so gossip cannot "
      "reach consensus; give weight to edges between its components."
    )
  return mixing


def second_eigenvalue_magnitude(mixing_matrix: np.ndarray) -> float:
  """Returns `|lambda_2|`, the largest eigenvalue magnitude besides 1.

  `mixing_matrix` must be symmetric and doubly stochastic, so its largest
  eigenvalue is 1 with the all-ones eigenvector. A single node has none and
  gets 0.
  """
  mixing = np.asarray(mixing_matrix, np.float64)
  if mixing.shape[0] == 1:
    return 0.0
  magnitudes = np.sort(np.abs(np.linalg.eigvalsh(mixing)))[::-1]
  return float(magnitudes[1])


def spectral_gap(mixing_matrix: np.ndarray) -> float:
  """Returns `1 - |lambda_2(W)|` of a symmetric doubly stochastic `W`."""
  return 1.0 - second_eigenvalue_magnitude(mixing_matrix)


def make_graph(
  name: str,
  num_nodes: int,
  *,
  degree: int = 3,
  seed: int = 0,
  rows: int = 0,
) -> Graph:
  """Builds a named topology with its Metropolis-Hastings mixing matrix.

  Args:
    name: One of `TOPOLOGIES`.
    num_nodes: Nodes of the graph.
    degree: Degree of a "random_regular" graph.
    seed: Seed of a "random_regular" graph.
    rows: Rows of a "torus"; 0 picks the most nearly square shape.

  Returns:
    The graph, its validated mixing matrix and its spectral gap.

  Raises:
    ValueError: For an unknown name or sizes the topology cannot take.
  """
  if name == "ring":
    adjacency = ring(num_nodes)
  elif name == "complete":
    adjacency = complete(num_nodes)
  elif name == "random_regular":
    adjacency = random_regular(num_nodes, degree, seed)
  elif name == "torus":
    if rows == 0:
      rows, cols = torus_shape(num_nodes)
    elif rows < 0 or num_nodes % rows:
      raise ValueError(
        f"torus rows={rows} does not divide num_nodes={num_nodes}; pass a "
        "divisor, or 0 for the most nearly square shape."
      )
    else:
      cols = num_nodes // rows
    adjacency = torus(rows, cols)
  else:
    raise ValueError(f"topology={name!r} is unknown; use one of {TOPOLOGIES}.")
  mixing = metropolis_hastings_weights(adjacency)
  mixing = validate_mixing_matrix(mixing, adjacency)
  return Graph(name, adjacency, mixing, spectral_gap(mixing))
