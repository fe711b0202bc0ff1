"""One round of the secure aggregation protocol, simulated on the host.

Reference: K. Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, IACR ePrint 2017/281
(the honest-but-curious version, without signatures).

`SecureAggregationSession` runs the four steps on `uint32` vectors in
Z_{2^k}, with every message passing through a server object whose
`server_view` records all the server receives:

  1. `advertise_keys`: each client draws two X25519 key pairs, `c` (to
     encrypt shares) and `s` (for masks), and sends both public keys.
  2. `share_keys`: each client draws a self-mask seed `b_u` and splits `b_u`
     and its mask private key `s_u^SK` into Shamir shares (threshold t).
     It sends each other client that client's pair of shares, encrypted
     with AES-GCM under a key derived from `c` by X25519 and HKDF.
  3. `collect_masked_inputs`: each client derives its pairwise seeds
     `s_uv` from `s_u^SK` and `s_v^PK` and sends `y_u = x_u + PRG(b_u) +
     sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)` (mod 2^k), the sum over
     the clients that shared keys.
  4. `unmask`: each client still online sends, for every client that
     shared keys but sent no masked input, its share of that client's
     `s^SK`, and for every client that sent, its share of `b`, never both
     for one client. The server reconstructs them, removes the masks and
     returns `sum_u x_u` (mod 2^k) over the clients that sent.

Each step needs at least `threshold` clients, otherwise it raises: the
protocol tolerates at most `num_clients - threshold` dropouts. Seeds are
derived with the round index in the HKDF info string, so a session's keys
and masks are fresh for its round.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

import jax
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedjax_med.privacy import key_agreement as ka
from fedjax_med.privacy import masking, shamir

_SHARE_BYTES = 66  # A field element of GF(2^521 - 1).
_NONCE_BYTES = 12


@dataclasses.dataclass
class ServerView:
  """Everything the server receives in one session.

  Attributes:
    encryption_public_keys: Client id to the raw public key `c_u^PK`.
    mask_public_keys: Client id to the raw public key `s_u^PK`.
    encrypted_shares: `(sender, recipient)` to an AES-GCM ciphertext of the
      sender's shares for the recipient.
    masked_inputs: Client id to its masked input `y_u`, `uint32[m]`.
    mask_key_shares: For each client that shared keys but sent no input,
      the revealed shares of its mask private key.
    self_mask_shares: For each client that sent an input, the revealed
      shares of its self-mask seed.
    aggregate: The unmasked sum, `uint32[m]`, once `unmask` has run.
  """

  encryption_public_keys: dict[int, bytes] = dataclasses.field(
    default_factory=dict
  )
  mask_public_keys: dict[int, bytes] = dataclasses.field(default_factory=dict)
  encrypted_shares: dict[tuple[int, int], bytes] = dataclasses.field(
    default_factory=dict
  )
  masked_inputs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
  mask_key_shares: dict[int, list[shamir.Share]] = dataclasses.field(
    default_factory=dict
  )
  self_mask_shares: dict[int, list[shamir.Share]] = dataclasses.field(
    default_factory=dict
  )
  aggregate: np.ndarray | None = None


@dataclasses.dataclass
class _Client:
  """A client's private state; the server never reads it."""

  client_id: int
  encryption_key: object
  mask_key: object
  self_mask_seed: bytes = b""
  # Sender id to (share of the sender's s^SK, share of its b).
  held_shares: dict[int, tuple[shamir.Share, shamir.Share]] = dataclasses.field(
    default_factory=dict
  )


_mask_input = jax.jit(masking.mask_input, static_argnames="ring_bits")
_pairwise_mask = jax.jit(masking.pairwise_mask, static_argnames="num_values")
_expand_seed = jax.jit(masking.expand_seed, static_argnames="num_values")


