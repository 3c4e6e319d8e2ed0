"""Sweep files: stable point order, run dirs, the `ssl-norms sweep` runner and the paper's sweep files."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback

from conftest import REPO, metric_values, read_metrics_csv
from ssl_norms.cli import SSLNormsCLI, main, run_lightning_cli
from ssl_norms.data import SSLDataModule
from ssl_norms.methods.base import SSLMethod
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--index", "1-0"], "--index 1-0: a range runs from low to high (e.g. 0-1)"),
        (["--index", ","], "--index names no point"),
        ([], "give one of --list, --count, --index I, --all, --summary (got none)"),
        (["--list", "--all"], "give one of --list, --count, --index I, --all, --summary (got --list --all)"),
        (["--index"], "argument --index: expected at least one argument"),
        (["--list", "--", "--trainer.max_epochs=1", "--bogus"], None),  # words after -- belong to the fits
    ],
)
def test_what_to_run_is_checked_before_anything_runs(args, message, capsys):
    sweep = str(PAPER / "table1_simclr_cifar100.yaml")
    if message is None:
        main(["sweep", sweep, *args])
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 16 and all("--trainer.max_epochs=1 --bogus --run_dir=" in line for line in lines)
        return
    with pytest.raises(SystemExit) as stop:
        main(["sweep", sweep, *args])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("label", ["..", ".", "", "  ", "a/b", "../elsewhere", "..\\x", "-..-"])
def test_a_label_that_would_leave_the_sweep_directory_is_refused(tmp_path, capsys, label):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "config": "a.yaml", "points": [{"label": label, "trainer.max_epochs": 1}]}))
    with pytest.raises(ValueError, match="must name one directory"):
        sweep_points(sweep)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", str(sweep), "--index", "0"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "must name one directory" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_a_sweep_name_that_would_leave_the_runs_root_is_refused(tmp_path, name):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": name, "config": "a.yaml"}))
    with pytest.raises(ValueError, match="needs a 'name'"):
        sweep_points(sweep)


def test_safe_labels_keep_their_run_dirs(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "config": "a.yaml", "points": [{"label": "my label", "trainer.max_epochs": 1}],
                                     "grid": {"data.init_args.root": ["/data/a"]}}))
    assert [p.run_dir for p in sweep_points(sweep)] == [tmp_path / "runs" / "s" / "root=-data-a", tmp_path / "runs" / "s" / "my-label"]


def test_values_reach_the_command_line_as_jsonargparse_reads_them():
    assert cli_value(1e-8) == "1e-08" and cli_value(True) == "true" and cli_value(None) == "null"
    assert cli_value([32, 16]) == "[32,16]" and cli_value("resnet18") == "resnet18"


# ---------------------------------------------------------------------------------------------
# The paper's sweep files: every point of every file is a valid `ssl-norms fit` invocation
# ---------------------------------------------------------------------------------------------


class _StoppedBeforeParsing(Exception):
    """Carries the parser out of an SSLNormsCLI stopped right before it parses its arguments."""


@pytest.fixture(scope="module")
def fit_parser():
    """The real parser of `ssl-norms fit`, built once: SSLNormsCLI (through the same
    ``run_lightning_cli`` the entry point uses) is stopped right before it parses, so nothing is
    instantiated, trained or written."""

    def stop(self, parser, args):
        raise _StoppedBeforeParsing(parser)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SSLNormsCLI, "parse_arguments", stop)
        with pytest.raises(_StoppedBeforeParsing) as stopped:
            run_lightning_cli(["fit"])
    return stopped.value.args[0]


def check_point(parser, point):
    """Parse a sweep point's exact `ssl-norms fit` arguments with the CLI's parser and instantiate
    its model, data module and callbacks without touching data (the model on the meta device, so no
    weights are allocated). Every override must land under its own full key with its own value.
    Raises ArgumentError/ValueError (bad config file, class, option or value) or AssertionError.
    Returns the parsed and the instantiated `fit` configs."""
    cfg = parser.parse_args(point.fit_args(resume=False))
    assert cfg.subcommand == "fit"
    fit = cfg.fit
    assert fit.run_dir == str(point.run_dir)
    for key, value in point.overrides.items():
        if key.endswith("+"):  # appended to a list: the last entry is this value
            appended = fit[key[:-1]][-1]
            assert appended.class_path == value["class_path"], f"{point.label}: {key}"
            assert {k: appended.init_args[k] for k in value.get("init_args", {})} == value.get("init_args", {}), f"{point.label}: {key}"
        else:  # the full key exists (an abbreviated or misspelt key fails here) and holds the value
            assert key in fit, f"{point.label}: override key {key!r} is not an option of ssl-norms fit"
            assert fit[key] == value, f"{point.label}: {key} = {fit[key]!r}, expected {value!r}"
    with torch.device("meta"):
        init = parser.instantiate(cfg).fit
    assert isinstance(init.model, SSLMethod) and isinstance(init.data, SSLDataModule)
    assert all(isinstance(c, Callback) for c in init.trainer.callbacks)
    return fit, init


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_every_point_of_the_paper_sweep_files_parses_and_instantiates(name, fit_parser, capsys):
    points = sweep_points(PAPER / name)
    assert len(points) == PAPER_COUNTS[name]
    assert len({p.run_dir for p in points}) == len(points)
    for point in points:
        for config in point.configs:
            assert Path(config).resolve().is_relative_to(REPO / "configs")
            assert Path(config).is_file(), f"{name} point {point.index} ({point.label}): {config} does not exist"
        fit, init = check_point(fit_parser, point)
        callbacks = {type(c).__name__: c for c in init.trainer.callbacks}
        if point.values.get("intervention") == "gradscale":
            assert callbacks["GradScale"].power == 1.0 and fit.model.init_args.warmup_epochs == 100
            assert fit.model.init_args.lr == pytest.approx(0.3 / 6)
        if _cut_c(point) is not None:
            assert callbacks["CutInit"].c == _cut_c(point)
        else:
            assert "CutInit" not in callbacks
    # and the entry point itself accepts a point's command as printed by `ssl-norms sweep --list`
    with pytest.raises(SystemExit) as stop:
        main([*points[-1].fit_args(), "--print_config"])
    assert stop.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["run_dir"] == str(points[-1].run_dir)


@pytest.mark.parametrize(
    "override, error",
    [
        ({"model.init_args.wieght_decay": 0.1}, ArgumentError),        # misspelt option
        ({"trainer.max_epoch": 3}, AssertionError),                     # abbreviation: not the full key
        ({"data.init_args.imbalance": {"preset": "cifar7"}}, ValueError),  # a value the class rejects
        ({"label": "x", "trainer.callbacks+": {"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"cc": 3}}}, ArgumentError),
        ({"config": "no_such_base.yaml"}, ArgumentError),               # a missing base config
    ],
)
def test_point_check_fails_on_a_wrong_key_value_or_config(tmp_path, fit_parser, override, error):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(yaml.safe_dump({"name": "bad", "config": str(REPO / "configs" / "simclr" / "cifar10.yaml"), "points": [override]}))
    with pytest.raises(error):
        check_point(fit_parser, sweep_points(sweep)[0])


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
    assert first["global_step"] == 4 and first["callbacks"]["CutInit"]["record"] == {"c": 2.0, "global_step": 0, "scope": "all", "bn_lr_scale": False}

    capsys.readouterr()
    main(["sweep", str(sweep), "--index", "1", "--", "--trainer.max_epochs=2"])  # a re-run resumes
    assert "resuming" in capsys.readouterr().out
    again = torch.load(cut.last_checkpoint, weights_only=False)
    assert again["global_step"] == 8 and again["callbacks"]["CutInit"]["record"] == {"c": 2.0, "global_step": 0, "scope": "all", "bn_lr_scale": False}


# ---------------------------------------------------------------------------------------------
# Seeds as an axis and the results table
# ---------------------------------------------------------------------------------------------


def _seed_sweep(path: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "seeds", "config": str(REPO / "configs" / "demo.yaml"),
        "grid": {"model.init_args.lr": [0.1, 0.2], "seed_everything": [0, 1, 2]}, **extra,
    }))
    return path


def test_seed_axis_names_run_dirs_and_groups_points_into_settings(tmp_path, fit_parser):
    points = sweep_points(_seed_sweep(tmp_path / "s.yaml"))
    assert [p.label for p in points[:4]] == ["lr=0.1_seed=0", "lr=0.1_seed=1", "lr=0.1_seed=2", "lr=0.2_seed=0"]
    assert [p.setting for p in points] == ["lr=0.1"] * 3 + ["lr=0.2"] * 3
    assert points[4].run_dir == tmp_path / "runs" / "seeds" / "lr=0.2_seed=1" and points[4].describe() == "lr=0.2 seed=1"
    assert "--seed_everything=2" in points[5].command()
    fit, _ = check_point(fit_parser, points[5])  # the real fit parser takes the seed
    assert fit.seed_everything == 2
    other = tmp_path / "o.yaml"
    other.write_text(yaml.safe_dump({"name": "o", "config": "a.yaml", "grid": {"seed": [0, 1]}}))
    with pytest.raises(ValueError, match="dotted CLI key such as model.init_args.lr, or seed_everything"):
        sweep_points(other)


def _final_best_norm(run_dir: Path) -> tuple[float, float, float]:
    """k-NN at the last validation, best k-NN, and the last epoch's norm/mean_epoch, read straight from metrics.csv."""
    rows = read_metrics_csv(run_dir / "metrics.csv")
    knn = [float(r["knn/top1"]) for r in rows if r.get("knn/top1")]
    norms = [float(r["norm/mean_epoch"]) for r in rows if r.get("norm/mean_epoch")]
    return knn[-1], max(knn), norms[-1]


