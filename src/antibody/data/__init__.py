"""Data: records, sources, prompt formatting, collation, streams and the DataModule.

Exports resolve lazily (PEP 562): `antibody.data.records` is imported by the source
loaders, and importing the DataModule (Lightning, every source family) from here eagerly
would make that a circular, slow import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Record": "antibody.data.records",
    "normalise_text": "antibody.data.records",
    "make_uid": "antibody.data.records",
    "format_prompt": "antibody.data.formatting",
    "encode_example": "antibody.data.formatting",
    "encode_pair": "antibody.data.formatting",
    "IGNORE_INDEX": "antibody.data.formatting",
    "BATCH_KEYS": "antibody.data.collate",
    "collate_rows": "antibody.data.collate",
    "encode_records": "antibody.data.collate",
    "CyclingSampler": "antibody.data.streams",
    "StepStream": "antibody.data.streams",
    "SafetyDataModule": "antibody.data.datamodule",
    "evaluation_records": "antibody.data.evaluation",
    "Split": "antibody.data.plan",
    "Stage": "antibody.config.schema",
    "format_summary": "antibody.data.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'antibody.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
