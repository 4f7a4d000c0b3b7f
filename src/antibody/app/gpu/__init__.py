"""The GPU check's parts that are not its driver (scripts/gpu_check.py, `make gpu-check`):
checks (what an evaluation does on the GPU, on a few prompts; the stacked-adapter check of a
4-bit base) and budget (the run's expected time on one H100, from counted FLOPs and stated
assumptions)."""
