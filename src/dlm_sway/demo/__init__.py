"""Bundled demo: a training document, on-topic prompts and two LoRA adapters.

Both adapters were trained on ``data/document.md`` (the handbook of an invented
lighthouse guild) on top of ``builtin:smollm2-135m-instruct`` by
``scripts/train_demo_adapters.py``; ``adapters/README.md`` has the recipe and
the measured numbers.

- ``strong`` learned the document and should clear every null comparison.
- ``weak`` took two tiny optimiser steps: an adapter whose training never took.

The files sit inside the installed package, so their paths can be handed to
peft and transformers directly. Nothing here imports torch.
"""

from __future__ import annotations

from dlm_sway.demo.assets import ADAPTERS, DEMO_BASE, adapter_dir, document_path, prompts

__all__ = ["ADAPTERS", "DEMO_BASE", "adapter_dir", "document_path", "prompts"]
