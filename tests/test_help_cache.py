"""fit/validate/test/predict answer --help and mistyped options from the help their parser printed
before (ssl_norms.help_cache, ssl_norms.option_check), byte for byte what the parser prints, without
importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import ArgumentError
from typing import Literal, Optional, Union

import pytest

from conftest import REPO
from ssl_norms import help_cache, option_check

HEAVY = ("torch", "lightning", "torchmetrics", "torchvision")


def run(words: list[str], cache, cwd, enabled: bool = True, columns: int = 100) -> subprocess.CompletedProcess:
    """``ssl-norms WORDS`` in a new process; its last stdout line lists the heavy modules imported."""
    script = (
        "import sys\nfrom ssl_norms.main import main\n"
        f"try:\n    main({words!r})\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        f"print('heavy:', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "SSL_NORMS_CACHE": str(cache), "SSL_NORMS_HELP_CACHE": "1" if enabled else "0", "COLUMNS": str(columns),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_and_typos_come_from_the_parser_once_then_without_torch(tmp_path):
    cache = tmp_path / "cache"
    built = run(["fit", "--help"], cache, tmp_path, enabled=False)
    assert "--trainer.max_epochs" in built.stdout and not (cache / "cli-help").exists()
    parser_help = built.stdout.rsplit("exit 0\n", 1)[0]

    # a run's parser (here one refusing a value) keeps the help it was built with
    refused = run(["fit", "--trainer.max_epochs=x"], cache, tmp_path)
    assert refused.stderr.strip().endswith("--trainer.max_epochs: Expected a <class 'int'> (see `ssl-norms fit --help`)")
    assert sorted(path.suffix for path in (cache / "cli-help").iterdir()) == [".options", ".txt"]

    answered = run(["fit", "--help"], cache, tmp_path)
    assert answered.stdout.splitlines()[-1] == "heavy: []"
    assert answered.stdout.rsplit("heavy:", 1)[0] == parser_help

    typos = {
        "--trainer.max_epochs=x": "--trainer.max_epochs: Expected a <class 'int'>",  # as the refused run above said
        "--trainer.max_epocs 3": "Trainer has no option 'max_epocs' (did you mean 'max_epochs'?)",
        "--trainer.max_epochs 2 --trainer.fast_dev_rn=1": "Trainer has no option 'fast_dev_rn' (did you mean 'fast_dev_run'?)",
        "--sed_everything 1": "unrecognized arguments: --sed_everything 1",
        "--foo 1 2 --bar --trainer.max_epochs -1": "unrecognized arguments: --foo 1 2 --bar",
    }
    for words, message in typos.items():
        fast = run(["fit", *words.split()], cache, tmp_path)
        assert fast.stdout.splitlines()[-2:] == ["exit 2", "heavy: []"], fast.stdout + fast.stderr
        assert fast.stderr == f"ssl-norms: error: {message} (see `ssl-norms fit --help`)\n"
    # the parser itself says the same
    slow = run(["fit", "--sed_everything", "1"], cache, tmp_path, enabled=False)
    assert slow.stderr == "ssl-norms: error: unrecognized arguments: --sed_everything 1 (see `ssl-norms fit --help`)\n"
    # a method's option, the method set by the config a config builds on
    config = str(REPO / "configs" / "simclr" / "cifar10.yaml")
    typo = ["fit", "--config", config, "--model.init_args.temprature", "0.3"]
    fast, slow = run(typo, cache, tmp_path), run(typo, cache, tmp_path, enabled=False)
    assert fast.stdout.splitlines()[-2:] == ["exit 2", "heavy: []"]
    assert fast.stderr == slow.stderr == (
        "ssl-norms: error: --model: SimCLR has no option 'temprature' (did you mean 'temperature'?) (see `ssl-norms fit --help`)\n")
    # a terminal of another width: the help is built for it, the options known whatever the width
    wide = run(["fit", "--trainer.max_epocs", "3"], cache, tmp_path, columns=171)
    assert wide.stdout.splitlines()[-2:] == ["exit 2", "heavy: []"]
    assert "max_epochs" in wide.stderr


KNOWN = {"--trainer.max_epochs", "--trainer.callbacks", "--seed_everything", "--model", "--model.help", "--config", "-c", "--help"}


@pytest.mark.parametrize("words", [
    ["--model.temprature", "3"],  # a model's options depend on its class: the parser decides
    ["--trainer.max_epo", "2"],  # argparse takes an abbreviation
    ["--trainer.callbacks+=ssl_norms.callbacks.NormMonitor"],
    ["--trainer.logger.init_args.project", "x"],
    ["-x"],  # an unknown short flag: the parser's word
    ["--", "--foo"],
    ["--seed_everything", "1", "-c", "a.yaml"],
])
def test_words_whose_meaning_only_the_parser_knows_are_left_to_it(words):
    option_check.check_options(words, KNOWN)  # no error


def test_an_unknown_option_is_refused_as_the_parser_refuses_it():
    with pytest.raises(ArgumentError, match=r"^unrecognized arguments: --sed 1 --x$"):
        option_check.check_options(["--sed", "1", "--model", "SimCLR", "--x"], KNOWN)
    with pytest.raises(ArgumentError, match=r"^Trainer has no option 'max_epocs' \(did you mean 'max_epochs'\?\)$"):
        option_check.check_options(["--trainer.max_epocs=3"], KNOWN)


def test_the_key_follows_the_files_the_words_name_and_theirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inner.yaml").write_text("temperature: 0.1\n")
    (tmp_path / "outer.yaml").write_text("model:\n  init_args: inner.yaml\n")
    words = ["fit", "--config", "outer.yaml", "--help"]
    first = help_cache._key(words)
    assert help_cache._key(words) == first
    (tmp_path / "inner.yaml").write_text("temperature: 0.2\n")
    second = help_cache._key(words)
    assert second != first
    (tmp_path / "outer.yaml").write_text("model:\n  init_args: inner.yaml\n# edited\n")
    assert help_cache._key(words) not in (first, second)
    monkeypatch.setenv("COLUMNS", "171")
    assert help_cache._key(words) != help_cache._key(["fit", "--help"])


def test_only_a_help_that_ended_well_is_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path))
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "1")
    for code, kept in ((2, None), (0, "usage: fit\n")):
        with pytest.raises(SystemExit), help_cache.recording(["fit", "--help"]):
            print("usage: fit")
            raise SystemExit(code)
        assert help_cache.stored(["fit", "--help"]) == kept
    assert capsys.readouterr().out == "usage: fit\nusage: fit\n"  # printed as it is recorded


CLASSES = {
    "model": {"SimCLR": ["lr", "temperature"], "ssl_norms.methods.SimCLR": ["lr", "temperature"], "SimSiam": ["lr"]},
    "data": {"ssl_norms.data.CIFAR10DataModule": ["batch_size"]},
}


def test_a_class_option_is_checked_against_the_class_set_at_that_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.yaml").write_text("class_path: ssl_norms.data.CIFAR10DataModule\ninit_args: {batch_size: 8}\n")
    (tmp_path / "base.yaml").write_text("model:\n  class_path: ssl_norms.methods.SimCLR\ndata: data.yaml\n")
    (tmp_path / "child.yaml").write_text("config: base.yaml\nmodel:\n  init_args: {lr: 0.1}\n")
    check = option_check.check_class_options
    check(["--config", "child.yaml", "--model.init_args.temperature", "0.2", "--data.batch_size", "4"], CLASSES)
    with pytest.raises(ArgumentError, match=r"^--model: SimCLR has no option 'temprature' \(did you mean 'temperature'\?\)$"):
        check(["-c", "child.yaml", "--model.temprature", "0.2"], CLASSES)
    with pytest.raises(ArgumentError, match=r"^--data: CIFAR10DataModule has no option 'batch' \(did you mean 'batch_size'\?\)$"):
        check(["--config=child.yaml", "--data.init_args.batch=4"], CLASSES)
    with pytest.raises(ArgumentError, match=r"^--model: SimSiam has no option 'temperature' \(its options: --model.help SimSiam\)$"):
        check(["--config", "child.yaml", "--model", "SimSiam", "--model.temperature", "0.2"], CLASSES)
    check(["--model.temprature", "0.2"], CLASSES)  # no class given: the parser's word
    check(["--model", "my_project.MyMethod", "--model.anything", "1"], CLASSES)  # not a project class
    check(["--model", "{class_path: SimCLR}", "--model.temprature", "1"], CLASSES)  # inline YAML: the parser reads it
    check(["--config", "child.yaml", "--model.init_args.backbone_kwargs.depth", "2"], CLASSES)  # nested deeper
    check(["--config", "missing.yaml", "--model.temprature", "1"], CLASSES)


def test_every_option_the_repos_configs_give_a_method_or_data_module_passes_the_check():
    from ssl_norms.bad_input import project_class_options

    classes = project_class_options()
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    checked = 0
    for config in configs:
        found = {"model": None, "data": None}
        option_check.classes_of_config(config, found)
        words = ["--config", str(config)]
        for kind, block in _blocks(config):
            words += [f"--{kind}.init_args.{key}" for key in block]
            checked += len(block) if found[kind] in classes[kind] else 0
        option_check.check_class_options(words, classes)
    assert checked > 50  # 90 when written


def _blocks(config):
    """(kind, init_args) of the model/data blocks a config file writes itself."""
    import yaml

    content = yaml.safe_load(config.read_text()) or {}
    if set(content) <= {"class_path", "init_args", "dict_kwargs"}:
        return []
    return [(kind, content[kind].get("init_args") or {}) for kind in ("model", "data") if isinstance(content.get(kind), dict)]


def small_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="fit", exit_on_error=False)
    parser.add_argument("--trainer.max_epochs", type=Optional[int])
    parser.add_argument("--trainer.precision", type=Union[Literal[16, 32], Literal["bf16-mixed", "32-true"], None])
    parser.add_argument("--trainer.limit_train_batches", type=Union[int, float, None])
    parser.add_argument("--trainer.logger", type=Union[bool, list, None])  # not a plain type: left to the parser
    return parser


def test_a_damaged_help_file_is_a_miss_and_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path))
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "1")
    help_cache.keep_help("fit", small_parser())
    assert "--trainer.max_epochs" in help_cache.answer(["fit", "--help"])
    with pytest.raises(ArgumentError):
        help_cache.answer(["fit", "--trainer.max_epocs", "3"])
    for path in (tmp_path / "cli-help").iterdir():  # a disk error: bytes of the same length
        path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + b"x" * (path.stat().st_size % 256))
    assert help_cache.answer(["fit", "--help"]) is None
    assert help_cache.answer(["fit", "--trainer.max_epocs", "3"]) is None  # the parser will say it
    help_cache.keep_help("fit", small_parser())
    assert "--trainer.max_epochs" in help_cache.answer(["fit", "--help"])
    with pytest.raises(ArgumentError):
        help_cache.answer(["fit", "--trainer.max_epocs", "3"])


@pytest.mark.parametrize("words", [
    ["--trainer.max_epochs", "5"], ["--trainer.max_epochs=null"], ["--trainer.max_epochs", "-1"], ["--trainer.precision", "16"],
    ["--trainer.precision=bf16-mixed"], ["--trainer.limit_train_batches", "0.5"], ["--trainer.logger", "anything"],
    ["--trainer.max_epochs"], ["--trainer.max_epochs", "--trainer.precision", "16"],  # a missing value: the parser's word
])
def test_values_the_option_takes_pass(words, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path))
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "1")
    help_cache.keep_help("fit", small_parser())
    assert help_cache.answer(["fit", *words]) is None


@pytest.mark.parametrize("words, message", [
    (["--trainer.max_epochs=x"], "--trainer.max_epochs: Expected a <class 'int'>"),
    (["--trainer.max_epochs", "1e3"], "--trainer.max_epochs: Expected a <class 'int'>. Got value: 1000.0"),
    (["--trainer.precision", "bf17"], "--trainer.precision: expected int or one of 'bf16-mixed', '32-true', got 'bf17'"),
    (["--trainer.limit_train_batches", "inf", "--foo"], "--trainer.limit_train_batches: expected int or float, got 'inf'"),
])
def test_a_value_the_option_refuses_is_refused_as_the_parser_refuses_it(words, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path))
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "1")
    help_cache.keep_help("fit", small_parser())
    with pytest.raises(ArgumentError) as refused:
        help_cache.answer(["fit", *words])
    assert str(refused.value) == message


def test_plain_types_survive_their_json_form():
    for hint in (int, Optional[int], Union[int, bool], Union[bool, Literal["warn"], None], str | None,
                 Union[Literal[64, 32], Literal["bf16"], None]):
        assert option_check.type_of(json.loads(json.dumps(option_check.describe_type(hint)))) == hint
    assert option_check.describe_type(Union[list[int], str, int]) is None


def _documented_command_lines() -> list[list[str]]:
    """Every fit/validate/test/predict command line the repo's Markdown shows (continued lines joined)."""
    import re
    import shlex

    lines = []
    for doc in [*REPO.glob("*.md"), *(REPO / "configs").rglob("*.md"), *(REPO / "benchmarks").rglob("*.md")]:
        text = doc.read_text().replace("\\\n", " ")
        for match in re.finditer(r"ssl-norms ((?:fit|validate|test|predict)\b[^#`\n|]*)", text):
            try:
                lines.append(shlex.split(match[1]))
            except ValueError:  # an unbalanced quote in prose
                continue
    return lines


def test_no_documented_command_line_is_refused_by_the_kept_help(tmp_path, monkeypatch, capsys):
    from ssl_norms.main import main

    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "1")
    monkeypatch.chdir(REPO)  # the documented config paths are relative to the repo
    for command in ("fit", "validate", "test", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])  # the parser prints it; it is kept with the options
    capsys.readouterr()
    lines = _documented_command_lines()
    assert len(lines) > 30
    for words in lines:
        assert help_cache.answer(words) is None, words  # no error raised, nothing answered from the cache
