"""Bundled demo: a training document, on-topic prompts and two LoRA adapters.

Both adapters were trained on ``data/document.md`` (the handbook of an invented
lighthouse guild) on top of ``builtin:smollm2-135m-instruct`` by
``scripts/train_demo_adapters.py``; ``adapters/README.md`` has the recipe and
the measured numbers.

- ``strong`` learned the document far beyond random adapters of its size, and
  over-fitted it: it recites the text and lost general English (the demo's
  forgetting probes call it *harmful*).
- ``weak`` took two tiny optimiser steps: an adapter whose training never took.
- the *impostor* is not shipped: :mod:`dlm_sway.demo.impostor` draws it from a
  seed, random directions at ``strong``'s per-module norms.

The files sit inside the installed package, so their paths can be handed to
peft and transformers directly. Nothing here imports torch.
"""

from __future__ import annotations

from dlm_sway.demo.assets import ADAPTERS, DEMO_BASE, adapter_dir, document_path, prompts

__all__ = ["ADAPTERS", "DEMO_BASE", "adapter_dir", "document_path", "prompts"]
