"""The application layer: run directories, stage training, evaluation jobs, the demo, bench and reports. `antibody.cli` parses arguments and calls into here."""
