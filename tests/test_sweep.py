"""Sweep files: stable point order, run dirs, the `ssl-norms sweep` runner and the paper's sweep files."""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, metric_values
from ssl_norms.cli import main
from ssl_norms.sweep import cli_value, sweep_points

PAPER = REPO / "configs" / "paper"
PAPER_COUNTS = {
    "fig5_weight_decay.yaml": 6,
    "table1_simclr_cifar100.yaml": 16,
    "table1_simsiam_imagenet100.yaml": 16,
    "table2_3_simclr.yaml": 18,
    "table2_3_simsiam.yaml": 12,
    "tableS2_simsiam_batch.yaml": 6,
}


def _cut_c(point) -> float | None:
    callback = point.overrides.get("trainer.callbacks+")
    return callback["init_args"]["c"] if callback and callback["class_path"].endswith("CutInit") else None


def test_table1_simclr_grid_has_16_points_in_stable_order(tmp_path):
    points = sweep_points(PAPER / "table1_simclr_cifar100.yaml")
    assert len(points) == 16 and [p.index for p in points] == list(range(16))
    cuts, decays = [1, 2, 4, 8], [1e-8, 1e-6, 5e-6, 1e-5]
    for point in points:  # first axis (cut) varies slowest
        assert _cut_c(point) == cuts[point.index // 4]
        assert point.overrides["model.init_args.weight_decay"] == decays[point.index % 4]
        assert point.overrides["trainer.max_epochs"] == 100
    assert points[6].label == "c2_weight_decay=5e-06"
    assert points[6].run_dir == tmp_path / "runs" / "table1-simclr-cifar100" / "c2_weight_decay=5e-06"  # $SSL_NORMS_RUNS
    assert points[6].describe() == "cut=c2 weight_decay=5e-06"
    assert sweep_points(PAPER / "table1_simclr_cifar100.yaml", runs_root="elsewhere")[6].run_dir == Path("elsewhere/table1-simclr-cifar100/c2_weight_decay=5e-06")
    assert [p.label for p in points] == [p.label for p in sweep_points(PAPER / "table1_simclr_cifar100.yaml")]


def test_command_is_the_exact_fit_invocation_and_resumes_when_last_ckpt_exists():
    point = sweep_points(PAPER / "table1_simclr_cifar100.yaml")[5]
    command = point.command(["--trainer.max_epochs=2"])
    assert command[:4] == ["ssl-norms", "fit", "--config", str(REPO / "configs" / "simclr" / "cifar100.yaml")]
    callback = json.loads(next(a for a in command if a.startswith("--trainer.callbacks+=")).split("=", 1)[1])
    assert callback == {"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 2}}
    assert "--model.init_args.weight_decay=1e-06" in command
    assert command.index("--trainer.max_epochs=100") < command.index("--trainer.max_epochs=2")  # extra args win
    assert command[-1] == f"--run_dir={point.run_dir}" and "--ckpt_path=last" not in command
    point.last_checkpoint.parent.mkdir(parents=True)
    point.last_checkpoint.touch()
    assert point.command()[-1] == "--ckpt_path=last"


def test_list_count_and_dry_run(capsys):
    sweep = str(PAPER / "table1_simclr_cifar100.yaml")
    main(["sweep", sweep, "--list"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 16
    index, values, command = lines[9].split("\t")
    assert index == "9" and values == "cut=c4 weight_decay=1e-06"
    assert shlex.split(command) == sweep_points(sweep)[9].command()
    main(["sweep", sweep, "--count"])
    assert capsys.readouterr().out.strip() == "16"
    main(["sweep", sweep, "--index", "3,5-6", "--dry-run", "--", "--trainer.max_epochs=1"])
    commands = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [c[-1] for c in commands] == [f"--run_dir={sweep_points(sweep)[i].run_dir}" for i in (3, 5, 6)]
    assert all("--trainer.max_epochs=1" in c for c in commands)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"config": "a.yaml"}, "needs a 'name'"),
        ({"name": "bad name!", "config": "a.yaml"}, "needs a 'name'"),
        ({"name": "s", "config": "a.yaml", "gird": {}}, "unknown key"),
        ({"name": "s", "config": "a.yaml", "grid": {"model.init_args.lr": []}}, "non-empty list"),
        ({"name": "s", "config": "a.yaml", "grid": {"lr": [0.1, 0.2]}}, "dotted CLI key"),
        ({"name": "s", "config": "a.yaml", "grid": {"cb": [{"trainer.callbacks+": {"class_path": "X"}}]}}, "give it a 'label'"),
        ({"name": "s", "config": "a.yaml", "grid": {"a": [{"label": "x"}, {"label": "x"}]}}, "share the run dir label"),
        ({"name": "s", "grid": {"model.init_args.lr": [0.1]}}, "has no config"),
    ],
)
def test_bad_sweep_files_give_one_line_errors(tmp_path, capsys, spec, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        sweep_points(path)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", str(path), "--list"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and message in err
    assert len(err.splitlines()) == 1


def test_index_out_of_range_and_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", str(PAPER / "table1_simclr_cifar100.yaml"), "--index", "16"])
    assert "out of range: the sweep has 16 points (0-15)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", str(tmp_path / "nope.yaml"), "--list"])
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_values_reach_the_command_line_as_jsonargparse_reads_them():
    assert cli_value(1e-8) == "1e-08" and cli_value(True) == "true" and cli_value(None) == "null"
    assert cli_value([32, 16]) == "[32,16]" and cli_value("resnet18") == "resnet18"


