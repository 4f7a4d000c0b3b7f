"""antibody: defences against harmful fine-tuning of LLMs, built on PyTorch Lightning."""

__version__ = "0.1.0"
