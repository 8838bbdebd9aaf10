"""Third-party progress bars off in non-interactive runs.

A CI log or a file behind ``2>`` shows every redraw of a tqdm bar as a new line:
the GGUF de-quantisation (transformers draws it with ``tqdm.auto`` directly),
weight loading and hub downloads add hundreds of lines to a log that should hold
sway's report. sway draws its own progress (and none when stderr is not a
terminal), so in that case the others are switched off.

tqdm reads its ``TQDM_*`` defaults once, when it is first imported, and
huggingface_hub reads ``HF_HUB_DISABLE_PROGRESS_BARS`` the same way: call
:func:`silence_progress_bars` before torch/transformers load (the CLI does, right
before it builds a backend). Libraries already imported are switched off through
their own functions. Variables the user set are left as they are.
"""

from __future__ import annotations

import os
import sys

#: The environment switches, each honoured by the library named.
ENV_SWITCHES = {
    "TQDM_DISABLE": "1",  # tqdm >= 4.66: every bar, including tqdm.auto in transformers' GGUF loader
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub downloads
}


def silence_progress_bars() -> None:
    """Turn third-party progress bars off for this process (and its children)."""
    for name, value in ENV_SWITCHES.items():
        os.environ.setdefault(name, value)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


def quiet_if_not_interactive() -> bool:
    """Silence the bars when stderr is not a terminal; True when it did."""
    if sys.stderr is not None and sys.stderr.isatty():
        return False
    silence_progress_bars()
    return True


__all__ = ["ENV_SWITCHES", "quiet_if_not_interactive", "silence_progress_bars"]
