"""bench/race.py: argument parsing, alternation and the medians/ratios it reports."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from bench_modules import load

race = load("race")
flops = load("flops")


def test_defaults_and_flags(tmp_path: Path) -> None:
    args = race.parse_args(["416dd1a"])
    assert (args.rev, args.rounds, args.suite, args.old_tree) == ("416dd1a", 3, race.SUITES, None)
    tree = tmp_path / "old"
    (tree / "src" / "dlm_sway").mkdir(parents=True)
    args = race.parse_args(
        ["HEAD~1", "--old-tree", str(tree), "--rounds", "1", "--suite", "race", "--suite", "race"]
    )
    assert args.old_tree == tree and args.rounds == 1 and args.suite == ("race",)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["x", "--rounds", "0"],
        ["x", "--suite", "nope"],
        ["x", "--old-tree", "/nonexistent"],
        ["no-such-revision"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        race.parse_args(argv)
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_sides_alternate_each_round() -> None:
    assert [race.order(r) for r in range(3)] == [
        ("old", "new"),
        ("new", "old"),
        ("old", "new"),
    ]


def _sample(side: str, r: int, wall: float, in_run: float, fwd: int, rss: float) -> object:
    return race.Sample("race", side, r, wall, in_run, fwd, rss, ("a=pass",))


def test_medians_and_new_over_old_ratios() -> None:
    samples = [
        _sample("old", 0, 15.0, 8.0, 45, 1100.0),
        _sample("new", 0, 9.0, 4.0, 20, 1000.0),
        _sample("old", 1, 16.0, 9.0, 45, 1150.0),
        _sample("new", 1, 8.0, 3.0, 20, 900.0),
        _sample("old", 2, 30.0, 8.5, 45, 1120.0),  # an outlier the median ignores
        _sample("new", 2, 9.5, 4.5, 20, 950.0),
    ]
    summary = race.summarize(samples)["race"]
    assert summary["old"]["wall_s"] == 16.0 and summary["new"]["wall_s"] == 9.0
    assert summary["ratio"]["wall_s"] == pytest.approx(9.0 / 16.0)
    assert summary["ratio"]["in_run_s"] == pytest.approx(4.0 / 8.5)
    assert summary["ratio"]["forwards"] == pytest.approx(20 / 45)
    assert summary["ratio"]["peak_rss_mb"] == pytest.approx(950.0 / 1120.0)
    text = race.render(race.summarize(samples))
    assert "new/old" in text and "0.56" in text


def test_sample_reads_the_run_json_fields() -> None:
    data = {
        "timings": {"total_s": 8.25},
        "backend_stats": {"forward_passes": 45},
        "probes": [{"name": "nulls", "verdict": "info"}, {"name": "kl", "verdict": "pass"}],
    }
    s = race.sample_from("race", "new", 0, 15.0, 1024.0, data)
    assert (s.in_run_s, s.forwards, s.verdicts) == (8.25, 45, ("nulls=info", "kl=pass"))


def test_forward_flops_counts_body_attention_and_kept_logits() -> None:
    dims = flops.Dims(hidden=4, intermediate=8, layers=2, kv_dim=2, vocab=10)
    per_layer = 2 * 16 + 2 * 4 * 2 + 3 * 4 * 8
    assert dims.body_params_per_layer == per_layer
    one = flops.forward_flops([3], kept_positions=1, dims=dims)
    body = 2.0 * 2 * per_layer * 3
    attn = 2.0 * 2.0 * 2 * 4 * 6  # positions 1+2+3
    assert one == pytest.approx(body + attn + 2.0 * 4 * 10)
    assert flops.forward_flops([3], kept_positions=3, dims=dims) > one


def test_phase_meter_times_each_phase_apart() -> None:
    meter = flops.PhaseMeter(flops.Dims(4, 8, 2, 2, 10))
    meter.phases.append(flops.Phase("load", wall_s=1.5))
    meter.begin("preflight", close_previous=False)
    meter.begin("probe")
    meter.end()
    assert [p.name for p in meter.phases] == ["load", "preflight", "probe"]
    assert meter.phases[0].wall_s == 1.5  # the load was timed by the caller
    assert all(0.0 <= p.wall_s < 1.0 for p in meter.phases[1:])


def test_each_phase_is_judged_against_the_peak_sampled_at_its_own_ends() -> None:
    """A machine that slows down mid-run: the later phase is measured against the slow
    samples around it, the earlier against the fast ones, and sampling (0.05 s here)
    never counts as a phase's time."""
    readings = iter([100e9, 100e9, 50e9, 60e9])

    def sample() -> float:
        time.sleep(0.05)
        return next(readings)

    meter = flops.PhaseMeter(flops.Dims(4, 8, 2, 2, 10), sample=sample)
    meter.phases.append(flops.Phase("load", wall_s=1.5))
    meter.begin("fast", close_previous=False)
    meter.begin("slowing")
    meter.end()  # as the runner does: a probe ends, then the next one starts
    meter.begin("slow")
    meter.end()
    fast, slowing, slow = meter.phases[1:]
    assert meter.samples == [100e9, 100e9, 50e9, 60e9]
    assert (fast.peaks, slowing.peaks, slow.peaks) == ([100e9, 100e9], [100e9, 50e9], [50e9, 60e9])
    assert all(p.wall_s < 0.04 for p in (fast, slowing, slow))
    assert meter.phases[0].peaks == []  # the load was timed apart, before any sample
    for phase in (fast, slowing, slow):
        phase.flops, phase.wall_s, phase.forward_s = 30e9, 1.0, 1.0
    lines = flops.report(meter.phases, meter.samples, "float32").splitlines()
    assert "4 samples at phase boundaries, 50.0-100.0 GFLOP/s" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["fast"][-2:] == ["30.0%", "30.0%"]
    assert rows["slowing"][-2:] == ["30.0%", "30.0%"]  # the higher end, not the slow one
    assert rows["slow"][-2:] == ["50.0%", "50.0%"]  # 30 of the 60 sampled after it
    assert rows["total"][-3] == "100.0"  # the whole run against the highest sample


