"""The CPU-scale study runner (issue 16): plan, resume, parallel claims and the report, on demo data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_norms.repro.__main__ import main as repro
from ssl_norms.repro.plan import CUT_INIT, GRADSCALE_LR_DIVISOR, cifar10_profile, demo_profile, estimate_seconds, study_plan
from ssl_norms.repro.results import steps_to_reach, verdict
from ssl_norms.repro.runner import point_status, print_plan, run_plan, state_dir


def test_plan_answers_first_and_builds_every_intervention(tmp_path, capsys):
    profile = cifar10_profile()
    points = study_plan(profile, tmp_path)
    assert len(points) == len({p.label for p in points}) == 46
    phases = [p.phase for p in points]
    assert phases[:6] == ["core"] * 6
    assert phases.index("bn") < phases.index("wd") < phases.index("seeds") < phases.index("lr") < phases.index("imbalanced")
    by_label = {p.label: p.fit for p in points}
    cut = by_label["simsiam_cut9_lr1x_seed0"].overrides["trainer.callbacks+"]
    assert cut == {"class_path": CUT_INIT, "init_args": {"c": 9.0}}
    assert by_label["simclr_cut3-bnlr_lr1x_seed0"].overrides["trainer.callbacks+"]["init_args"] == {"c": 3.0, "bn_lr_scale": True}
    assert by_label["simsiam_cut9-normalised_lr1x_seed0"].overrides["trainer.callbacks+"]["init_args"] == {"c": 9.0, "scope": "normalised"}
    gradscale = by_label["simclr_gradscale_lr2x_seed0"]
    assert gradscale.overrides["model.init_args.lr"] == pytest.approx(2 * 0.15 / GRADSCALE_LR_DIVISOR)
    assert any(c.endswith("presets/gradscale_simclr.yaml") for c in gradscale.configs)
    assert by_label["simsiam_default_lr0.5x_seed0"].overrides["model.init_args.lr"] == pytest.approx(0.0075)
    assert by_label["simclr_default_lr1x_seed1"].overrides["seed_everything"] == 1
    assert "data.init_args.imbalance" in by_label["simsiam_imbalanced-cut9_lr1x_seed0"].overrides
    assert all(p.fit.run_dir.parent == tmp_path / "cpu-scale-cifar10" for p in points)
    wall = print_plan(points, profile, jobs=2)
    assert wall == pytest.approx(sum(estimate_seconds(p, profile, 2) for p in points) / 2)
    assert 60 * 60 < wall < 3 * 60 * 60  # the study is sized for about two hours
    assert "46 points, 0 done; 46 left, estimated" in capsys.readouterr().out


def test_steps_to_reach_and_verdicts():
    curve = [(10, 0.2), (20, 0.4), (30, 0.5)]
    assert steps_to_reach(curve, 0.3) == pytest.approx(15)
    assert steps_to_reach(curve, 0.6) is None
    assert verdict(0.05, 0.02) == "holds" and verdict(-0.05, 0.02) == "does not hold at this scale"
    assert verdict(0.03, 0.02) == "inconclusive" and verdict(None, None) == "not run"


def exits(code: int):
    """A launcher whose 'fit' is a process exiting with ``code``; it records what it launched."""
    launched = []

    def launch(point, cores, log):
        launched.append(point.label)
        return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    launch.launched = launched
    return launch


def test_runner_resumes_without_rerunning_and_skips_points_claimed_elsewhere(tmp_path):
    profile = demo_profile()
    points = study_plan(profile, tmp_path)[:5]
    first = exits(0)
    assert run_plan(points, profile, 2, limit=2, launch=first, poll_s=0.05) == {p.label: "done" for p in points[:2]}
    assert [point_status(p) for p in points] == ["done", "done", "todo", "todo", "todo"]
    assert json.loads((state_dir(points[0]) / "done.json").read_text())["exit_code"] == 0
    # another runner (a live process) holds point 2: this runner leaves it and finished points alone
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        state_dir(points[2]).mkdir(parents=True)
        (state_dir(points[2]) / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert point_status(points[2]) == "running"
        failing = exits(3)
        assert run_plan(points, profile, 1, launch=failing, poll_s=0.05) == {p.label: "failed" for p in points[3:]}
        assert failing.launched == [p.label for p in points[3:]]
    finally:
        holder.kill()
        holder.wait()
    assert point_status(points[2]) == "todo"  # its holder is gone
    again = exits(0)
    run_plan(points, profile, 1, launch=again, poll_s=0.05, skip=[points[2].label[:8] + "*"])
    assert again.launched == []  # skipped by pattern
    run_plan(points, profile, 1, launch=again, poll_s=0.05)
    assert again.launched == [points[2].label]  # failed points wait for retry_failed
    run_plan(points, profile, 1, retry_failed=True, launch=again, poll_s=0.05)
    assert again.launched[1:] == [p.label for p in points[3:]] and all(point_status(p) == "done" for p in points)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_study_runs_resumes_and_reports_without_touching_the_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    profile = demo_profile()
    points = study_plan(profile, tmp_path / "runs")
    where = ["--profile", "demo", "--runs", str(tmp_path / "runs")]
    repro(["run", *where, "--jobs", "2", "--limit", "2"])  # each fit is an `ssl-norms fit` subprocess
    assert "estimated" in capsys.readouterr().out and [point_status(p) for p in points[:3]] == ["done", "done", "todo"]
    repro(["plan", *where])
    assert "46 points, 2 done; 44 left" in capsys.readouterr().out
    runs_before = {p.label: tree_hashes(p.fit.run_dir) for p in points[:2]}
    out = tmp_path / "report"
    out.mkdir()
    (out / "REPRODUCTION.md").write_text("<!-- notes:start -->\nhand-written\n<!-- notes:end -->\n")
    repro(["report", *where, "--out", str(out)])
    assert {p.label: tree_hashes(p.fit.run_dir) for p in points[:2]} == runs_before
    results = json.loads((out / "results.json").read_text())
    assert results["points_done"] == 2 and results["points"] == 46
    default, cut = results["runs"][:2]
    assert default["variant"] == "default" and cut["variant"] == "cut3"
    assert 0 < default["knn_final"] <= 1 and default["knn_se"] > 0 and default["norm_final_epoch"] > 0
    assert any(key.endswith("/eff_lr") for key in default["weights"])
    [comparison] = results["comparisons"]
    assert comparison["delta"] == pytest.approx(cut["knn_final"] - default["knn_final"])
    cut_claim = next(c for c in results["claims"] if c["claim"].startswith("cut-initialisation raises") and c["method"] == "simclr")
    assert cut_claim["effect"] == pytest.approx(comparison["delta"]) and cut_claim["verdict"] == verdict(comparison["delta"], comparison["se"])
    assert results["confidence"]["run"] == max((default, cut), key=lambda r: r["knn_final"])["label"]
    assert len(results["confidence"]["knn_by_norm"]) == 5  # quintiles with standard errors
    text = (out / "REPRODUCTION.md").read_text()
    assert "hand-written" in text and "| simclr | cut3 |" in text and "not run" in text
    assert str(tmp_path) not in text and "--run_dir=$REPRO_RUNS/cpu-scale-demo/" in text  # no path of this machine
    assert (out / "knn_curves.png").stat().st_size < 200_000
