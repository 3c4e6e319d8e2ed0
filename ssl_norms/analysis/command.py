"""``ssl-norms analyze <name> --ckpt RUN/checkpoints/last.ckpt [--data ROOT] [options]``.

Every analysis writes ``<out>/<name>.png`` with its numbers (``.csv``, ``.json``; per-sample values
as ``_samples.npz``) into ``--out`` (default ``<run_dir>/analysis``), and, when the run logged to
W&B (or with ``--wandb``), logs the PNGs into that W&B run.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any, Callable

from ssl_norms.analysis.confidence import entropy_by_norm, extremes, human_agreement_by_norm, knn_by_norm
from ssl_norms.analysis.curves import training_curves
from ssl_norms.analysis.loading import TrainedRun, run_dir_of
from ssl_norms.analysis.novelty import novelty
from ssl_norms.analysis.opposite_pairs import opposite_pairs
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable, WandbFigures, wandb_run_id

# name -> (function, what it reproduces); functions on a checkpoint take a TrainedRun first
CHECKPOINT_ANALYSES: dict[str, tuple[Callable[..., AnalysisResult], str]] = {
    "novelty": (novelty, "Fig 3 / S5: norms of evaluation sets / training mean, violin + bar, AUROC"),
    "knn_by_norm": (knn_by_norm, "Fig 4 left: leave-one-out k-NN accuracy per norm bucket"),
    "human_agreement_by_norm": (human_agreement_by_norm, "Fig 4 middle: CIFAR-10N/100N label agreement per norm bucket"),
    "entropy_by_norm": (entropy_by_norm, "Fig 4 right: CIFAR-10H label entropy per norm bucket (test)"),
    "extremes": (extremes, "Fig S6: highest- and lowest-norm images per class"),
}
RUN_ANALYSES: dict[str, tuple[Callable[..., AnalysisResult], str]] = {
    "opposite_pairs": (opposite_pairs, "Table S1: positive pairs at angle > pi/2 at given epochs"),
    "curves": (training_curves, "Fig 5 / S3 / S4: norm and k-NN accuracy over epochs of several runs"),
}
ANALYSES = {**CHECKPOINT_ANALYSES, **RUN_ANALYSES}
ALIASES = {
    "fig3": "novelty", "figS5": "novelty", "fig4_left": "knn_by_norm", "fig4_middle": "human_agreement_by_norm",
    "fig4_right": "entropy_by_norm", "figS6": "extremes", "tableS1": "opposite_pairs", "fig5": "curves",
    "figS3": "curves", "figS4": "curves",
}


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name != "all" and name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of: all, {', '.join(ANALYSES)} (or {', '.join(ALIASES)})")
    return name


def _call(function: Callable[..., AnalysisResult], *args: Any, **options: Any) -> AnalysisResult:
    """``function`` with the options it accepts (unset options keep the function's defaults)."""
    accepted = inspect.signature(function).parameters
    return function(*args, **{k: v for k, v in options.items() if k in accepted and v is not None})


def run_analysis(name: str, out_dir: str | Path, run: TrainedRun | None = None, runs: list[str | Path] | None = None, **options: Any) -> AnalysisResult:
    """One analysis by name (see ``ANALYSES``). Checkpoint analyses need ``run``; ``curves`` and
    ``opposite_pairs`` read ``runs`` (default: the run of ``run``)."""
    name = resolve_name(name)
    if name == "all":
        raise ValueError("run_analysis runs one analysis; use run_all for 'all'")
    function = ANALYSES[name][0]
    if name in CHECKPOINT_ANALYSES:
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


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {n:<24} {d}" for n, (_, d) in ANALYSES.items())
    parser = argparse.ArgumentParser(
        prog="ssl-norms analyze",
        description="The paper's analyses on trained runs.\n\nanalyses:\n" + listing
        + "\n  all                      every analysis that applies to the checkpoint\n\naliases: "
        + ", ".join(f"{a}={n}" for a, n in ALIASES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="analysis name (see above)")
    parser.add_argument("--ckpt", type=Path, help="checkpoint, e.g. RUN_DIR/checkpoints/last.ckpt")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: RUN_DIR/config.yaml)")
    parser.add_argument("--data", "--data.root", "--data.init_args.root", dest="data_root",
                        help="data root (default: the run's root, else $SSL_NORMS_DATA)")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN_DIR/analysis)")
    parser.add_argument("--runs", nargs="+", type=Path, help="run directories for curves / opposite_pairs (default: the checkpoint's run)")
    parser.add_argument("--labels", nargs="+", help="legend labels of --runs (default: the settings in which their configs differ)")
    parser.add_argument("--augmented", action="store_true",
                        help="training-set embeddings from the first augmented view (the paper's code); default un-augmented")
    parser.add_argument("--split", choices=["train", "test"], help="images of knn_by_norm / extremes (default train)")
    parser.add_argument("--space", choices=["embeddings", "features"], help="norm of the loss-space embeddings (default) or backbone features")
    parser.add_argument("--knn_space", choices=["embeddings", "features"], help="space of the k-NN classifier (default embeddings)")
    parser.add_argument("--k", type=int, help="k-NN neighbours (default 200)")
    parser.add_argument("--temperature", type=float, help="k-NN vote temperature (default 0.1)")
    parser.add_argument("--num_buckets", type=int, help="norm buckets (default 20, width 0.05)")
    parser.add_argument("--min_count", type=int, help="plot buckets with more than this many images (default 50)")
    parser.add_argument("--per_class", type=int, help="images per class and extreme in extremes (default 10)")
    parser.add_argument("--sets", help="evaluation sets of novelty, comma-separated (names of ssl_norms.data.eval_sets; default cifar10_test,cifar100_test,mnist_test)")
    parser.add_argument("--epochs", help="Table S1 epochs, 1-based, comma-separated (default 1,10,100,last)")
    parser.add_argument("--num_pairs", type=int, help="augmented pairs for the recomputed Table S1 entry (default 2048)")
    parser.add_argument("--cifar_n_file", type=Path, help="CIFAR-10N/100N *_human.pt (default: <data root>/cifar10n/)")
    parser.add_argument("--cifar10h_file", type=Path, help="CIFAR-10H cifar10h-probs.npy (default: <data root>/cifar10h/)")
    parser.add_argument("--label_key", help="CIFAR-N label compared with clean_label (default aggre_label / noisy_label)")
    parser.add_argument("--max_samples", type=int, help="seeded subset of every image set (default: all)")
    parser.add_argument("--batch_size", type=int, default=256, help="embedding batch (default 256)")
    parser.add_argument("--device", help="device of the model (default cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets and augmentations (default 0)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log PNGs to the run's W&B run (default: when the run used W&B)")
    return parser


