"""sway: differential testing of LoRA fine-tunes against null adapters."""

__version__ = "0.1.0"

__all__ = ["__version__"]
