"""``ssl-norms slurm``: submit the sbatch templates in ``slurm/`` and print what they would run.

Three templates, shipped with the package, all of which start one process per GPU with ``srun``
(``--ntasks-per-node`` = GPUs per node) so that Lightning's SLURMEnvironment sets up DDP, and all
of which run ``python -m ssl_norms.main slurm task ...`` in each task, so that the job's command is
built by :func:`task_argv`, the same code the dry-run prints from:

* ``single_node.sbatch``: one node, several GPUs;
* ``multi_node.sbatch``: several nodes;
* ``array.sbatch``: one point of a sweep file (see :mod:`ssl_norms.sweep`) per array index.

Preemption: ``#SBATCH --signal=SIGUSR1@90`` makes SLURM signal the job 90 s before its time limit;
Lightning's ``SLURMEnvironment(auto_requeue=True)`` (``slurm/slurm.yaml``, added to every
task's fit) then saves ``hpc_ckpt_<n>.ckpt`` in the run dir and requeues the job. The requeued job
has the same job id (and array task id), hence the same run dir, the same W&B run id, and ``fit``
resumes from the newest checkpoint because ``SLURM_RESTART_COUNT`` > 0 (see :mod:`ssl_norms.cli`).
Callback states come back with the checkpoint, so CutInit is not applied again.

Commands::

    ssl-norms slurm array SWEEP_FILE [--template T] [--runs DIR] [--dry_run] [SBATCH OPTIONS] [-- FIT_ARGS...]
    ssl-norms slurm fit [--nodes N] [--template T] [--dry_run] [SBATCH OPTIONS] -- FIT_ARGS...
    ssl-norms slurm task [SWEEP_FILE] [-- FIT_ARGS...]     (what srun runs inside a job)

SBATCH OPTIONS (``--partition``, ``--account``, ``--time``, ``--gres``, ``--mem``, ``--qos``) go to
sbatch before the template, where they override its ``#SBATCH`` lines: no template is edited.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ssl_norms.command_line import Member, Subcommands, help_line
from ssl_norms.sweep import sweep_points

# slurm/ holds the templates and the SLURM trainer config; a wheel ships it as ssl_norms/sbatch (pyproject.toml).
_PACKAGED = Path(__file__).with_name("sbatch")
TEMPLATES = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1] / "slurm"
SLURM_CONFIG = TEMPLATES / "slurm.yaml"
TASK_COMMAND = ["python", "-m", "ssl_norms.main", "slurm", "task"]


def _display_path(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies below it (shorter commands), else absolute."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def sbatch_directives(template: Path | str) -> dict[str, str]:
    """``#SBATCH --key=value`` (or ``--key value``) lines of a template, as ``{key: value}``."""
    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"sbatch template {template} does not exist; the templates are in {TEMPLATES}")
    directives: dict[str, str] = {}
    for line in template.read_text().splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s]+(\S+))?", line.strip())
        if match:
            directives[match[1]] = match[2] or ""
    return directives


def layout(directives: dict[str, str]) -> tuple[int, int]:
    """(nodes, tasks per node) that a template asks for; a task is one GPU process."""
    try:
        nodes = int(directives.get("nodes", "1"))
        tasks = int(directives.get("ntasks-per-node", "1"))
    except ValueError as err:
        raise ValueError(f"sbatch template: --nodes and --ntasks-per-node must be plain numbers ({err})") from None
    return nodes, tasks


def slurm_fit_args(nodes: int, tasks_per_node: int) -> list[str]:
    """What every SLURM task adds to its fit: the DDP/SLURM config and the allocation's layout."""
    return [
        "--config", _display_path(SLURM_CONFIG),
        f"--trainer.num_nodes={nodes}",
        f"--trainer.devices={tasks_per_node}",
    ]


def task_argv(fit_args: list[str], nodes: int, tasks_per_node: int, sweep_file: str | None = None,
              index: int | None = None, runs: str | None = None) -> list[str]:
    """The ``ssl-norms`` argv one SLURM task runs: ``fit ...`` (for a sweep: that point's fit)."""
    extra = [*fit_args, *slurm_fit_args(nodes, tasks_per_node)]
    if sweep_file is None:
        return ["fit", *extra]
    points = sweep_points(sweep_file, runs)
    if index is None or not 0 <= index < len(points):
        raise ValueError(f"array index {index} is out of range: {sweep_file} has {len(points)} points (0-{len(points) - 1})")
    return points[index].fit_args(extra)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    if not value.isdigit():
        raise ValueError(f"${name} is not set: `ssl-norms slurm task` runs inside an sbatch job (see {TEMPLATES})")
    return int(value)


def _tasks_per_node() -> int:
    # SLURM_NTASKS_PER_NODE is set when --ntasks-per-node is given (always, in our templates)
    value = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if value.isdigit():
        return int(value)
    return _env_int("SLURM_NTASKS") // max(1, _env_int("SLURM_NNODES"))


def sbatch_options(*, partition: str | None = None, account: str | None = None, time: str | None = None,
                   gres: str | None = None, mem: str | None = None, qos: str | None = None) -> list[str]:
    """The sbatch options given on the command line, as ``--key=value`` words.

    Args:
        partition: sbatch --partition
        account: sbatch --account
        time: sbatch --time (e.g. 2-00:00:00), instead of the template's 24:00:00
        gres: sbatch --gres (e.g. gpu:a100:4); the GPU count must equal the template's --ntasks-per-node
        mem: sbatch --mem (e.g. 64G)
        qos: sbatch --qos
    """
    given = {"partition": partition, "account": account, "time": time, "gres": gres, "mem": mem, "qos": qos}
    return [f"--{key}={value}" for key, value in given.items() if value is not None]


