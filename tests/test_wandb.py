"""W&B: names and tags derived from the run, offline without credentials (never waits on the
network), and the offline run file holds the monitors' metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from jsonargparse import Namespace

from conftest import TINY_DEMO
from ssl_norms.cli import main
from ssl_norms.wandb_setup import configure_wandb_args, run_labels

def read_wandb_records(path: Path) -> list[dict]:
    """The records of a run's ``.wandb`` transaction log, read by wandb's own reader
    (``wandb leet inspect --json``, wandb-core's: one JSON object per record, ``type`` naming it;
    wandb >= 0.31 prints JSON, and its Python package has no reader of the file)."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"wandb could not read {path}: {result.stderr[-2000:]}"
    return [json.loads(line) for line in result.stdout.splitlines()]


def _cfg(callbacks: list[dict], weight_decay: float = 5e-6) -> Namespace:
    return Namespace(
        model=Namespace(class_path="ssl_norms.methods.SimCLR", init_args=Namespace(weight_decay=weight_decay)),
        data=Namespace(class_path="ssl_norms.data.CIFAR100DataModule", init_args=Namespace()),
        trainer=Namespace(callbacks=[Namespace(class_path=c["class_path"], init_args=Namespace(**c.get("init_args", {}))) for c in callbacks]),
    )


def test_names_and_tags_come_from_method_data_and_sweep_point(tmp_path):
    cfg = _cfg([
        {"class_path": "ssl_norms.callbacks.EmbeddingNormMonitor"},
        {"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 4}},
        {"class_path": "ssl_norms.callbacks.GradScale", "init_args": {"power": 1.0}},
    ])
    point_dir = tmp_path / "runs" / "table1-simclr-cifar100" / "c4_weight_decay=5e-06"
    labels = run_labels(cfg, point_dir)
    assert labels == {
        "project": "ssl-norms",
        "group": "table1-simclr-cifar100",  # a sweep's points form one group
        "name": "simclr-cifar100-c4_weight_decay=5e-06",
        "tags": ["method=simclr", "data=cifar100", "wd=5e-06", "cut=4", "power=1"],
    }
    plain = run_labels(_cfg([], weight_decay=1e-6), tmp_path / "runs" / "simclr-cifar100" / "slurm-77")
    assert plain["group"] == "simclr-cifar100" and plain["tags"] == ["method=simclr", "data=cifar100", "wd=1e-06"]

    # explicit logger settings win; the run id is kept in the run dir
    args = Namespace(project="mine", tags=["extra"])
    point_dir.mkdir(parents=True)
    configure_wandb_args(args, point_dir, cfg)
    assert args.project == "mine" and args.group == "table1-simclr-cifar100" and args.tags[0] == "extra"
    again = Namespace()
    configure_wandb_args(again, point_dir, cfg)
    assert again.id == args.id == (point_dir / "wandb_run_id").read_text()


@pytest.mark.timeout(300)
def test_offline_fit_writes_the_monitor_metrics_to_the_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", minversion="0.31", reason="reading the run file needs `wandb leet inspect --json`")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "runs" / "wd-sweep" / "c2"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
          "--trainer.callbacks+=ssl_norms.callbacks.CutInit", "--trainer.callbacks.c=2", "--run_dir", str(run_dir)])
    assert wandb.run is None  # fit finished its W&B run
    # wandb.finish() only informs wandb-core that the run is done; the service writes and closes the
    # run's .wandb file after that (right after fit it may hold just its 7-byte header, or half a
    # record). teardown() waits for the service to finish every run's files.
    wandb.teardown()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, f"one offline run expected in {run_dir / 'wandb'}: {sorted(p.name for p in (run_dir / 'wandb').iterdir())}"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    records = read_wandb_records(offline[0] / f"run-{run_id}.wandb")
    kinds = [r["type"] for r in records]
    assert kinds.count("run") == 1 and kinds[-1] == "exit", f"incomplete W&B run file: {kinds}"
    run = records[kinds.index("run")]["run"]
    assert (run["run_id"], run["project"], run["run_group"]) == (run_id, "ssl-norms", "wd-sweep")
    assert run["display_name"] == "simclr-syntheticlatentclasses-c2"
    assert {"method=simclr", "cut=2", "wd=1e-06"} <= set(run["tags"])

    history: dict[str, list[float]] = {}
    for record in records:
        if record["type"] == "history":
            for key, value in record["history"]["item"].items():
                if isinstance(value, (int, float)):
                    history.setdefault(key, []).append(float(value))
    for key in ["norm/mean", "norm/q50", "lr/effective", "pairs/opposite_rate", "train/loss", "knn/top1"]:
        assert history.get(key), f"{key} missing from the W&B history ({sorted(history)})"
    assert 0.0 <= history["knn/top1"][-1] <= 1.0 and all(v > 0 for v in history["norm/mean"])

    config_keys = {key for r in records if r["type"] == "config" for key in r["config"]["update"]}
    assert {"scale/global_batch_size", "cut_init/c"} <= config_keys
    assert "history" in kinds and (run_dir / "metrics.csv").exists()  # the CSV log is kept next to W&B
