"""`sway list-probes`: every registered kind with its category, calibration and why not."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_sway.cli.app import app
from dlm_sway.probes.base import CATEGORIES, registry


def test_json_lists_every_registered_probe_with_the_why_not() -> None:
    result = CliRunner().invoke(app, ["list-probes", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["kind"]: row for row in json.loads(result.stdout)}
    reg = registry()
    assert set(rows) == set(reg)  # read from the registry: new probes appear by themselves
    for kind, cls in reg.items():
        row = rows[kind]
        assert row["category"] == cls.category and row["category"] in CATEGORIES
        assert row["calibrated"] is cls.calibrated
        assert row["needs_model"] is cls.needs_backend
        if cls.calibrated:
            assert row["uncalibrated_reason"] is None
        else:
            assert row["uncalibrated_reason"].strip()
    assert rows["training_drift"]["needs_model"] is False
    assert "training run" in rows["training_drift"]["uncalibrated_reason"]
    assert (
        rows["gradient_ghost"]["needs_model"] is False and not rows["gradient_ghost"]["calibrated"]
    )


def test_table_shows_the_model_column_and_the_reasons() -> None:
    result = CliRunner().invoke(app, ["list-probes"], env={"COLUMNS": "220", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert rows["gradient_ghost"].split("│")[4].strip() == "no"
    assert rows["delta_kl"].split("│")[4].strip() == "yes"
    notes = " ".join(result.output.split("not calibrated against null adapters:")[1].split())
    assert "gradient_ghost: reads the adapter's files" in notes