def test_summary_of_a_partly_run_sweep_marks_missing_points_and_averages_seeds(tmp_path, capsys):
    from test_analysis import write_run

    sweep = _seed_sweep(tmp_path / "s.yaml")
    points = sweep_points(sweep)
    decays = {0: 0.01, 1: 0.02, 2: 0.04}  # three seeds of lr=0.1; lr=0.2 not run at all
    for point in points[:3]:
        write_run(point.run_dir, epochs=3, steps_per_epoch=2, weight_decay=decays[point.values["seed_everything"]], opposite=0.1)
    main(["sweep", str(sweep), "--summary"])
    out = capsys.readouterr().out
    finals = [1 + 2 * decays[s] * 100 + 0.5 for s in range(3)]  # write_run: mean of the last epoch's two steps
    mean, std = sum(finals) / 3, float(torch.tensor(finals).std())
    assert f"| lr=0.1 | 3/3 | 3 | 0.3000 +- 0.0000 | 0.3000 +- 0.0000 | {mean:.4f} +- {std:.4f} |" in out
    assert "| lr=0.2 | 0/3 | - | missing | missing | missing |" in out
    folder = tmp_path / "runs" / "seeds"
    assert f"table: {folder / 'summary.csv'} {folder / 'summary.md'}" in out
    rows = read_metrics_csv(folder / "summary.csv")
    assert rows[0]["norm/mean final"] and float(rows[0]["norm/mean final"]) == pytest.approx(mean)
    assert float(rows[0]["norm/mean final std"]) == pytest.approx(std) and rows[0]["runs found"] == "3"
    assert rows[1]["runs found"] == "0" and rows[1]["knn/top1 final"] == ""


