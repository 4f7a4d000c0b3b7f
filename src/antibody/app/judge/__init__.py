"""Judges measured and compared: `judge-eval` on the labelled validation part (evaluation),
its Markdown table (report), and how a demo's Harmful Scores read under every judge that
scored its answers (change)."""
