"""Simulation across processes with JAX's distributed runtime.

`multihost.initialize` starts JAX's runtime in every process; a round then
shards its cohort over `core.sharding.client_mesh(jax.device_count())`.
"""
