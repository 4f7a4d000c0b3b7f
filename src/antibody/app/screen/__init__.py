"""The provider's screen: every row of an upload scored under an aligned model before any GPU
time is spent (run) and its report: r's distribution, least-weighted rows, AUROCs (report)."""
