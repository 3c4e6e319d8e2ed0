"""SLURM without SLURM: the sbatch templates, the dry-run of an array over a sweep file, the
command each array task runs, and a requeue that resumes the same run (fake scontrol)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from ssl_norms import slurm
from ssl_norms.cli import main
from ssl_norms.sweep import sweep_points

TABLE1 = REPO / "configs" / "paper" / "table1_simclr_cifar100.yaml"
TEMPLATES = ["single_node.sbatch", "multi_node.sbatch", "array.sbatch"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_run_one_srun_task_per_gpu_with_requeue_signal(name):
    template = slurm.TEMPLATES / name
    directives = slurm.sbatch_directives(template)
    assert directives["signal"] == "SIGUSR1@90"
    assert "requeue" in directives
    gpus = int(directives["gres"].rsplit(":", 1)[-1])
    assert int(directives["ntasks-per-node"]) == gpus, "one task (DDP rank) per GPU"
    srun = [line for line in template.read_text().splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and srun[0].startswith("srun python -m ssl_norms.main slurm task")
    assert os.access(template, os.R_OK)


def _dry_run_lines(capsys, argv: list[str]) -> list[str]:
    main(argv)
    return capsys.readouterr().out.splitlines()


def test_table1_array_dry_run_prints_16_commands_in_grid_order(capsys):
    lines = _dry_run_lines(capsys, ["slurm", "array", str(TABLE1), "--dry-run"])
    assert lines[0].startswith("# sbatch --array=0-15 ") and lines[0].endswith(f"array.sbatch {TABLE1}")
    commands = [line for line in lines if line.startswith("[")]
    assert len(commands) == 16
    cuts, decays = [1, 2, 4, 8], [1e-8, 1e-6, 5e-6, 1e-5]
    for index, line in enumerate(commands):
        match = re.match(r"\[(\d+)\] (.*?): (ssl-norms fit .*)$", line)
        assert match and int(match[1]) == index
        argv = shlex.split(match[3])
        c, wd = cuts[index // 4], decays[index % 4]  # first grid axis (cut) varies slowest
        appended = [json.loads(a.split("=", 1)[1]) for a in argv if a.startswith("--trainer.callbacks+=")]
        assert appended == [{"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": c}}]
        decay_args = [float(a.split("=", 1)[1]) for a in argv if a.startswith("--model.init_args.weight_decay=")]
        assert decay_args == [wd]
        runs = Path(os.environ["SSL_NORMS_RUNS"])  # the tests' runs root (conftest)
        assert f"--run_dir={runs / 'table1-simclr-cifar100' / f'c{c}_weight_decay={wd:g}'}" in argv
        # every task runs under SLURM's DDP/requeue config, one GPU each (the array template's layout)
        assert argv[argv.index("--config", argv.index("--model.init_args.weight_decay=" + f"{wd:g}")) + 1] == str(slurm.SLURM_CONFIG)
        assert argv[-3:] == ["--trainer.num_nodes=1", "--trainer.devices=1", argv[-1]]
        assert argv[2:4] == ["--config", str(REPO / "configs" / "simclr" / "cifar100.yaml")]


@pytest.mark.parametrize("index", [0, 5, 15])
def test_each_array_index_runs_its_sweep_point(index, capsys, monkeypatch):
    """What `srun ... slurm task SWEEP` runs in array task `index` is the dry-run's line `index`."""
    printed = _dry_run_lines(capsys, ["slurm", "array", str(TABLE1), "--dry-run"])
    expected = shlex.split(printed[2 + index].split(": ", 1)[1])[1:]
    ran = []
    for name, value in {"SLURM_ARRAY_TASK_ID": str(index), "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1",
                        "SLURM_JOB_ID": "77", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(name, value)
    slurm.task(str(TABLE1), run_cli=ran.append)
    assert ran == [expected]
    assert ran[0][:-5] == sweep_points(TABLE1)[index].fit_args()[:-1]  # the point's own args, then the SLURM ones


def test_multi_node_dry_run_takes_the_layout_from_the_template(capsys):
    lines = _dry_run_lines(capsys, ["slurm", "fit", "--nodes", "2", "--dry-run", "--", "--config", "configs/simclr/cifar10.yaml"])
    assert lines[0].startswith("# sbatch --nodes=2 ") and "multi_node.sbatch" in lines[0]
    argv = shlex.split(lines[-1])
    assert argv[:4] == ["ssl-norms", "fit", "--config", "configs/simclr/cifar10.yaml"]
    assert argv[-2:] == ["--trainer.num_nodes=2", "--trainer.devices=4"]


def test_slurm_config_turns_on_lightning_auto_requeue_and_sync_batchnorm():
    config = yaml.safe_load(slurm.SLURM_CONFIG.read_text())["trainer"]
    assert config["strategy"] == "ddp" and config["sync_batchnorm"] is True
    (plugin,) = config["plugins"]
    assert plugin["class_path"] == "lightning.pytorch.plugins.environments.SLURMEnvironment"
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    environment = SLURMEnvironment(**{**plugin["init_args"], "requeue_signal": signal.Signals[plugin["init_args"]["requeue_signal"]]})
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["slurm", "array", str(TABLE1)], "sbatch is not on PATH"),
        (["slurm", "array", "no/such/sweep.yaml", "--dry-run"], "no/such/sweep.yaml does not exist"),
        (["slurm", "fit", "--template", "no/such.sbatch", "--dry-run"], "no/such.sbatch does not exist"),
    ],
)
def test_bad_slurm_input_is_a_one_line_error(argv, expected, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert expected in capsys.readouterr().err


def test_array_index_out_of_range_names_the_sweep_size(monkeypatch):
    for name, value in {"SLURM_ARRAY_TASK_ID": "16", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="has 16 points"):
        slurm.task(str(TABLE1), run_cli=pytest.fail)


def test_requeued_job_resumes_its_run_with_the_same_wandb_id_and_no_second_cut(tmp_path):
    """A SLURM job (fake environment) gets SIGUSR1: Lightning saves hpc_ckpt_1.ckpt and calls
    `scontrol requeue`; the requeued job (same job id, SLURM_RESTART_COUNT=1, same command, no
    --ckpt_path) resumes in the same run dir, continues the same W&B run and does not cut again."""
    from test_resume import FIT, fake_slurm, kill_at

    env, scontrol_log = fake_slurm(tmp_path, job_id="4242")
    args = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.callbacks+=ssl_norms.callbacks.CutInit", "--trainer.callbacks.c=2"]
    assert kill_at(tmp_path / "job", "mid-epoch", signal.SIGUSR1, env=env, args=args) == 0
    assert scontrol_log.read_text().split() == ["requeue", "4242"]
    run_dir = tmp_path / "runs" / "simclr-syntheticlatentclasses" / "slurm-4242"
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["callbacks"]["CutInit"]["record"]["global_step"] == 0  # cut once, at the fresh start

    restarted = subprocess.run([*FIT, *args], env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                               text=True, timeout=300, cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert f"SLURM restart 1: resuming {run_dir} from hpc_ckpt_1.ckpt" in restarted.stderr
    assert "not cutting again" in restarted.stderr + restarted.stdout
    assert [p.name for p in run_dir.parent.iterdir()] == ["slurm-4242"]  # the same run dir, no second one
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 24 and final["callbacks"]["CutInit"]["record"] == hpc["callbacks"]["CutInit"]["record"]
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert len(wandb_runs) == 2 and all(p.name.endswith(run_id) for p in wandb_runs)


@pytest.mark.timeout(300)
def test_the_templates_live_in_the_top_level_slurm_folder():
    assert slurm.TEMPLATES == REPO / "slurm" and slurm.SLURM_CONFIG == REPO / "slurm" / "slurm.yaml"
    assert sorted(p.name for p in slurm.TEMPLATES.glob("*.sbatch")) == sorted(TEMPLATES)


def test_the_wheel_lists_every_subpackage():
    """pyproject.toml lists the packages by hand (slurm/ is mapped into the wheel): none may be missing."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = [".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ssl_norms").rglob("__init__.py")]
    assert sorted(listed) == sorted([*found, "ssl_norms.sbatch"])


def test_a_non_editable_install_submits_with_its_own_templates(tmp_path):
    """`ssl-norms slurm` from a built wheel, outside the repository: every file the printed commands
    name (the sbatch template, the SLURM config every task adds) comes from the installed package."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "ssl_norms", source / "ssl_norms", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "slurm", source / "slurm")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    site = tmp_path / "site"
    (wheel,) = (tmp_path / "dist").glob("ssl_norms-*.whl")
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "base.yaml").write_text("seed_everything: 0\n")
    (work / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "config": "base.yaml", "grid": {"model.init_args.lr": [0.1, 0.2]}}))
    # the command layer directly (the LightningCLI entry point adds only import time here)
    script = ("from ssl_norms.commands import run_command\n"
              "run_command('slurm', ['array', 'sweep.yaml', '--dry-run'], run_cli=None)\n"
              "run_command('slurm', ['fit', '--dry-run', '--', '--config', 'base.yaml'], run_cli=None)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=work,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# sbatch --array=0-1 ") and lines[-1].startswith("ssl-norms fit --config base.yaml")
    words = [w for line in lines for w in shlex.split(line.lstrip("#[0123456789] "))]
    named = [Path(w) for w in words if w.endswith((".sbatch", "slurm.yaml"))]
    assert len(named) == 2 + 2 + 1  # two templates (array, single node), the SLURM config of each point and of the fit
    for path in named:
        assert path.is_file() and path.resolve().is_relative_to(site), path
    assert (site / "ssl_norms" / "sbatch" / "multi_node.sbatch").is_file()