# ---------------------------------------------------------------------------------------------
# The paper's sweep files
# ---------------------------------------------------------------------------------------------


def _importable(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _covering_points(points):
    """A few of ``points`` that together use every value of every axis they contain."""
    axes = list(points[0].values)
    chosen, seen = [], {a: set() for a in axes}
    for point in points:
        if any(str(point.values[a]) not in seen[a] for a in axes):
            chosen.append(point)
            for a in axes:
                seen[a].add(str(point.values[a]))
    return chosen


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_sweep_files_list_and_parse(name, capsys):
    points = sweep_points(PAPER / name)
    assert len(points) == PAPER_COUNTS[name]
    assert len({p.run_dir for p in points}) == len(points)
    for point in points:
        assert all(Path(c).resolve().is_relative_to(REPO / "configs") for c in point.configs)
    ready = []
    for point in points:  # points whose configs and classes exist already (others land in parallel)
        if not all(Path(c).is_file() for c in point.configs):
            continue
        config = yaml.safe_load(Path(point.configs[0]).read_text())
        if all(_importable(config[k]["class_path"]) for k in ("model", "data")):
            ready.append(point)
    ready = _covering_points(ready) if ready else []
    if not ready:
        pytest.skip(f"{name}: no base config or class of its points exists yet")
    for point in ready:  # the real CLI parser accepts every override of the point
        with pytest.raises(SystemExit) as stop:
            main([*point.fit_args(), "--print_config"])
        assert stop.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)
        callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in printed["trainer"]["callbacks"]]
        if point.values.get("intervention") == "gradscale":
            assert "GradScale" in callbacks and printed["model"]["init_args"]["warmup_epochs"] == 100
            assert printed["model"]["init_args"]["lr"] == pytest.approx(0.3 / 6)
        if _cut_c(point) is not None:
            assert "CutInit" in callbacks


# ---------------------------------------------------------------------------------------------
# A tiny sweep, run end to end
# ---------------------------------------------------------------------------------------------


def test_tiny_sweep_runs_two_points_and_resumes(tmp_path, capsys):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "tiny",
        "config": str(REPO / "configs" / "demo.yaml"),
        "fixed": {
            "data.init_args.train_samples": 256, "data.init_args.val_samples": 128, "data.init_args.batch_size": 64,
            "model.init_args.mlp_hidden_dims": [32], "model.init_args.projector_dims": [32, 16],
            "trainer.max_epochs": 1, "trainer.log_every_n_steps": 2,
        },
        "grid": {"intervention": [
            {"label": "default"},
            {"label": "cut2", "trainer.callbacks+": {"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 2}}},
        ]},
    }))
    main(["sweep", str(sweep), "--all"])
    default, cut = sweep_points(sweep)
    assert default.run_dir == tmp_path / "runs" / "tiny" / "default"
    for point in (default, cut):
        assert point.last_checkpoint.exists()
        assert metric_values(point.run_dir / "metrics.csv", "knn/top1")
    assert "cut_init/c: 2.0" in (cut.run_dir / "hparams.yaml").read_text()
    assert "cut_init" not in (default.run_dir / "hparams.yaml").read_text()
    first = torch.load(cut.last_checkpoint, weights_only=False)
    assert first["global_step"] == 4 and first["callbacks"]["CutInit"]["record"] == {"c": 2.0, "global_step": 0}

    capsys.readouterr()
    main(["sweep", str(sweep), "--index", "1", "--", "--trainer.max_epochs=2"])  # a re-run resumes
    assert "resuming" in capsys.readouterr().out
    again = torch.load(cut.last_checkpoint, weights_only=False)
    assert again["global_step"] == 8 and again["callbacks"]["CutInit"]["record"] == {"c": 2.0, "global_step": 0}
