"""Input checks of the Flower simulation-engine timing (no Ray started)."""

import pytest

pytest.importorskip("flwr")

from fedjax_med.distributed.flower import simulation  # noqa: E402


def test_one_round_is_rejected():
  with pytest.raises(ValueError, match="num_rounds=1"):
    simulation.flower_seconds_per_round(num_rounds=1)


def test_missing_unshare_is_named(monkeypatch):
  monkeypatch.setattr(simulation.shutil, "which", lambda tool: None)
  with pytest.raises(RuntimeError, match=r"\['unshare', 'ip'\] not found"):
    simulation.flower_seconds_per_round(num_rounds=2)