SBATCH_OPTIONS = ["--partition", "gpu-long", "--account", "lab42", "--time", "2-00:00:00", "--gres", "gpu:a100:{gpus}",
                  "--mem", "128G", "--qos", "high"]


def _fake_sbatch(tmp_path: Path, monkeypatch) -> Path:
    """An ``sbatch`` on PATH that records its arguments, one per line."""
    log = tmp_path / "sbatch.args"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {shlex.quote(str(log))}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.parametrize("argv, template, gpus", [
    (["slurm", "array", str(TABLE1)], "array.sbatch", 1),
    (["slurm", "fit", "--nodes", "2"], "multi_node.sbatch", 4),
])
def test_sbatch_options_reach_sbatch_before_the_template_which_stays_unedited(argv, template, gpus, tmp_path, monkeypatch, capsys):
    log = _fake_sbatch(tmp_path, monkeypatch)
    before = {p.name: p.read_bytes() for p in slurm.TEMPLATES.iterdir()}
    options = [word.format(gpus=gpus) for word in SBATCH_OPTIONS]
    with pytest.raises(SystemExit) as stop:
        main([*argv, *options, "--", "--trainer.max_epochs=3"])
    assert stop.value.code == 0
    submitted = log.read_text().splitlines()
    script = next(i for i, word in enumerate(submitted) if word.endswith(template))
    expected = [f"--{key[2:]}={value}" for key, value in zip(options[::2], options[1::2])]
    assert submitted[1:script] == expected  # options before the script: sbatch would pass later ones to the script
    assert submitted[script + 1:][-1] == "--trainer.max_epochs=3"
    assert {p.name: p.read_bytes() for p in slurm.TEMPLATES.iterdir()} == before
    main([*argv, *options, "--dry-run"])  # the dry run prints the same sbatch command
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"# sbatch {submitted[0]} {' '.join(expected)} ")
    if argv[1] == "array":  # and how to get the results table once the jobs end
        assert printed[-1] == f"# results table of the finished points: ssl-norms sweep {TABLE1} --summary"


def test_a_gres_gpu_count_that_does_not_match_the_tasks_per_node_is_refused(tmp_path, monkeypatch, capsys):
    log = _fake_sbatch(tmp_path, monkeypatch)
    for argv in (["slurm", "array", str(TABLE1), "--gres", "gpu:2"], ["slurm", "fit", "--gres", "gpu:v100:8", "--", "--config", "x.yaml"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and "GPUs per node but the template starts" in err, err
    assert not log.exists()