def analyze_command(argv: list[str]) -> None:
    """Entry point of ``ssl-norms analyze`` (registered in ssl_norms.cli.PROJECT_COMMANDS)."""
    args = build_parser().parse_args(argv)
    name = resolve_name(args.name)
    run = None
    if args.ckpt is not None and name == "curves":  # reads metrics files only: no need to load the model
        args.runs = args.runs or [run_dir_of(args.ckpt)]
    elif args.ckpt is not None:
        run = TrainedRun.load(args.ckpt, args.config, args.data_root, device=args.device, batch_size=args.batch_size,
                              max_samples=args.max_samples, seed=args.seed, augmented=args.augmented)
    elif name == "all" or name in CHECKPOINT_ANALYSES:
        raise ValueError(f"analysis {name!r} needs --ckpt <run_dir>/checkpoints/last.ckpt")
    run_dir = run.run_dir if run is not None else (args.runs[0] if args.runs else None)
    if run_dir is None:
        raise ValueError(f"analysis {name!r} needs --runs DIR [DIR ...] or --ckpt")
    out_dir = args.out or Path(run_dir) / "analysis"
    options = {k: getattr(args, k) for k in ("labels", "split", "space", "knn_space", "k", "temperature", "num_buckets", "min_count",
                                             "per_class", "sets", "epochs", "num_pairs", "cifar_n_file", "cifar10h_file", "label_key")}
    use_wandb = args.wandb if args.wandb is not None else wandb_run_id(Path(run_dir)) is not None
    wandb_figures = WandbFigures(Path(run_dir), run.config if run is not None else None) if use_wandb else None
    try:
        if name == "all":
            results, skipped = run_all(out_dir, run, args.runs, **options)
        else:
            try:
                results, skipped = [run_analysis(name, out_dir, run, args.runs, **options)], {}
            except AnalysisUnavailable as err:
                _write_skip_note(out_dir, name, str(err))
                raise
        for result in results:
            print(f"{result.name}: {', '.join(str(p) for p in result.paths)}")
            for note in result.notes:
                print(f"  note: {note}")
            if wandb_figures is not None:
                wandb_figures.log(result)
        for skipped_name, reason in skipped.items():
            _write_skip_note(out_dir, skipped_name, reason)
            print(f"{skipped_name}: skipped: {reason}")
    finally:
        if wandb_figures is not None:
            wandb_figures.finish()


def _write_skip_note(out_dir: Path, name: str, reason: str) -> Path:
    """``<out>/<name>.skipped.txt``: why an analysis produced no figure."""
    path = Path(out_dir) / f"{name}.skipped.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason + "\n")
    return path
