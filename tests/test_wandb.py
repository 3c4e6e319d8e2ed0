"""W&B: names and tags derived from the run, offline without credentials (never waits on the
network); the offline run file holds the monitors' metrics, the resolved config (also as an
artifact), a training-curves image and norm histograms at every validation; validate and analyze
log into the run's W&B run; a copied run gets its own."""

from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from jsonargparse import Namespace

from conftest import REPO, TINY_DEMO
from ssl_norms.cli import main
from ssl_norms.runs import record_start
from ssl_norms.sweep import run_point, sweep_points
from ssl_norms.wandb_setup import SWEEP_ENV, configure_wandb_args, run_labels

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


def test_the_group_is_the_sweep_or_method_and_data_never_a_folder_name(tmp_path, monkeypatch):
    cfg = _cfg([])
    elsewhere = tmp_path / "scratch" / "runs" / "mine"  # a custom --run_dir outside $SSL_NORMS_RUNS
    assert run_labels(cfg, elsewhere)["group"] == "simclr-cifar100"
    assert run_labels(cfg, tmp_path / "runs" / "mine")["group"] == "simclr-cifar100"  # directly under the runs root
    assert run_labels(cfg, tmp_path / "runs" / "simclr-cifar100" / "20260101-120000")["group"] == "simclr-cifar100"
    monkeypatch.setenv(SWEEP_ENV, "fig5-wd")
    assert run_labels(cfg, elsewhere) == {**run_labels(cfg, elsewhere), "group": "fig5-wd"}


def test_a_sweep_names_its_points_group_while_it_runs_them(tmp_path, monkeypatch):
    monkeypatch.delenv(SWEEP_ENV, raising=False)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"name: wd-sweep\nconfig: {REPO / 'configs' / 'demo.yaml'}\ngrid:\n  model.init_args.weight_decay: [0.0]\n")
    (point,) = sweep_points(sweep_file, tmp_path / "elsewhere")
    seen = []
    run_point(point, lambda args: seen.append(os.environ.get(SWEEP_ENV)))
    assert seen == ["wd-sweep"] and SWEEP_ENV not in os.environ


def test_an_evaluation_joins_the_runs_wandb_run_or_starts_its_own(tmp_path):
    cfg = _cfg([])
    run = tmp_path / "runs" / "simclr-cifar100" / "r"
    (run / "validate-1").mkdir(parents=True)
    own = Namespace()  # the run never logged to W&B: a W&B run of the evaluation's folder, labelled as the run
    configure_wandb_args(own, run / "validate-1", cfg, "validate")
    assert (own.id, own.save_dir, own.job_type) == ((run / "validate-1" / "wandb_run_id").read_text(), str(run / "validate-1"), "validate")
    assert own.name == "simclr-cifar100-r" and own.group == "simclr-cifar100" and not own.get("prefix")

    configure_wandb_args(Namespace(), run, cfg)  # now it did
    joined = Namespace()
    configure_wandb_args(joined, run / "test-2", cfg, "test")
    assert (joined.id, joined.save_dir, joined.prefix) == ((run / "wandb_run_id").read_text(), str(run), "test")
    assert joined.get("job_type") is None and joined.name == "simclr-cifar100-r" and not (run / "test-2").exists()


def test_a_copied_run_continues_in_its_own_wandb_run_and_a_moved_one_in_its_own(tmp_path):
    cfg = _cfg([])
    source = tmp_path / "runs" / "simclr-cifar100" / "a"
    source.mkdir(parents=True)
    configure_wandb_args(Namespace(), source, cfg)
    record_start(source, "fit", None, {})
    source_id = (source / "wandb_run_id").read_text()
    copy = tmp_path / "runs" / "simclr-cifar100" / "b"
    shutil.copytree(source, copy)
    args = Namespace()
    configure_wandb_args(args, copy, cfg)
    assert args.id != source_id and (copy / "wandb_run_id").read_text() == args.id
    assert (source / "wandb_run_id").read_text() == source_id  # the source is left as it was
    again = Namespace()  # every task of a multi-task job derives the same id, and so does a requeue
    configure_wandb_args(again, copy, cfg)
    assert again.id == args.id

    moved = tmp_path / "runs" / "simclr-cifar100" / "c"
    source.rename(moved)  # a move is the same run: same W&B run
    kept = Namespace()
    configure_wandb_args(kept, moved, cfg)
    assert kept.id == source_id


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


