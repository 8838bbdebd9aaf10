#!/usr/bin/env bash
# The GitHub Action's gate step (action.yml): run `sway gate`, keep every report,
# and put the markdown summary on the job's summary page.
#
# Inputs (environment):
#   SWAY_SPEC         the spec to gate (required)
#   SWAY_THRESHOLD    composite threshold (optional; default: the spec's)
#   SWAY_REPORT_DIR   where run.json, junit.xml, summary.md and report.html go (default sway-report)
#   SWAY_BIN          the sway command (default: sway)
#   GITHUB_STEP_SUMMARY, GITHUB_OUTPUT   set by GitHub Actions; skipped when unset
# Outputs (GITHUB_OUTPUT): exit-code, verdict (passed | failed | error), report-dir.
# Exit status: the gate's (0 passed, 1 failed, 2 bad input or nothing verified).
set -uo pipefail

spec="${SWAY_SPEC:-}"
dir="${SWAY_REPORT_DIR:-sway-report}"
sway="${SWAY_BIN:-sway}"

if [[ -z "$spec" ]]; then
  echo "error: SWAY_SPEC is empty; set the action's 'spec' input to your sway.yaml" >&2
  exit 2
fi
if [[ ! -f "$spec" ]]; then
  echo "error: SWAY_SPEC=$spec: no such file (paths are relative to the workspace)" >&2
  exit 2
fi
mkdir -p "$dir" || { echo "error: cannot create the report folder $dir" >&2; exit 2; }

args=(gate "$spec" --json "$dir/run.json" --junit "$dir/junit.xml" --markdown "$dir/summary.md")
if [[ -n "${SWAY_THRESHOLD:-}" ]]; then
  args+=(--threshold "$SWAY_THRESHOLD")
fi

$sway "${args[@]}"
code=$?

html_note=""
if [[ -f "$dir/run.json" ]]; then
  if ! $sway report "$dir/run.json" --format html --out "$dir/report.html" 2>"$dir/html.err"; then
    html_note="HTML report not written: $(tail -n 1 "$dir/html.err")"
    echo "warning: $html_note" >&2
  fi
  rm -f "$dir/html.err"
fi

case "$code" in
  0) verdict=passed ;;
  1) verdict=failed ;;
  *) verdict=error ;;
esac

if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
  {
    echo "### sway gate: ${verdict} (exit ${code}) — \`${spec}\`"
    echo
    if [[ -f "$dir/summary.md" ]]; then
      cat "$dir/summary.md"
      echo
    else
      echo "No report was written: the gate stopped before running (see the step's log)."
    fi
    if [[ -n "$html_note" ]]; then
      echo
      echo "> $html_note"
    fi
  } >>"$GITHUB_STEP_SUMMARY"
fi

if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
  {
    echo "exit-code=$code"
    echo "verdict=$verdict"
    echo "report-dir=$dir"
  } >>"$GITHUB_OUTPUT"
fi

exit "$code"