def test_tiny_sweep_with_seeds_ends_with_its_results_table(tmp_path, capsys):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "tiny-seeds",
        "config": str(REPO / "configs" / "demo.yaml"),
        "fixed": {
            "data.init_args.train_samples": 256, "data.init_args.val_samples": 128, "data.init_args.batch_size": 64,
            "model.init_args.mlp_hidden_dims": [32], "model.init_args.projector_dims": [32, 16],
            "trainer.max_epochs": 2, "trainer.log_every_n_steps": 2,
        },
        "grid": {"seed_everything": [0, 1]},
        "points": [{"label": "cut2", "trainer.callbacks+": {"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 2}}}],
    }))
    main(["sweep", str(sweep), "--index", "0-1"])  # cut2 not run yet
    capsys.readouterr()
    main(["sweep", str(sweep), "--summary"])
    assert "| cut2 | 0/1 | - | missing | missing | missing |" in capsys.readouterr().out
    main(["sweep", str(sweep), "--all"])  # runs cut2 (the others resume at their end) and ends with the table
    out = capsys.readouterr().out
    rows = {row["setting"]: row for row in read_metrics_csv(tmp_path / "runs" / "tiny-seeds" / "summary.csv")}
    assert list(rows) == ["base", "cut2"] and out.rstrip().splitlines()[-1].startswith("table: ")
    for setting, count in (("base", 2), ("cut2", 1)):
        found = [_final_best_norm(p.run_dir) for p in sweep_points(sweep) if p.setting == setting]
        assert len(found) == count and len(set(found)) == count  # two seeds, two results
        for column, values in zip(("knn/top1 final", "knn/top1 best", "norm/mean final"), zip(*found)):
            assert float(rows[setting][column]) == pytest.approx(sum(values) / count)
            std = rows[setting][f"{column} std"]
            assert float(std) == pytest.approx(float(torch.tensor(values).std())) if count > 1 else std == ""
    cells = f"{float(rows['base']['knn/top1 final']):.4f} +- {float(rows['base']['knn/top1 final std']):.4f}"
    assert f"| base | 2/2 | 2 | {cells} |" in out and f"| cut2 | 1/1 | 2 | {float(rows['cut2']['knn/top1 final']):.4f} |" in out
