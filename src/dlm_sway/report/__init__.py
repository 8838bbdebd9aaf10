"""Report renderers: pure functions of a ``SuiteResult`` and its ``SwayScore``.

Every format renders from the same pair, and :func:`from_json` rebuilds that
pair from a saved JSON report, so a stored run re-renders without a model.
"""

from dlm_sway.report.json_report import from_json, to_json, to_json_dict
from dlm_sway.report.terminal import render_terminal

__all__ = ["from_json", "render_terminal", "to_json", "to_json_dict"]