def _check_gres(options: list[str], tasks_per_node: int) -> None:
    """One task (DDP rank) per GPU: a --gres GPU count must match the template's tasks per node."""
    gres = next((word.split("=", 1)[1] for word in options if word.startswith("--gres=")), None)
    match = re.fullmatch(r"gpu(?::[\w.-]+)?:(\d+)", gres or "")
    if match and int(match[1]) != tasks_per_node:
        raise ValueError(f"--gres {gres} asks for {match[1]} GPUs per node but the template starts {tasks_per_node} "
                         "task(s) per node (one per GPU): pass a --template whose --ntasks-per-node matches")


def array_plan(sweep_file: str, template: str, runs: str | None, fit_args: list[str],
               options: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """The ``sbatch`` command of an array over a sweep file (``options``: sbatch options before the
    template), and per index (index, values, ssl-norms argv)."""
    points = sweep_points(sweep_file, runs)
    nodes, tasks = layout(sbatch_directives(template))
    _check_gres(list(options), tasks)
    sbatch = ["sbatch", f"--array=0-{len(points) - 1}", *options, _display_path(template), sweep_file]
    if runs:
        sbatch += ["--runs", runs]
    if fit_args:
        sbatch += ["--", *fit_args]
    plan = [(p.index, p.describe(), task_argv(fit_args, nodes, tasks, sweep_file, p.index, runs)) for p in points]
    return sbatch, plan


def _submit(sbatch: list[str]) -> None:
    if shutil.which("sbatch") is None:
        raise FileNotFoundError("sbatch is not on PATH: submit from a SLURM login node, or add --dry-run to print the commands")
    sys.exit(subprocess.call(sbatch))


def array(sweep_file: str, *, template: str | None = None, runs: str | None = None, dry_run: bool = False,
          fit_args: Sequence[str] = (), **sbatch: str | None) -> None:
    """One sweep point per array index; arguments after ``--`` go to every point's fit.

    Args:
        sweep_file: sweep YAML file (see ssl_norms.sweep)
        template: sbatch template (default: the package's array.sbatch)
        runs: runs root of the sweep's run dirs (default $SSL_NORMS_RUNS or ./runs)
        dry_run: print the sbatch command and every index's fit command instead of submitting
    """
    command, plan = array_plan(sweep_file, template or str(TEMPLATES / "array.sbatch"), runs, list(fit_args), sbatch_options(**sbatch))
    if not dry_run:
        _submit(command)
    print(f"# {shlex.join(command)}")
    print(f"# each array task runs: srun {shlex.join(TASK_COMMAND)} {sweep_file}  (index = $SLURM_ARRAY_TASK_ID), i.e.")
    for index, values, command in plan:
        print(f"[{index}] {values}: {shlex.join(['ssl-norms', *command])}")
    print(f"# results table of the finished points: {shlex.join(['ssl-norms', 'sweep', sweep_file, *(['--runs', runs] if runs else []), '--summary'])}")


def fit(*, nodes: int = 1, template: str | None = None, dry_run: bool = False, fit_args: Sequence[str] = (),
        **sbatch: str | None) -> None:
    """One fit on one or more nodes; the arguments after ``--`` are the fit's.

    Args:
        nodes: nodes of the job (1: the package's single_node.sbatch, more: multi_node.sbatch)
        template: sbatch template (default chosen by --nodes)
        dry_run: print the sbatch command and the fit every task runs instead of submitting
    """
    if nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")
    template = template or str(TEMPLATES / ("single_node.sbatch" if nodes == 1 else "multi_node.sbatch"))
    _, tasks = layout(sbatch_directives(template))
    options = sbatch_options(**sbatch)
    _check_gres(options, tasks)
    command = ["sbatch", f"--nodes={nodes}", *options, _display_path(template), *fit_args]
    if not dry_run:
        _submit(command)
    print(f"# {shlex.join(command)}")
    print(f"# every task ({nodes} node(s) x {tasks} per node) runs: srun {shlex.join(TASK_COMMAND)} -- ..., i.e.")
    print(shlex.join(["ssl-norms", *task_argv(list(fit_args), nodes, tasks)]))


def task(sweep_file: str | None = None, *, runs: str | None = None, fit_args: Sequence[str] = (),
         run_cli: Callable[[list[str]], None]) -> None:
    """Inside a job (srun runs it): build this task's fit from the SLURM environment and run it here.

    Args:
        sweep_file: with a sweep file, the point of index $SLURM_ARRAY_TASK_ID
        runs: runs root of the sweep's run dirs (default $SSL_NORMS_RUNS or ./runs)
    """
    index = _env_int("SLURM_ARRAY_TASK_ID") if sweep_file else None
    command = task_argv(list(fit_args), _env_int("SLURM_NNODES"), _tasks_per_node(), sweep_file, index, runs)
    if os.environ.get("SLURM_PROCID", "0") == "0":
        print(f"ssl-norms slurm task (job {os.environ.get('SLURM_JOB_ID')}, restart "
              f"{os.environ.get('SLURM_RESTART_COUNT', '0')}): {shlex.join(['ssl-norms', *command])}", flush=True)
    run_cli(command)


COMMAND = Subcommands({
    "array": Member(array, (sbatch_options,), help=help_line(array)),
    "fit": Member(fit, (sbatch_options,), help=help_line(fit)),
    "task": task,
})