class SecureAggregationSession:
  """Simulates one round of secure aggregation among `num_clients` clients.

  Typical use is `run(inputs, drop_before_input=..., drop_after_input=...)`;
  the four step methods can also be called in order.
  """

  def __init__(
    self,
    num_clients: int,
    threshold: int,
    *,
    ring_bits: int = 32,
    round_index: int = 0,
  ):
    shamir.validate_threshold(threshold, num_clients)
    if not 2 <= ring_bits <= masking.MAX_RING_BITS:
      raise ValueError(f"ring_bits={ring_bits} must be in [2, 32].")
    self.num_clients = num_clients
    self.threshold = threshold
    self.ring_bits = ring_bits
    self.round_index = round_index
    self.server_view = ServerView()
    self._clients: dict[int, _Client] = {}
    self._shared_keys: list[int] = []
    self._sent: list[int] = []

  def _require(self, clients: list[int], step: str) -> None:
    if len(clients) < self.threshold:
      raise ValueError(
        f"only {len(clients)} of {self.num_clients} clients took part in "
        f"{step}, fewer than threshold={self.threshold}, so the sum cannot "
        f"be unmasked; the protocol tolerates at most "
        f"{self.num_clients - self.threshold} dropouts. Lower the threshold "
        "or drop fewer clients."
      )

  def advertise_keys(self, clients: Iterable[int] | None = None) -> list[int]:
    """Step 1: clients send their two public keys; returns who did."""
    ids = sorted(range(self.num_clients) if clients is None else clients)
    for client_id in ids:
      client = _Client(
        client_id, ka.generate_private_key(), ka.generate_private_key()
      )
      self._clients[client_id] = client
      view = self.server_view
      view.encryption_public_keys[client_id] = ka.public_bytes(
        client.encryption_key
      )
      view.mask_public_keys[client_id] = ka.public_bytes(client.mask_key)
    self._require(ids, "advertise_keys")
    return ids

  def _cipher(self, own: _Client, peer_id: int) -> AESGCM:
    key = ka.derive_shared_key(
      own.encryption_key,
      self.server_view.encryption_public_keys[peer_id],
      own.client_id,
      peer_id,
      self.round_index,
      purpose=ka.ENCRYPTION_PURPOSE,
      length=32,
    )
    return AESGCM(key)

  def share_keys(self, clients: Iterable[int] | None = None) -> list[int]:
    """Step 2: clients deal encrypted shares of `s^SK` and `b`."""
    advertised = sorted(self._clients)
    ids = sorted(advertised if clients is None else clients)
    self._require(ids, "share_keys")
    xs = [peer + 1 for peer in advertised]
    for client_id in ids:
      client = self._clients[client_id]
      client.self_mask_seed = ka.new_seed()
      key_shares = shamir.split_bytes(
        ka.private_bytes(client.mask_key),
        self.threshold,
        len(xs),
        xs=xs,
      )
      seed_shares = shamir.split_bytes(
        client.self_mask_seed, self.threshold, len(xs), xs=xs
      )
      for peer, key_share, seed_share in zip(
        advertised, key_shares, seed_shares, strict=True
      ):
        if peer == client_id:
          client.held_shares[client_id] = (key_share, seed_share)
          continue
        plaintext = key_share.y.to_bytes(_SHARE_BYTES, "big") + (
          seed_share.y.to_bytes(_SHARE_BYTES, "big")
        )
        nonce = os.urandom(_NONCE_BYTES)
        associated = _route(client_id, peer)
        ciphertext = self._cipher(client, peer).encrypt(
          nonce, plaintext, associated
        )
        self.server_view.encrypted_shares[(client_id, peer)] = (
          nonce + ciphertext
        )
    self._shared_keys = ids
    # Recipients decrypt what the server routed to them.
    for (
      sender,
      recipient,
    ), message in self.server_view.encrypted_shares.items():
      if recipient in ids and sender in ids:
        self._receive_shares(self._clients[recipient], sender, message)
    return ids

  def _receive_shares(self, client: _Client, sender: int, message: bytes):
    nonce, ciphertext = message[:_NONCE_BYTES], message[_NONCE_BYTES:]
    plaintext = self._cipher(client, sender).decrypt(
      nonce, ciphertext, _route(sender, client.client_id)
    )
    x = client.client_id + 1
    key_y = int.from_bytes(plaintext[:_SHARE_BYTES], "big")
    seed_y = int.from_bytes(plaintext[_SHARE_BYTES:], "big")
    client.held_shares[sender] = (
      shamir.Share(x, key_y),
      shamir.Share(x, seed_y),
    )

  def pairwise_seeds(self, client_id: int) -> dict[int, bytes]:
    """Seeds `s_uv` that client `u` derives for its partners `v`."""
    client = self._clients[client_id]
    return {
      peer: ka.derive_shared_key(
        client.mask_key,
        self.server_view.mask_public_keys[peer],
        client_id,
        peer,
        self.round_index,
      )
      for peer in self._shared_keys
      if peer != client_id
    }

  def collect_masked_inputs(
    self, inputs: Mapping[int, np.ndarray]
  ) -> list[int]:
    """Step 3: clients in `inputs` send masked inputs; the rest drop.

    Args:
      inputs: Client id to its input, `uint32[m]` in `[0, 2^k)`.

    Returns:
      The ids that sent.
    """
    ids = sorted(inputs)
    unknown = set(ids) - set(self._shared_keys)
    if unknown:
      raise ValueError(
        f"clients {sorted(unknown)} did not share keys and cannot send "
        "masked inputs; call share_keys with them first."
      )
    self._require(ids, "collect_masked_inputs")
    limit = 2**self.ring_bits
    for client_id in ids:
      if np.any(np.asarray(inputs[client_id], np.uint64) >= limit):
        raise ValueError(
          f"client {client_id}'s input has values of 2^{self.ring_bits} or "
          f"more; reduce it modulo 2^{self.ring_bits} first."
        )
    for client_id in ids:
      client = self._clients[client_id]
      seeds = self.pairwise_seeds(client_id)
      partners = sorted(seeds)
      partner_key_data = np.stack(
        [ka.seed_to_key_data(seeds[v]) for v in partners]
        or [np.zeros(2, np.uint32)]
      )
      partner_ids = np.asarray(partners or [client_id], np.int32)
      encoded = np.asarray(inputs[client_id], np.uint32)
      masked = _mask_input(
        encoded,
        client_id,
        ka.seed_to_key_data(client.self_mask_seed),
        partner_ids,
        np.ones(partner_ids.shape, bool),
        partner_key_data,
        self.round_index,
        ring_bits=self.ring_bits,
      )
      self.server_view.masked_inputs[client_id] = np.asarray(masked)
    self._sent = ids
    return ids

  def unmask(self, responding: Iterable[int] | None = None) -> np.ndarray:
    """Step 4: reconstructs the masks from shares and returns the sum.

    Args:
      responding: Clients online for this step; None means all that sent.

    Returns:
      `uint32[m]`, the sum of the sent inputs modulo 2^k.
    """
    responders = sorted(self._sent if responding is None else responding)
    unknown = set(responders) - set(self._sent)
    if unknown:
      raise ValueError(
        f"clients {sorted(unknown)} sent no masked input and cannot take "
        "part in unmask; pass a subset of the clients that sent."
      )
    self._require(responders, "unmask")
    view = self.server_view
    dropped = [u for u in self._shared_keys if u not in self._sent]
    for responder in responders:
      held = self._clients[responder].held_shares
      for u in dropped:
        view.mask_key_shares.setdefault(u, []).append(held[u][0])
      for u in self._sent:
        view.self_mask_shares.setdefault(u, []).append(held[u][1])

    total = np.zeros_like(next(iter(view.masked_inputs.values())))
    num_values = total.shape[0]
    for u in self._sent:
      total = total + view.masked_inputs[u]
      seed = shamir.reconstruct_bytes(
        view.self_mask_shares[u], self.threshold, ka.SEED_BYTES
      )
      self_mask = _expand_seed(
        ka.seed_to_key_data(seed), self.round_index, num_values=num_values
      )
      total = total - np.asarray(self_mask)
    for v in dropped:
      raw = shamir.reconstruct_bytes(
        view.mask_key_shares[v], self.threshold, ka.PRIVATE_KEY_BYTES
      )
      mask_key = ka.private_key_from_bytes(raw)
      key_data = np.stack(
        [
          ka.seed_to_key_data(
            ka.derive_shared_key(
              mask_key, view.mask_public_keys[u], v, u, self.round_index
            )
          )
          for u in self._sent
        ]
      )
      # v's signed sum over the senders is the negation of what they added.
      total = total + np.asarray(
        _pairwise_mask(
          v,
          np.asarray(self._sent, np.int32),
          np.ones(len(self._sent), bool),
          key_data,
          self.round_index,
          num_values=num_values,
        )
      )
    view.aggregate = np.asarray(
      masking.reduce_to_ring(total.astype(np.uint32), self.ring_bits)
    )
    return view.aggregate

  def run(
    self,
    inputs: Mapping[int, np.ndarray],
    *,
    drop_before_input: Iterable[int] = (),
    drop_after_input: Iterable[int] = (),
  ) -> np.ndarray:
    """Runs all four steps with the given dropouts.

    Args:
      inputs: Client id to its input, `uint32[m]`, for every client.
      drop_before_input: Clients that share keys, then drop before sending
        their masked input; their pairwise masks are reconstructed.
      drop_after_input: Clients that send their masked input, then drop
        before unmasking; their inputs still count.

    Returns:
      `uint32[m]`, the sum of the inputs of the clients that sent, modulo
      2^k.
    """
    before, after = set(drop_before_input), set(drop_after_input)
    self.advertise_keys()
    self.share_keys()
    sent = {u: x for u, x in inputs.items() if u not in before}
    self.collect_masked_inputs(sent)
    return self.unmask([u for u in sorted(sent) if u not in after])


def _route(sender: int, recipient: int) -> bytes:
  return sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")
