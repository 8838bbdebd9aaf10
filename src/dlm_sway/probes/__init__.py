"""Built-in probes, one module per kind.

Importing this package registers nothing: :func:`dlm_sway.probes.base.registry`
imports the modules in :data:`~dlm_sway.probes.base.BUILTIN_PROBE_MODULES` on
first use, so the CLI and a single probe import stay cheap.
"""