@pytest.mark.timeout(600)
def test_offline_fit_validate_and_analyze_fill_one_wandb_run(tmp_path, monkeypatch, capfd):
    pytest.importorskip("wandb", minversion="0.31", reason="reading the run file needs `wandb leet inspect --json`")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "runs" / "wd-sweep" / "c2"
    main(["fit", *TINY_DEMO, "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
          "--trainer.callbacks+=ssl_norms.callbacks.CutInit", "--trainer.callbacks.c=2", "--run_dir", str(run_dir)])
    assert wandb.run is None  # fit finished its W&B run, and its files are complete (no teardown needed here)
    assert "anonymous" not in capfd.readouterr().err  # wandb's deprecation warning for a key nobody set
    offline = _offline_runs(run_dir)
    assert len(offline) == 1, f"one offline run expected in {run_dir / 'wandb'}: {sorted(p.name for p in (run_dir / 'wandb').iterdir())}"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    records = read_wandb_records(offline[0] / f"run-{run_id}.wandb")
    kinds = [r["type"] for r in records]
    assert kinds.count("run") == 1 and kinds[-1] == "exit", f"incomplete W&B run file: {kinds}"
    run = records[kinds.index("run")]["run"]
    assert (run["run_id"], run["project"], run["run_group"]) == (run_id, "ssl-norms", "wd-sweep")
    assert run["display_name"] == "simclr-syntheticlatentclasses-c2" and not run.get("job_type")
    assert {"method=simclr", "cut=2", "wd=1e-06"} <= set(run["tags"])

    history: dict[str, list[float]] = {}
    for item in _history(records):
        for key, value in item.items():
            if isinstance(value, (int, float)):
                history.setdefault(key, []).append(float(value))
    for key in ["norm/mean", "norm/q50", "lr/effective", "pairs/opposite_rate", "train/loss", "knn/top1"]:
        assert history.get(key), f"{key} missing from the W&B history ({sorted(history)})"
    assert 0.0 <= history["knn/top1"][-1] <= 1.0 and all(v > 0 for v in history["norm/mean"])

    # the resolved config, nested, with the code's commit; the monitors' own config keys stay
    config = {}
    for record in records:
        if record["type"] == "config":
            config.update(record["config"]["update"])
    assert {"scale/global_batch_size", "cut_init/c"} <= set(config)
    assert config["model"]["class_path"] == "ssl_norms.methods.SimCLR" and config["model"]["init_args"]["weight_decay"] == 1e-6
    assert config["data"]["init_args"]["train_samples"] == 512 and config["seed_everything"] == 0
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["callbacks"]["CutInit"]["init_args"]["c"] == 2
    assert config["trainer"]["callbacks"]["OnlineKNN"]["init_args"]["k"] == 20
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert config["git"]["commit"] == head and isinstance(config["git"]["dirty"], bool)

    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert (artifact["name"], artifact["type"]) == (f"config-{run_id}", "config")
    assert [entry["path"] for entry in artifact["manifest"]["contents"]] == ["config.yaml"]

    # at each of the two validations: the curves image and the histogram of the validation norms,
    # at the step of that validation's k-NN value
    knn_steps = [item["trainer/global_step"] for item in _history(records) if "knn/top1" in item]
    media = [item for item in _history(records) if "training_curves._type" in item]
    assert len(knn_steps) == 2 and [item["trainer/global_step"] for item in media] == knn_steps
    for item in media:
        assert item["training_curves._type"] == "image-file" and item["training_curves.path"].endswith(".png")
        assert item["val/latent_val/norm_hist._type"] == "histogram"
        assert sum(item["val/latent_val/norm_hist.values"]) == 256  # every validation sample's norm
    assert len({item["training_curves.sha256"] for item in media}) == 2  # redrawn, not the same picture
    assert (run_dir / "metrics.csv").exists() and (run_dir / "training_curves.png").exists()

    # validate and analyze join the run's W&B run: same id, files under the run's wandb/, no job type
    main(["validate", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    main(["analyze", "curves", "--runs", str(run_dir)])
    offline = _offline_runs(run_dir)
    # wandb names a folder offline-run-<second>-<id>, with "-1" when two sessions start in the same second
    assert len(offline) == 3 and all(re.search(rf"-{run_id}(-\d+)?$", p.name) for p in offline), offline
    assert not list(run_dir.glob("*/wandb")) and not list(run_dir.glob("*/wandb_run_id"))
    validate, analyze = (read_wandb_records(p / f"run-{run_id}.wandb") for p in offline[1:])
    for joined in (validate, analyze):
        (start,) = [r["run"] for r in joined if r["type"] == "run"]
        assert (start["run_id"], start["run_group"], start["display_name"]) == (run_id, "wd-sweep", run["display_name"])
        assert not start.get("job_type") and joined[-1]["type"] == "exit"
    validated = {key for item in _history(validate) for key in item}
    assert {"validate-knn/top1", "validate-val/latent_val/norm_hist._type"} <= validated
    assert not {"knn/top1", "training_curves._type"} & validated  # never mixed into the training curves
    analyzed = {key for item in _history(analyze) for key in item}
    assert {"analysis/curves/curves._type", "analysis/curves/curves_table._type"} <= analyzed


@pytest.mark.timeout(300)
def test_without_a_wandb_logger_nothing_of_wandb_is_written(tmp_path):
    run_dir = tmp_path / "plain"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--run_dir", str(run_dir)])
    assert (run_dir / "training_curves.png").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb_run_id").exists()
