"""Studies: one YAML file, every cell aligned, fine-tuned and evaluated over seeds.

plan (cells and the jobs they share, each keyed by a hash of what it trains), run (the
`study` command's driver), trial (one cell for a W&B sweep agent), report (mean ± std over
seeds, paired differences), models (a demo study's one line per model), paper (the
comparison with a published table), plots, cost (GPU-hours from counted FLOPs)."""
