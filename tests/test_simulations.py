"""Tests for ssl_norms.simulations: theory checks, Fig. 2a-c behaviour and the run_simulation entry point."""

from __future__ import annotations

import functools
import json
import math
import re
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from ssl_norms.simulations import SIMULATIONS, run_simulation, simulation_params
from ssl_norms.simulations.aparametric import cos_change, cosine_grad, exact_cos_change, fig2a, thm34_bound
from ssl_norms.simulations.parametric import fig2b, fig2c, knn_cosine_distance, supcon_loss
from ssl_norms.simulations.settings import Range, declared_settings
from ssl_norms.simulations.theory import theory_checks

# ------------------------------------------------------------------------------------------
# Theory (Prop. 3.1, Thm. 3.4, Cor. 3.3)
# ------------------------------------------------------------------------------------------


def test_cosine_grad_matches_autograd_and_prop_3_1():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 16, generator=g, dtype=torch.float64) * 3
    t = torch.randn(500, 16, generator=g, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(F.cosine_similarity(zr, t, dim=-1).sum(), zr)
    ours, cos = cosine_grad(z, t)
    torch.testing.assert_close(ours, auto)
    sin = torch.sqrt(1 - cos**2)
    torch.testing.assert_close(ours.norm(dim=-1), sin / z.norm(dim=-1))  # magnitude sin(phi)/||z||
    assert (ours * z).sum(-1).abs().max() < 1e-12  # orthogonal to z


def test_exact_one_step_change_matches_simulation():
    g = torch.Generator().manual_seed(2)
    phi = torch.rand(2000, generator=g, dtype=torch.float64) * math.pi
    u = F.normalize(torch.randn(2000, 8, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    v = F.normalize(v - (v * u).sum(-1, keepdim=True) * u, dim=-1)
    w = torch.cos(phi)[:, None] * u + torch.sin(phi)[:, None] * v
    for lr, rho in [(0.1, 1.0), (3.0, 0.7), (1.0, 3.0)]:
        s = lr / rho**2
        zi, zj = rho * u, rho * w
        gi, _ = cosine_grad(zi, zj)
        gj, _ = cosine_grad(zj, zi)
        one = cos_change(zi, zj, zi + lr * gi, zj)
        both = cos_change(zi, zj, zi + lr * gi, zj + lr * gj)
        torch.testing.assert_close(one, exact_cos_change(phi, s, both_sides=False), atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(both, exact_cos_change(phi, s, both_sides=True), atol=1e-12, rtol=1e-9)
        if s <= 2:  # Thm. 3.4 for one side needs lr / rho^2 <= 2 (sharp near phi = pi)
            assert (one < thm34_bound(phi, lr, rho)).all()


def test_theory_checks_zero_violations_where_the_bound_holds():
    n = theory_checks(num_pairs=4000, lrs=(0.01, 0.5, 4.0), norms=(0.5, 1.0, 2.0), num_batches=2, batch_size=64).numbers
    thm = n["thm_3_4"]
    # one side, s = lr / rho^2 <= 2: the bound holds for every angle
    assert thm["one_side_small_step"]["checked"] > 10_000
    assert thm["one_side_small_step"]["violations"] == 0
    assert thm["one_side_small_step"]["max_ratio"] < 1
    # both sides, acute pairs: holds at any step size
    assert thm["both_sides_acute"]["checked"] > 10_000
    assert thm["both_sides_acute"]["violations"] == 0
    assert thm["both_sides_acute"]["max_ratio"] < 1
    # bounds valid for every step size (derived from the exact change)
    assert thm["any_step_bounds"]["one_side_violations"] == 0
    assert thm["any_step_bounds"]["both_sides_violations"] == 0
    # documented failures of the literal bound: large one-sided steps and obtuse both-sided steps,
    # the latter exactly where |cos phi| > s sin^2 phi
    assert thm["one_side_large_step"]["violations"] > 0
    assert thm["both_sides_obtuse"]["violations"] > 0
    assert thm["both_sides_obtuse"]["mismatches_with_predicted_condition"] == 0
    # Cor. 3.3: norms never shrink, for pure cosine steps and InfoNCE steps
    cor = n["cor_3_3"]
    assert cor["cosine_step_violations"] == 0
    assert cor["infonce_step_violations"] == 0
    assert cor["infonce_embeddings_checked"] == 3 * 2 * 2 * 64
    assert cor["infonce_max_abs_cos_grad_z"] < 1e-10
    assert n["closed_form_max_abs_err"] < 1e-10
    for rho, d in n["prop_3_1"].items():
        assert d["max_abs_diff_vs_autograd"] < 1e-12, rho


# ------------------------------------------------------------------------------------------
# Fig. 2a
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fig2a_small():
    return fig2a(norms=[0.5, 1.0, 2.0, 4.0], interps=[-0.8, -0.4, 0.0, 0.4, 0.8], num_pairs=200, max_steps=20_000)


def test_fig2a_steps_increase_with_norm_and_angle(fig2a_small):
    n = fig2a_small.numbers
    steps = np.array(n["steps"], dtype=float)  # [interp][norm]
    assert n["num_cells_not_converged"] == 0 and not np.isnan(steps).any()
    # more norm -> more steps at every angle (roughly quadratic: x4 norm ~ x16 steps)
    assert (np.diff(steps, axis=1) > 0).all()
    assert (steps[:, -1] / steps[:, 0] > 20).all()
    # more opposite (smaller a, larger initial angle) -> more steps at every norm
    assert (np.diff(steps, axis=0) < 0).all()
    assert (np.diff(n["init_mean_angle_deg"]) < 0).all()
    # small norms converge fast even for nearly opposite pairs
    assert steps[:, 0].max() < 100
    assert steps[:, 0].max() < steps[:, -1].min()


def test_fig2a_matches_plain_autograd_gradient_descent():
    """The vectorised closed-form loop equals torch autograd GD on -mean cos for one cell."""
    from ssl_norms.simulations.aparametric import random_unit

    n_pairs, dim, lr, norm, a = 40, 20, 10.0, 2.0, -0.5
    g = torch.Generator().manual_seed(3)
    x1 = random_unit(n_pairs, dim, g)
    x2 = random_unit(n_pairs, dim, g)
    z = (norm * F.normalize(x2 * (1 - abs(a)) + x1 * a, dim=-1)).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=lr)
    steps = None
    for t in range(5000):
        loss = -F.cosine_similarity(z, x1, dim=-1).mean()
        if -loss.item() > 0.999:
            steps = t
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    ours = fig2a(norms=[norm], interps=[a], num_pairs=n_pairs, dim=dim, lr=lr, seed=3).numbers["steps"][0][0]
    assert steps is not None and ours == steps


def test_fig2a_reports_non_converged_cells():
    n = fig2a(norms=[0.5, 8.0], interps=[-0.8, 0.8], num_pairs=50, max_steps=300).numbers
    assert n["steps"][0][1] is None and n["steps"][0][0] is not None
    bad = {(c["interp"], c["norm"]): c for c in n["cells_not_converged"]}
    assert (-0.8, 8.0) in bad and bad[(-0.8, 8.0)]["pairs_below_threshold"] > 0
    assert (-0.8, 0.5) not in bad


# ------------------------------------------------------------------------------------------
# Fig. 2b / 2c
# ------------------------------------------------------------------------------------------


def test_supcon_loss_and_knn_helpers():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    good = supcon_loss(z, y, 0.1)
    bad = supcon_loss(z, torch.tensor([0, 1, 0, 1]), 0.1)
    assert good < bad
    # scale invariance: the loss only sees directions
    torch.testing.assert_close(supcon_loss(z * torch.tensor([[5.0], [0.1], [2.0], [7.0]]), y, 0.1), good)
    d = knn_cosine_distance(z, k=1)
    assert d.shape == (4,) and (d >= 0).all() and d[0] < 0.01


def test_fig2b_norm_anticorrelates_with_knn_distance():
    n = fig2b().numbers  # default, seeded (~1 s)
    assert n["spearman_norm_vs_knn"] < -0.2
    assert n["pearson_norm_vs_knn"] < 0
    assert all(r < -0.2 for r in n["spearman_norm_vs_knn_within_class"])
    assert n["spearman_norm_vs_latent_knn"] < 0  # model-free density agrees
    assert n["final_loss"] < n["initial_loss"]


def test_fig2b_within_class_sign_is_robust_to_optimizer():
    n = fig2b(optimizer="sgd", lr=0.3, epochs=3, seed=1).numbers
    assert all(r < 0 for r in n["spearman_norm_vs_knn_within_class"])


def test_fig2c_most_frequent_class_has_largest_norm():
    out = fig2c()  # default, seeded
    n = out.numbers
    assert n["most_frequent_class"] == 0
    final = n["final_mean_norm_per_class"]
    assert n["largest_norm_class"] == 0
    assert final[0] > final[-1]
    assert n["spearman_frequency_vs_final_norm"] > 0
    assert final[0] > 10 * n["initial_mean_norm_per_class"][0]  # norms grow (Cor. 3.3)
    assert len(out.tables[""]) == n["steps"] // 5 + 1 + (n["steps"] % 5 != 0)


def test_fig2c_frequency_effect_across_seeds():
    # not every seed puts class 0 first (about 70% do); what holds robustly is the ordering trend
    finals = np.array([fig2c(seed=s).numbers["final_mean_norm_per_class"] for s in range(1, 5)])
    assert (finals[:, 0] > finals[:, -1]).all()
    assert (finals[:, 0] > finals[:, 1:].mean(1)).all()
    assert np.mean([spearmanr([8, 4, 2, 1.0], f).statistic for f in finals]) > 0.5


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------


def test_run_simulation_writes_outputs(tmp_path):
    res = run_simulation("fig2a", tmp_path / "out", norms=[0.5, 1], interps=[-0.5, 0.5], num_pairs=20, max_steps=2000)
    png, js, csv = (tmp_path / "out" / f"fig2a.{ext}" for ext in ("png", "json", "csv"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    on_disk = json.loads(js.read_text())
    assert on_disk == res
    assert res["simulation"] == "fig2a" and res["paths"]["png"] == str(png) and res["paths"]["csv"] == str(csv)
    assert res["params"]["norms"] == [0.5, 1.0] and res["params"]["max_steps"] == 2000
    lines = csv.read_text().strip().splitlines()
    assert lines[0].startswith("interp,") and len(lines) == 1 + 4


def test_run_simulation_theory_and_parametric_outputs(tmp_path):
    res = run_simulation("theory_checks", tmp_path, num_pairs=200, lrs=[0.1, 1.0], norms=[1.0], num_batches=1)
    assert (tmp_path / "theory_checks.png").exists() and (tmp_path / "theory_checks.csv").exists()
    assert res["cor_3_3"]["infonce_step_violations"] == 0
    res = run_simulation("fig2c", tmp_path, num_samples=800, epochs=1, track_every=2)
    assert (tmp_path / "fig2c.png").exists() and len(res["final_mean_norm_per_class"]) == 4


def test_run_simulation_rejects_unknown_names_and_overrides(tmp_path):
    with pytest.raises(ValueError, match="fig2a, theory_checks, fig2b, fig2c"):
        run_simulation("fig9", tmp_path)
    with pytest.raises(ValueError, match="unknown setting"):
        run_simulation("fig2a", tmp_path, nonsense=1)
    with pytest.raises(ValueError, match=r"--norms \(each value\) must be a finite number > 0, got -1.0"):
        run_simulation("fig2a", tmp_path, norms=[-1.0])
    assert not any(tmp_path.iterdir())


def _outside(declared) -> list:
    """Values just outside a declared range, non-finite numbers and a float for an integer."""
    r = declared.range
    values = [r.low - 1 if not r.open_low else r.low]
    if r.high != math.inf:
        values.append(r.high + 1 if not r.open_high else r.high)
    values += [math.nan, math.inf, 2.5] if declared.number is int else [math.nan, math.inf, -math.inf]
    return values


@pytest.mark.parametrize("name", list(SIMULATIONS))
def test_every_numeric_setting_declares_a_range_that_is_checked_before_running(name, tmp_path, monkeypatch):
    function = SIMULATIONS[name]
    declared = declared_settings(function)
    plain = typing.get_type_hints(function)
    numeric = {key for key, hint in plain.items() if hint in (int, float) or typing.get_args(hint) in ((int,), (float,))}
    assert numeric == set(declared), "every int/float setting of a simulation needs a declared range"
    defaults = simulation_params(name)
    for key, spec in declared.items():
        spec.check(name, key, defaults[key])  # the defaults are valid
    monkeypatch.setitem(SIMULATIONS, name, functools.wraps(function)(lambda **settings: pytest.fail(f"ran with {settings}")))
    for key, spec in declared.items():
        for bad in _outside(spec):
            with pytest.raises(ValueError, match=rf"^simulate {name}: --{key}( \(each value\))? must be an? [a-z ]*{re.escape(str(spec.range))}, got "):
                run_simulation(name, tmp_path, **{key: [bad] if spec.is_list else bad})
        if spec.is_list:
            with pytest.raises(ValueError, match=rf"--{key} needs at least one value"):
                run_simulation(name, tmp_path, **{key: []})
    assert not any(tmp_path.iterdir())


def test_range_text_and_membership():
    assert str(Range(1)) == ">= 1" and str(Range(0, open_low=True)) == "> 0"
    assert str(Range(-1, 1, open_high=True)) == "in [-1, 1)" and str(Range(0, 2**32 - 1)) == "in [0, 4294967295]"
    assert 0 not in Range(0, open_low=True) and 1e-300 in Range(0, open_low=True)
    assert 1 not in Range(-1, 1, open_high=True) and -1 in Range(-1, 1, open_high=True)
    assert math.nan not in Range() and math.inf not in Range()


def test_in_range_extremes_run_or_fail_with_one_clear_line(tmp_path):
    """Edge values inside the ranges: no cell converges (the log axes cannot be drawn), a step too
    small to measure the Thm. 3.4 ratio, and settings whose combination leaves nothing to train on."""
    res = run_simulation("fig2a", tmp_path, norms=[0.5, 2], interps=[-0.5, 0.5], num_pairs=10, max_steps=1)
    assert res["num_cells_not_converged"] == 4 and (tmp_path / "fig2a.png").stat().st_size > 10_000
    res = run_simulation("theory_checks", tmp_path, num_pairs=50, lrs=[0.1], norms=[1e6], num_batches=1, batch_size=8)
    assert res["thm_3_4"]["one_side_small_step"]["checked"] == 0
    with pytest.raises(ValueError, match="--batch_size 16 is larger than the 4 training samples"):
        run_simulation("fig2b", tmp_path, num_classes=2, samples_per_class=2, batch_size=16)
    with pytest.raises(ValueError, match="--k 8 needs more than 8 samples, got 8"):
        run_simulation("fig2b", tmp_path, num_classes=2, samples_per_class=4, batch_size=4, epochs=1, hidden=8, k=8)
    with pytest.raises(ValueError, match=r"2 samples leave class 2 empty \(class sizes \[1, 1, 0, 0\]\)"):
        run_simulation("fig2c", tmp_path, num_samples=2, batch_size=2)


def test_registry_and_params():
    assert set(SIMULATIONS) == {"fig2a", "theory_checks", "fig2b", "fig2c"}
    p = simulation_params("fig2a")
    assert p["lr"] == 10.0 and p["num_pairs"] == 500 and p["dim"] == 20 and p["threshold"] == 0.999


# ------------------------------------------------------------------------------------------
# ssl-norms simulate (through the CLI's main, as a user runs it)
# ------------------------------------------------------------------------------------------

SMALL_RUNS = {
    "fig2a": ["--norms", "0.5,2", "--interps", "-0.5", "0.5", "--num_pairs", "30", "--max_steps=5000"],
    "theory_checks": ["--num_pairs", "300", "--lrs", "0.1,4", "--norms", "1", "--num_batches", "1", "--batch_size", "32"],
    "fig2b": ["--samples_per_class", "150", "--epochs", "2", "--k", "5"],
    "fig2c": ["--num_samples", "600", "--epochs", "2", "--track_every", "3"],
}


def _simulate(tmp_path, name, capsys):
    from ssl_norms.cli import main

    out = tmp_path / "sim"
    main(["simulate", name, "--out", str(out), *SMALL_RUNS[name]])
    printed = capsys.readouterr().out
    png, js, csv = (out / f"{name}.{ext}" for ext in ("png", "json", "csv"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    numbers = json.loads(js.read_text())
    assert numbers["simulation"] == name and numbers["paths"] == {"png": str(png), "csv": str(csv), "json": str(js)}
    assert printed.startswith(f"{name}: {png}")
    import csv as csv_module

    with open(csv) as handle:
        rows = list(csv_module.DictReader(handle))
    return numbers, rows, printed


def test_simulate_fig2a_from_the_command_line(tmp_path, capsys):
    n, rows, printed = _simulate(tmp_path, "fig2a", capsys)
    assert n["params"]["norms"] == [0.5, 2.0] and n["params"]["interps"] == [-0.5, 0.5] and n["params"]["max_steps"] == 5000
    assert n["params"]["num_pairs"] == 30 and n["params"]["lr"] == 10.0  # untouched defaults stay
    steps = np.array(n["steps"], dtype=float)  # [interp][norm]
    assert n["num_cells_not_converged"] == 0 and (steps[:, 1] > steps[:, 0]).all() and (steps[0] > steps[1]).all()
    assert len(rows) == 4 and {r["norm"] for r in rows} == {"0.5", "2.0"}
    by_cell = {(float(r["interp"]), float(r["norm"])): int(r["steps"]) for r in rows}
    assert by_cell[(-0.5, 2.0)] == n["steps"][0][1] and by_cell[(0.5, 0.5)] == n["steps"][1][0]
    assert "steps until mean cos > 0.999" in printed and f"{n['steps'][0][1]}" in printed


def test_simulate_theory_checks_from_the_command_line(tmp_path, capsys):
    n, rows, printed = _simulate(tmp_path, "theory_checks", capsys)
    thm, cor = n["thm_3_4"], n["cor_3_3"]
    assert thm["one_side_small_step"]["violations"] == 0 and thm["one_side_small_step"]["checked"] > 0
    assert thm["both_sides_acute"]["violations"] == 0 and thm["both_sides_obtuse"]["mismatches_with_predicted_condition"] == 0
    assert thm["one_side_large_step"]["violations"] > 0  # s = 4 > 2: the documented failure of the literal bound
    assert cor["cosine_step_violations"] == 0 and cor["infonce_step_violations"] == 0
    assert cor["infonce_embeddings_checked"] == 2 * 1 * 2 * 32
    assert [(float(r["lr"]), float(r["rho"])) for r in rows] == [(0.1, 1.0), (4.0, 1.0)]
    assert "Cor 3.3 (norms never shrink): cosine steps 0 violations, InfoNCE steps 0 / 128" in printed


def test_simulate_fig2b_from_the_command_line(tmp_path, capsys):
    n, rows, printed = _simulate(tmp_path, "fig2b", capsys)
    assert n["params"]["samples_per_class"] == 150 and n["params"]["k"] == 5 and n["params"]["optimizer"] == "adam"
    assert len(rows) == 4 * 150 and {"norm", "knn_cos_distance", "label"} <= set(rows[0])
    norms = np.array([float(r["norm"]) for r in rows])
    knn = np.array([float(r["knn_cos_distance"]) for r in rows])
    assert n["spearman_norm_vs_knn"] == pytest.approx(spearmanr(norms, knn).statistic, abs=1e-6)
    assert n["norm_mean"] == pytest.approx(norms.mean(), rel=1e-6)
    assert f"{n['spearman_norm_vs_knn']:+.3f}" in printed


def test_simulate_fig2c_from_the_command_line(tmp_path, capsys):
    n, rows, printed = _simulate(tmp_path, "fig2c", capsys)
    assert n["class_probabilities"] == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert sum(n["class_counts"]) == 600 and n["class_counts"][0] > n["class_counts"][-1]
    assert [int(r["step"]) for r in rows][:3] == [0, 3, 6] and int(rows[-1]["step"]) == n["steps"]
    assert [float(rows[-1][f"class_{c}"]) for c in range(4)] == pytest.approx(n["final_mean_norm_per_class"])
    assert len(n["final_mean_norm_per_class"]) == 4 and "final mean norm per class" in printed


@pytest.mark.parametrize(
    "args, expected",
    [
        (["simulate", "fig9"], "invalid choice: 'fig9' (choose from 'fig2a', 'theory_checks', 'fig2b', 'fig2c', 'all')"),
        (["simulate"], "name a simulation: fig2a, theory_checks, fig2b, fig2c or all"),
        (["simulate", "fig2a", "--nonsense", "1"], "unrecognized arguments: --nonsense 1"),
        (["simulate", "fig2a", "--max_steps", "1.5"], "--max_steps: Expected a <class 'int'>. Got value: 1.5"),
        (["simulate", "fig2a", "--lr", "fast"], "--lr: Expected a <class 'float'>. Got value: fast"),
        (["simulate", "fig2a", "--norms", "1,fast"], "argument --norms: expected numbers, got 'fast'"),
        (["simulate", "fig2a", "--num_pairs"], "argument --num_pairs: expected one argument"),
        (["simulate", "fig2a", "stray"], "unrecognized arguments: stray"),
        (["simulate", "all", "--seed", "1"], "unrecognized arguments: --seed 1"),
        (["simulate", "fig2a", "--norms", "-1"], "simulate fig2a: --norms (each value) must be a finite number > 0, got -1.0"),
        (["simulate", "fig2a", "--norms", ","], "simulate fig2a: --norms needs at least one value"),
        (["simulate", "fig2a", "--num_pairs", "-5"], "simulate fig2a: --num_pairs must be an integer >= 1, got -5"),
        (["simulate", "fig2a", "--lr", ".nan"], "simulate fig2a: --lr must be a finite number > 0, got nan"),
        (["simulate", "fig2a", "--lr", "1e400"], "simulate fig2a: --lr must be a finite number > 0, got inf"),
        (["simulate", "fig2a", "--threshold", "1"], "simulate fig2a: --threshold must be a finite number in [-1, 1), got 1.0"),
        (["simulate", "theory_checks", "--dim", "0"], "simulate theory_checks: --dim must be an integer >= 2, got 0"),
        (["simulate", "fig2c", "--class_weights", "0.5,nan"], "--class_weights (each value) must be a finite number >= 0, got nan"),
        (["simulate", "fig2a", "--", "x"], "ssl-norms simulate takes no arguments after --"),
    ],
)
def test_simulate_bad_input_is_one_line(args, expected, tmp_path, capsys):
    from ssl_norms.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs" / "simulations").exists()  # nothing ran (the default output dir, see conftest)


def test_simulate_list_names_every_simulation_and_its_defaults(capsys):
    from ssl_norms.cli import main

    main(["simulate", "--list"])
    printed = capsys.readouterr().out
    for name in SIMULATIONS:
        assert f"\n{name}: " in f"\n{printed}"
    assert "    --num_pairs 500  (>= 1)\n" in printed and "    --class_weights 0.5,0.25,0.125,0.0625  (>= 0)\n" in printed
    assert "    --optimizer adam\n" in printed  # no range for a word


@pytest.mark.timeout(180)
def test_simulate_wandb_logs_the_figure_into_an_offline_run(tmp_path, monkeypatch, capsys):
    from ssl_norms.cli import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / "sim"
    main(["simulate", "fig2a", "--out", str(out), "--wandb", *SMALL_RUNS["fig2a"]])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list(runs[0].glob("files/media/images/simulation/fig2a/fig2a_*.png"))
    assert images and images[0].read_bytes() == (out / "fig2a.png").read_bytes()
    assert (out / "fig2a.json").exists()
