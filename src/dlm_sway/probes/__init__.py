"""Built-in probes. Importing this package registers every probe kind."""

from dlm_sway.probes import adapter_ablation, delta_kl, null_adapter

__all__ = ["adapter_ablation", "delta_kl", "null_adapter"]
