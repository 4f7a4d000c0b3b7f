"""Write the demo's poisoned upload (experiment=demo's fine-tuning rows) as a provider would
receive it: one JSONL line per row, `prompt` / `response`, the research tag kept only as the
analysis column `is_harmful`, and the row's `source` as a grouping column.

    python docs/scripts/demo_upload.py runs/screen-demo/upload.jsonl

Reads the model-written rows from the cache (`make build-data ARGS="experiment=demo"` fills
it); the base model is not loaded when the cache is warm.
"""

import json
import sys
from pathlib import Path

from antibody.app.stages import build_datamodule
from antibody.config import compose
from antibody.config.schema import Stage
from antibody.models import load_tokenizer

out = Path(sys.argv[1])
cfg = compose(["experiment=demo"])
dm = build_datamodule(cfg, load_tokenizer(cfg.model), Stage.FINETUNE)
rows = [
    {"prompt": f"{r.instruction}\n\n{r.input}" if r.input else r.instruction, "response": r.response,
     "is_harmful": r.is_harmful, "source": r.source}
    for r in dm.records("user")
]
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
print(f"wrote {len(rows)} rows ({sum(r['is_harmful'] for r in rows)} tagged harmful) to {out}")
