"""Loss-threshold membership inference: metrics and a trained target."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fedjax_med.data import load_dataset
from fedjax_med.privacy.audit.membership_audit import (
  membership_audit,
  overfit_config,
  split_members,
)
from fedjax_med.privacy.audit.membership_inference import (
  membership_inference_auc,
)


def test_identical_losses_give_chance():
  losses = np.random.default_rng(0).exponential(size=200)
  result = membership_inference_auc(losses, losses.copy())
  assert result["auc"] == pytest.approx(0.5)
  assert result["advantage"] == pytest.approx(0.0)
  assert result["mean_loss_advantage"] == pytest.approx(0.0)


def test_same_distribution_gives_near_chance():
  rng = np.random.default_rng(1)
  result = membership_inference_auc(
    rng.exponential(size=5000), rng.exponential(size=5000)
  )
  assert abs(result["auc"] - 0.5) < 0.03
  assert result["advantage"] < 0.05


def test_separated_losses_give_perfect_attack():
  rng = np.random.default_rng(2)
  members = rng.uniform(0.0, 0.1, size=50)
  nonmembers = rng.uniform(1.0, 2.0, size=80)
  result = membership_inference_auc(members, nonmembers)
  assert result["auc"] == pytest.approx(1.0)
  assert result["advantage"] == pytest.approx(1.0)
  assert members.max() <= result["threshold"] < nonmembers.min()
  assert result["num_members"] == 50
  assert result["num_nonmembers"] == 80


def test_auc_equals_mann_whitney_probability():
  rng = np.random.default_rng(3)
  members = np.round(rng.normal(0.0, 1.0, size=40), 1)
  nonmembers = np.round(rng.normal(0.5, 1.0, size=60), 1)
  # P(member loss < non-member loss) + 0.5 P(tie).
  below = (members[:, None] < nonmembers[None, :]).mean()
  ties = (members[:, None] == nonmembers[None, :]).mean()
  result = membership_inference_auc(members, nonmembers)
  assert result["auc"] == pytest.approx(below + 0.5 * ties)


def test_mean_loss_advantage_closed_form():
  members = np.asarray([0.1, 0.2, 0.3, 1.4])  # Mean 0.5: 3 of 4 below.
  nonmembers = np.asarray([0.4, 0.6, 0.9, 1.0, 2.0])  # 1 of 5 below.
  result = membership_inference_auc(members, nonmembers)
  assert result["mean_loss_advantage"] == pytest.approx(0.75 - 0.2)


def test_roc_curve_spans_unit_square():
  rng = np.random.default_rng(4)
  result = membership_inference_auc(rng.random(30), rng.random(30) + 0.2)
  assert result["fpr"][0] == 0.0
  assert result["tpr"][0] == 0.0
  assert result["fpr"][-1] == 1.0
  assert result["tpr"][-1] == 1.0
  assert np.all(np.diff(result["fpr"]) >= 0)
  assert np.all(np.diff(result["tpr"]) >= 0)


@pytest.mark.parametrize(
  "members, nonmembers, message",
  [
    ([], [1.0], "losses_members is empty"),
    ([1.0], [], "losses_nonmembers is empty"),
    ([np.nan, 1.0], [1.0], "1 NaN or infinite"),
  ],
)
def test_invalid_losses_rejected(members, nonmembers, message):
  with pytest.raises(ValueError, match=message):
    membership_inference_auc(np.asarray(members), np.asarray(nonmembers))


def test_split_members_partitions_each_client():
  data = load_dataset("fed_heart_disease")
  split = split_members(data, members_per_client=10, seed=0)
  assert list(split.train.num_examples) == [10, 10, 10, 10]
  for k in range(data.num_clients):
    x_train, _ = data.train.client(k)
    x_test, _ = data.test.client(k)
    members, _ = split.train.client(k)
    nonmembers, _ = split.test.client(k)
    assert len(members) + len(nonmembers) == len(x_train) + len(x_test)
    member_rows = {row.tobytes() for row in members}
    nonmember_rows = {row.tobytes() for row in nonmembers}
    assert not member_rows & nonmember_rows
    assert member_rows <= {row.tobytes() for row in x_train}


def test_split_members_rejects_zero():
  data = load_dataset("fed_heart_disease")
  with pytest.raises(ValueError, match="members_per_client=0"):
    split_members(data, members_per_client=0, seed=0)


@functools.cache
def trained_auc(mode: str, noise_multiplier: float) -> dict:
  config = overfit_config()
  config.num_rounds = 30
  config.privacy.mode = mode
  config.privacy.noise_multiplier = noise_multiplier
  return membership_audit(config, members_per_client=10)


def test_overfit_model_leaks_membership():
  result = trained_auc("none", 0.0)
  assert result["train_loss"] < 0.1
  assert result["auc"] > 0.6
  assert result["advantage"] > 0.2


def test_dp_sgd_lowers_membership_auc():
  plain = trained_auc("none", 0.0)
  private = trained_auc("example", 4.0)
  assert private["auc"] < plain["auc"] - 0.05
  assert private["advantage"] < plain["advantage"]
