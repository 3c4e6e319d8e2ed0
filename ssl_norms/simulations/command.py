"""``ssl-norms simulate <name> [--out DIR] [--<override> VALUE ...] [--wandb]`` and ``--list``.

Runs one simulation of :data:`ssl_norms.simulations.SIMULATIONS` (or ``all``), writes
``<out>/<name>.png``, ``.json`` and ``.csv`` (default ``$SSL_NORMS_RUNS/simulations``, i.e.
``runs/simulations``), prints the paths and the headline numbers. Overrides are the keyword
arguments of the simulation function (``--list`` shows them with their defaults); lists are
comma-separated (``--norms 0.5,1,2``) or several words (``--norms 0.5 1 2``). With ``--wandb`` the
PNGs and numbers are also logged into a W&B run under ``<out>/wandb`` (offline without credentials
or with WANDB_MODE=offline).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssl_norms.runs import runs_root

DESCRIPTIONS = {
    "fig2a": "Fig 2a: steps to converge vs embedding norm and initial angle (aparametric GD, 500 pairs on S^19, lr 10)",
    "theory_checks": "Prop 3.1, Thm 3.4 and Cor 3.3 checked on many random pairs (float64)",
    "fig2b": "Fig 2b: embedding norm vs distance to the 10th nearest neighbour (supervised-InfoNCE MLP)",
    "fig2c": "Fig 2c: mean norm per class over training, class probabilities 1/2, 1/4, 1/8, 1/16",
}


FLAGS = ("list", "wandb", "no_wandb", "help")  # command options without a value


def build_parser() -> argparse.ArgumentParser:
    """For ``--help`` only: the words are read by :func:`split_words` (overrides are open-ended)."""
    parser = argparse.ArgumentParser(
        prog="ssl-norms simulate",
        usage="ssl-norms simulate NAME [--out DIR] [--wandb] [--KEY VALUE ...] | --list",
        description="The paper's Section 3-4 simulations. Any --KEY VALUE other than the options below "
        "overrides a keyword argument of the simulation (ssl-norms simulate --list shows them with their defaults); "
        "lists are comma-separated or several words (--norms 0.5,1,2 or --norms 0.5 1 2).",
        allow_abbrev=False,
    )
    parser.add_argument("name", nargs="?", help="simulation: " + ", ".join(DESCRIPTIONS) + ", or all")
    parser.add_argument("--list", action="store_true", help="list the simulations and their overrides with defaults")
    parser.add_argument("--out", help="output directory (default $SSL_NORMS_RUNS/simulations, i.e. runs/simulations)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=False,
                        help="also log the PNGs and numbers into a W&B run under <out>/wandb (offline without credentials)")
    return parser


def split_words(words: list[str]) -> tuple[str | None, dict[str, list[str]]]:
    """The simulation name (the first word, unless it is an option) and every ``--key VALUE [VALUE
    ...]`` / ``--key=VALUE`` / ``--flag`` as ``{key: [values]}``; ``-`` and ``_`` in keys are
    interchangeable and words starting with a single ``-`` (negative numbers) are values."""
    name = words[0] if words and not words[0].startswith("--") and words[0] != "-h" else None
    options: dict[str, list[str]] = {}
    key: str | None = None
    for word in words[1:] if name is not None else words:
        if word == "-h":
            word = "--help"
        if word.startswith("--") and len(word) > 2:
            raw, eq, value = word[2:].partition("=")
            key = raw.replace("-", "_")
            if key in options:
                raise ValueError(f"--{raw} given twice")
            options[key] = [value] if eq else []
        elif key is None:
            raise ValueError(f"unexpected argument {word!r}: ssl-norms simulate NAME [--KEY VALUE ...] (see --list)")
        else:
            options[key].append(word)
    for key, values in options.items():
        if key in FLAGS and values:
            raise ValueError(f"--{key} takes no value, got {' '.join(values)!r}")
        if key not in FLAGS and not values:
            raise ValueError(f"--{key} needs a value")
    return name, options


def listing() -> str:
    from ssl_norms.simulations import SIMULATIONS, simulation_params

    lines = []
    for name in SIMULATIONS:
        lines.append(f"{name}: {DESCRIPTIONS.get(name, '')}")
        for key, default in simulation_params(name).items():
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, (list, tuple)) else default
            lines.append(f"    --{key} {shown}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def headline(numbers: dict[str, Any]) -> list[str]:
    """The few numbers worth printing for each simulation (all of them are in the JSON)."""
    name = numbers.get("simulation")
    if name == "fig2a":
        p = numbers["params"]
        lines = ["steps until mean cos > {threshold} (rows: interp a / initial angle; columns: norm)".format(**p),
                 "    a      angle  " + "".join(f"{n:>8g}" for n in p["norms"])]
        for a, angle, row in zip(p["interps"], numbers["init_mean_angle_deg"], numbers["steps"]):
            lines.append(f"  {a:+.2f}  {angle:6.1f}°  " + "".join(f"{('>' + str(p['max_steps'])) if s is None else s:>8}" for s in row))
        lines.append(f"cells not converged within {p['max_steps']} steps: {numbers['num_cells_not_converged']}")
        return lines
    if name == "theory_checks":
        thm, cor = numbers["thm_3_4"], numbers["cor_3_3"]
        lines = ["Thm 3.4 bound violations (checked pairs x steps):"]
        for key in ("one_side_small_step", "one_side_large_step", "both_sides_acute", "both_sides_obtuse"):
            entry = thm[key]
            lines.append(f"  {key:<20} ({entry['condition']}): {entry['violations']} / {entry['checked']}, max ratio {'-' if entry['max_ratio'] is None else format(entry['max_ratio'], '.7g')}")
        lines.append(f"  obtuse violations outside the predicted set |cos phi| > s sin^2 phi: {thm['both_sides_obtuse']['mismatches_with_predicted_condition']}")
        lines.append(f"Cor 3.3 (norms never shrink): cosine steps {cor['cosine_step_violations']} violations, "
                     f"InfoNCE steps {cor['infonce_step_violations']} / {cor['infonce_embeddings_checked']}")
        return lines
    if name == "fig2b":
        return [f"Spearman(norm, {numbers['params']['k']}-NN distance) {numbers['spearman_norm_vs_knn']:+.3f}, "
                f"Pearson {numbers['pearson_norm_vs_knn']:+.3f}, within class {_fmt(numbers['spearman_norm_vs_knn_within_class'])}"]
    if name == "fig2c":
        return [f"class probabilities {_fmt(numbers['class_probabilities'])}",
                f"final mean norm per class {_fmt(numbers['final_mean_norm_per_class'])} "
                f"(initial {_fmt(numbers['initial_mean_norm_per_class'])})",
                f"largest-norm class {numbers['largest_norm_class']}, most frequent {numbers['most_frequent_class']}, "
                f"Spearman(frequency, norm) {numbers['spearman_frequency_vs_final_norm']:+.2f}"]
    return []


def default_out_dir() -> Path:
    return runs_root() / "simulations"


def simulate_command(argv: list[str]) -> None:
    """Entry point of ``ssl-norms simulate`` (registered in ssl_norms.cli.PROJECT_COMMANDS).
    Bad input (unknown name or override, a value of the wrong type) raises ValueError, which the
    CLI prints as one line."""
    from ssl_norms.simulations import SIMULATIONS, run_simulation

    name, options = split_words(list(argv))
    if "help" in options:
        build_parser().print_help()
        return
    if "list" in options:
        print(listing())
        return
    if name is None:
        raise ValueError(f"name a simulation: {', '.join(SIMULATIONS)} or all (ssl-norms simulate --list shows their options)")
    if name != "all" and name not in SIMULATIONS:
        raise ValueError(f"unknown simulation {name!r}; choose one of: {', '.join(SIMULATIONS)}, all")
    out = options.pop("out", None)
    if out is not None and len(out) != 1:
        raise ValueError(f"--out takes one directory, got {' '.join(out)!r}")
    out_dir = Path(out[0]) if out else default_out_dir()
    use_wandb = options.pop("wandb", None) is not None
    use_wandb = options.pop("no_wandb", None) is None and use_wandb
    overrides = {key: values[0] if len(values) == 1 else values for key, values in options.items()}
    if name == "all" and overrides:
        raise ValueError("overrides apply to one simulation; run the simulations one by one to change their settings")
    names = list(SIMULATIONS) if name == "all" else [name]
    figures = None
    if use_wandb:
        from ssl_norms.analysis.output import WandbFigures

        figures = WandbFigures(out_dir, job_type="simulation", name=f"simulate-{name}")
    try:
        for simulation in names:
            numbers = run_simulation(simulation, out_dir, **overrides)
            paths = numbers["paths"]
            print(f"{simulation}: {', '.join(paths.values())} ({numbers.get('runtime_s', 0):.1f} s)")
            for line in headline(numbers):
                print(f"  {line}")
            if figures is not None:
                figures.log_figures(f"simulation/{simulation}", [Path(p) for p in paths.values()], numbers)
    finally:
        if figures is not None:
            figures.finish()
