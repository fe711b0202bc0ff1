"""Graphs, Metropolis-Hastings mixing matrices and their validation."""

import math

import numpy as np
import pytest

from fedjax_med.decentralized import topology

GRAPHS = [
  ("ring", 8, {}),
  ("ring", 2, {}),
  ("torus", 9, {}),
  ("torus", 8, {}),
  ("random_regular", 10, {"degree": 3, "seed": 1}),
  ("random_regular", 12, {"degree": 4, "seed": 7}),
  ("complete", 5, {}),
]


@pytest.mark.parametrize("name, num_nodes, options", GRAPHS)
def test_mixing_matrix_doubly_stochastic(name, num_nodes, options):
  graph = topology.make_graph(name, num_nodes, **options)
  w = graph.mixing_matrix
  assert w.shape == (num_nodes, num_nodes)
  np.testing.assert_allclose(w, w.T, atol=0.0)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
  assert np.all(w >= 0)
  # Weight only on edges and the diagonal, and every edge gets weight.
  off_diagonal = ~np.eye(num_nodes, dtype=bool)
  assert np.array_equal((w > 0) & off_diagonal, graph.adjacency)
  assert np.all(np.diag(w) > 0)
  assert 0 < graph.spectral_gap <= 1


def test_metropolis_hastings_path_by_hand():
  # Path 0 - 1 - 2 with degrees 1, 2, 1: each edge gets 1 / (1 + 2).
  adjacency = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
  w = topology.metropolis_hastings_weights(adjacency)
  expected = np.array(
    [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]]
  )
  np.testing.assert_allclose(w, expected, atol=1e-15)


def test_ring_spectral_gap_closed_form():
  # W = (I + A) / 3 on a ring of 8: eigenvalues (1 + 2 cos(2 pi k / 8)) / 3.
  graph = topology.make_graph("ring", 8)
  lambda_2 = (1 + 2 * math.cos(2 * math.pi / 8)) / 3
  assert graph.spectral_gap == pytest.approx(1 - lambda_2, abs=1e-12)


def test_complete_graph_mixes_in_one_step():
  graph = topology.make_graph("complete", 6)
  np.testing.assert_allclose(graph.mixing_matrix, np.full((6, 6), 1 / 6))
  assert graph.spectral_gap == pytest.approx(1.0, abs=1e-12)


def test_torus_neighbours():
  adjacency = topology.torus(3, 4)
  # Node 0 sits at (0, 0); its neighbours wrap around both sides.
  assert set(np.flatnonzero(adjacency[0])) == {1, 3, 4, 8}
  assert np.all(adjacency.sum(axis=1) == 4)
  assert topology.torus_shape(12) == (3, 4)


@pytest.mark.parametrize(
  "num_nodes, degree", [(10, 3), (16, 4), (30, 2), (9, 8), (50, 6)]
)
def test_random_regular_degree_and_seed(num_nodes, degree):
  a = topology.random_regular(num_nodes, degree, seed=3)
  assert np.all(a.sum(axis=1) == degree)
  assert np.array_equal(a, a.T)
  assert not np.any(np.diag(a))
  assert topology.is_connected(a)
  again = topology.random_regular(num_nodes, degree, seed=3)
  assert np.array_equal(a, again)


def test_random_regular_seeds_differ():
  graphs = {topology.random_regular(12, 3, seed).tobytes() for seed in range(5)}
  assert len(graphs) > 1


@pytest.mark.parametrize(
  "num_nodes, degree, message",
  [
    (7, 3, "is odd"),
    (5, 5, "degree=5 is invalid"),
    (6, 1, "never connected"),
  ],
)
def test_random_regular_rejects_impossible(num_nodes, degree, message):
  with pytest.raises(ValueError, match=message):
    topology.random_regular(num_nodes, degree, seed=0)


def test_disconnected_graph_rejected():
  two_edges = np.zeros((4, 4), bool)
  two_edges[0, 1] = two_edges[1, 0] = True
  two_edges[2, 3] = two_edges[3, 2] = True
  with pytest.raises(ValueError, match="disconnected"):
    topology.metropolis_hastings_weights(two_edges)
  with pytest.raises(ValueError, match="disconnected"):
    topology.validate_mixing_matrix(np.kron(np.eye(2), np.full((2, 2), 0.5)))


@pytest.mark.parametrize(
  "adjacency, message",
  [
    (np.array([[0, 1], [0, 0]], bool), "not symmetric"),
    (np.array([[1, 1], [1, 0]], bool), "self-loops"),
    (np.zeros((2, 3), bool), "must be"),
  ],
)
def test_invalid_adjacency_rejected(adjacency, message):
  with pytest.raises(ValueError, match=message):
    topology.validate_adjacency(adjacency)


@pytest.mark.parametrize(
  "mixing, message",
  [
    (np.array([[0.6, 0.5], [0.5, 0.6]]), "not doubly stochastic"),
    (np.array([[0.5, 0.4], [0.6, 0.5]]), "not symmetric"),
    (np.array([[1.5, -0.5], [-0.5, 1.5]]), "negative"),
  ],
)
def test_invalid_mixing_matrix_rejected(mixing, message):
  with pytest.raises(ValueError, match=message):
    topology.validate_mixing_matrix(mixing)


def test_mixing_weight_on_non_edge_rejected():
  # Uniform weights over 3 nodes, but the graph is the path 0 - 1 - 2.
  path = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
  with pytest.raises(ValueError, match="not neighbours"):
    topology.validate_mixing_matrix(np.full((3, 3), 1 / 3), path)


@pytest.mark.parametrize(
  "name, num_nodes, message",
  [
    ("star", 4, "unknown"),
    ("torus", 7, "not a product"),
    ("ring", 0, "at least 1"),
  ],
)
def test_make_graph_rejects(name, num_nodes, message):
  with pytest.raises(ValueError, match=message):
    topology.make_graph(name, num_nodes)


def test_torus_rows_must_divide():
  with pytest.raises(ValueError, match="does not divide"):
    topology.make_graph("torus", 12, rows=5)