def test_flops_names_a_missing_spec_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flops.main([str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.yaml" in err and "not found" in err


def test_the_old_autogen_suite_loses_only_what_the_new_code_refuses(tmp_path: Path) -> None:
    """An old-style suite with a preference_flip entry the document cannot feed (2 triples,
    3 needed): that entry and its calibration go, everything else stays, paths resolve."""
    old = tmp_path / "old"
    old.mkdir()
    spec = {
        "version": 1,
        "dlm_source": str(race.DOCUMENT),
        "models": {"ft": {"kind": "hf", "base": race.BASE, "adapter": str(race.ADAPTER)}},
        "suite": [
            {
                "name": "null_baseline",
                "kind": "null_adapter",
                "runs": 10,
                "calibrate_kinds": ["delta_kl", "preference_flip"],
            },
            {"name": "topic_shift", "kind": "delta_kl", "prompts": ["The Guild dates from the"]},
            {"name": "preferences", "kind": "preference_flip"},
        ],
    }
    (old / "autogen.yaml").write_text(race.yaml.safe_dump(spec), encoding="utf-8")
    out, dropped = race.shared_autogen_spec(old / "autogen.yaml", race.ROOT, old)
    kept = race.yaml.safe_load(out.read_text(encoding="utf-8"))
    assert [e["name"] for e in kept["suite"]] == ["null_baseline", "topic_shift"]
    assert kept["suite"][0]["calibrate_kinds"] == ["delta_kl"]
    assert len(dropped) == 1 and dropped[0].startswith("preferences (preference_flip): ")
    assert "min_triples_for_decision" in dropped[0]


def test_a_new_dtype_rewrites_every_model_and_keeps_paths_working(tmp_path: Path) -> None:
    spec = tmp_path / "a" / "autogen.yaml"
    spec.parent.mkdir()
    (tmp_path / "a" / "doc.md").write_text("x", encoding="utf-8")
    data = {
        "dlm_source": "doc.md",
        "models": {"ft": {"kind": "hf", "base": race.BASE, "adapter": "../adapter"}},
        "suite": [],
    }
    spec.write_text(race.yaml.safe_dump(data), encoding="utf-8")
    out = race.with_dtype(spec, "bf16", tmp_path / "b.yaml")
    got = race.yaml.safe_load(out.read_text(encoding="utf-8"))
    assert got["models"]["ft"]["dtype"] == "bf16" and got["models"]["ft"]["base"] == race.BASE
    assert got["models"]["ft"]["adapter"] == str((tmp_path / "adapter").resolve())
    assert got["dlm_source"] == str((tmp_path / "a" / "doc.md").resolve())


def test_sigterm_removes_the_worktree_and_the_temp_folder() -> None:
    """A race stopped by SIGTERM (a CI timeout, ``kill``) unwinds like Ctrl-C: its
    running sway process, the old revision's worktree and its temp folder all go."""
    import signal
    import subprocess
    import sys
    import time

    root = Path(race.__file__).resolve().parents[1]

    def worktrees() -> list[str]:
        out = subprocess.run(
            ["git", "-C", str(root), "worktree", "list", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [ln.split(" ", 1)[1] for ln in out.splitlines() if "sway-race-" in ln]

    before = worktrees()
    proc = subprocess.Popen(
        [sys.executable, str(root / "bench" / "race.py"), "HEAD", "--suite", "race"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        made: list[str] = []
        while not made and time.monotonic() < deadline and proc.poll() is None:
            made = [w for w in worktrees() if w not in before]
            time.sleep(0.1)
        assert made, "race.py never made its worktree"
        time.sleep(0.5)  # into its first run
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert worktrees() == before
    work = Path(made[0]).parent
    assert not work.exists()
    # …and no sway run of it is left behind (its command line names the temp folder).
    running = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            running.append(cmdline.read_bytes().decode("utf-8", "replace"))
        except OSError:
            continue
    assert not [c for c in running if str(work) in c]
