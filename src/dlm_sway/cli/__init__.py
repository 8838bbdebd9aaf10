"""The ``sway`` command line. No torch at import time: ``sway --help`` is instant."""
