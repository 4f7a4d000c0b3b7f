"""The bench: every method's step cost, measured side by side, as ratios to SFT.

run (the `bench` command and its memory child process), memory (peak memory of one method
in a fresh process), stats (the arithmetic of the ratios, free of torch)."""
