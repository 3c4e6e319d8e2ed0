"""``ssl-norms analyze <name> --ckpt RUN/checkpoints/last.ckpt [--data ROOT] [options]``.

Every analysis is registered once, in :data:`ANALYSES`; its keyword parameters are its command-line
options (``ssl-norms analyze <name> --help``). It writes ``<out>/<name>.png`` with its numbers
(``.csv``, ``.json``; per-sample values as ``_samples.npz``) into ``--out`` (default: a new
``<run_dir>/analyze-<timestamp>/``, named like validate's, so no analysis overwrites another or a file
of the run), and, when the run logged to W&B (or with ``--wandb``), logs the PNGs into
that W&B run. ``--ckpt`` also takes a run directory: its newest checkpoint, as resuming picks it. Analyses whose first parameter is ``run`` read a checkpoint (a :class:`TrainedRun`);
those whose first parameter is ``runs`` read run directories.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ssl_norms.analysis.confidence import entropy_by_norm, extremes, human_agreement_by_norm, knn_by_norm
from ssl_norms.analysis.curves import training_curves
from ssl_norms.analysis.novelty import novelty
from ssl_norms.analysis.opposite_pairs import opposite_pairs
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.command_line import Member, Subcommands
from ssl_norms.figures import WandbFigures
from ssl_norms.runs import RUN_FILES, create_unique_dir, run_dir_of, timestamp
from ssl_norms.wandb_setup import existing_run_id

if TYPE_CHECKING:  # loading a run needs torch: imported when an analysis runs, not for --help
    from ssl_norms.analysis.loading import TrainedRun

# name -> (function, aliases); the help line is the first line of the function's docstring
ANALYSES: dict[str, tuple[Callable[..., AnalysisResult], tuple[str, ...]]] = {
    "novelty": (novelty, ("fig3", "figS5")),
    "knn_by_norm": (knn_by_norm, ("fig4_left",)),
    "human_agreement_by_norm": (human_agreement_by_norm, ("fig4_middle",)),
    "entropy_by_norm": (entropy_by_norm, ("fig4_right",)),
    "extremes": (extremes, ("figS6",)),
    "opposite_pairs": (opposite_pairs, ("tableS1",)),
    "curves": (training_curves, ("fig5", "figS3", "figS4")),
}


def reads_checkpoint(name: str) -> bool:
    """Whether analysis ``name`` studies a checkpoint (else run directories)."""
    return next(iter(inspect.signature(ANALYSES[name][0]).parameters)) == "run"


def _call(function: Callable[..., AnalysisResult], *args: Any, **options: Any) -> AnalysisResult:
    """``function`` with the options it accepts (unset options keep the function's defaults)."""
    accepted = inspect.signature(function).parameters
    return function(*args, **{k: v for k, v in options.items() if k in accepted and v is not None})


def run_analysis(name: str, out_dir: str | Path, run: TrainedRun | None = None, runs: list[str | Path] | None = None, **options: Any) -> AnalysisResult:
    """One analysis of :data:`ANALYSES`. Checkpoint analyses need ``run``; the others read ``runs``
    (default: the run of ``run``)."""
    function = ANALYSES[name][0]
    if reads_checkpoint(name):
        if run is None:
            raise ValueError(f"analysis {name!r} needs a checkpoint: pass --ckpt <run_dir>/checkpoints/last.ckpt")
        return _call(function, run, Path(out_dir), **options)
    runs = list(runs or ([run.run_dir] if run is not None and run.run_dir is not None else []))
    if not runs:
        raise ValueError(f"analysis {name!r} needs run directories: pass --runs DIR [DIR ...] or --ckpt")
    return _call(function, runs, Path(out_dir), checkpoint_run=run, **options)


def run_all(out_dir: str | Path, run: TrainedRun, runs: list[str | Path] | None = None, **options: Any) -> tuple[list[AnalysisResult], dict[str, str]]:
    """Every analysis that applies to ``run``; the ones that cannot run here are returned with the reason."""
    results, skipped = [], {}
    for name in ANALYSES:
        try:
            results.append(run_analysis(name, out_dir, run, runs, **options))
        except (AnalysisUnavailable, FileNotFoundError) as err:
            skipped[name] = str(err)
    return results, skipped


def analyze(
    name: str,
    *,
    ckpt: Path | None = None,
    config: Path | None = None,
    data: str | None = None,
    out: Path | None = None,
    runs: list[Path] | None = None,
    augmented: bool = False,
    max_samples: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
    seed: int = 0,
    wandb: bool | None = None,
    **options: Any,
) -> None:
    """Run analysis ``name`` (or ``all``) with ``options`` and print what it wrote.

    Args:
        ckpt: checkpoint, e.g. RUN_DIR/checkpoints/last.ckpt, or RUN_DIR (its newest checkpoint)
        config: the run's config.yaml (default: RUN_DIR/config.yaml)
        data: data root (default: the run's root, else $SSL_NORMS_DATA)
        out: output directory, not a run directory (default: a new RUN_DIR/analyze-<timestamp>)
        runs: run directories of run-dir analyses (default: the checkpoint's run)
        augmented: training-set embeddings from the first augmented view (the paper's code); default un-augmented
        max_samples: seeded subset of every image set (default: all)
        batch_size: embedding batch
        device: device of the model (default cuda when available, else cpu)
        seed: seed of subsets and augmentations
        wandb: log the PNGs to the run's W&B run (default: when the run used W&B)
    """
    from ssl_norms.analysis.loading import TrainedRun, checkpoint_path

    run = None
    if out is not None and any((out / marker).exists() for marker in RUN_FILES):
        raise ValueError(f"--out {out} is a run directory: analyses never write among a run's files; "
                         "leave --out out (a new <run>/analyze-<timestamp>/) or name another folder")
    if ckpt is not None and name == "curves":  # reads metrics files only: no need to load the model
        runs = runs or [run_dir_of(checkpoint_path(ckpt))]
    elif ckpt is not None:
        run = TrainedRun.load(ckpt, config, data, device=device, batch_size=batch_size, max_samples=max_samples, seed=seed, augmented=augmented)
    elif name == "all" or reads_checkpoint(name):
        raise ValueError(f"analysis {name!r} needs --ckpt <run_dir>/checkpoints/last.ckpt")
    run_dir = run.run_dir if run is not None else (runs[0] if runs else None)
    if run_dir is None:
        raise ValueError(f"analysis {name!r} needs --runs DIR [DIR ...] or --ckpt")
    use_wandb = wandb if wandb is not None else existing_run_id(Path(run_dir)) is not None
    figures = WandbFigures(Path(run_dir), run.config if run is not None else None) if use_wandb else None
    out_dir = out or create_unique_dir(Path(run_dir), f"analyze-{timestamp()}")
    try:
        if name == "all":
            results, skipped = run_all(out_dir, run, runs, **options)
        else:
            try:
                results, skipped = [run_analysis(name, out_dir, run, runs, **options)], {}
            except AnalysisUnavailable as err:
                _write_skip_note(out_dir, name, str(err))
                raise
        for result in results:
            print(f"{result.name}: {', '.join(str(p) for p in result.paths)}")
            for note in result.notes:
                print(f"  note: {note}")
            if figures is not None:
                figures.log_figures(f"analysis/{result.name}", result.paths, result.numbers)
        for skipped_name, reason in skipped.items():
            _write_skip_note(out_dir, skipped_name, reason)
            print(f"{skipped_name}: skipped: {reason}")
    finally:
        if figures is not None:
            figures.finish()
        if out is None and not any(out_dir.iterdir()):  # a failed analysis leaves no empty folder
            out_dir.rmdir()


def _write_skip_note(out_dir: Path, name: str, reason: str) -> Path:
    """``<out>/<name>.skipped.txt``: why an analysis produced no figure."""
    path = Path(out_dir) / f"{name}.skipped.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason + "\n")
    return path


COMMAND = Subcommands({
    **{name: Member(functools.partial(analyze, name=name), (function,), aliases=aliases) for name, (function, aliases) in ANALYSES.items()},
    "all": Member(functools.partial(analyze, name="all"), tuple(function for function, _ in ANALYSES.values()),
                  help="every analysis that applies to the checkpoint"),
})
