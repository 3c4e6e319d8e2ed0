"""Analyses of trained models: leave-one-out k-NN, norm buckets, human-label joins, Table S1,
Fig 5 curves, and ``ssl-norms analyze`` end to end (on a generated torchvision-format CIFAR-10 and,
when ``$SSL_NORMS_DATA`` is set, on the real CIFAR-10 copy)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from ssl_norms.analysis import (
    AnalysisUnavailable,
    TrainedRun,
    bucket_summary,
    embed_dataset,
    entropy_bits,
    entropy_by_norm,
    human_agreement_by_norm,
    knn_predict_leave_one_out,
    load_datamodule,
    load_model,
    norm_auroc,
    norm_buckets,
    opposite_rate_at_epochs,
    original_train_indices,
    read_metrics_by_epoch,
    run_labels,
)
from ssl_norms.analysis.loading import split_dataset
from ssl_norms.cli import main
from ssl_norms.data import CIFAR10DataModule
from ssl_norms.methods import SimCLR

TINY_CIFAR_FIT = [
    "--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"),
    "--model.init_args.backbone_width", "4", "--model.init_args.projector_dims", "[32,16]",
    "--model.init_args.warmup_epochs", "0",
    "--data.init_args.num_workers", "0", "--data.init_args.eval_batch_size", "250",
    "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
    "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
]


# ---- pure functions ---------------------------------------------------------------------------


def brute_force_loo_knn(feats, labels, num_classes, k, temperature):
    """Reference: every point voted on by its k most cosine-similar other points, one at a time."""
    unit = feats / feats.norm(dim=1, keepdim=True)
    predictions = []
    for i in range(len(unit)):
        others = [j for j in range(len(unit)) if j != i]
        sims = sorted(((float(unit[i] @ unit[j]), j) for j in others), reverse=True)[:k]
        votes = [0.0] * num_classes
        for sim, j in sims:
            votes[int(labels[j])] += math.exp(sim / temperature)
        predictions.append(max(range(num_classes), key=votes.__getitem__))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k", [1, 7, 500])
def test_leave_one_out_knn_matches_brute_force(k):
    g = torch.Generator().manual_seed(k)
    labels = torch.randint(0, 5, (150,), generator=g)
    feats = torch.randn(150, 6, generator=g) + 1.5 * F.one_hot(labels, 6).float()
    feats[1] = feats[0] * 3  # an exact (direction) duplicate: a point other than itself, so it votes
    labels[1] = (labels[0] + 1) % 5
    expected = brute_force_loo_knn(feats.double(), labels, 5, min(k, 149), 0.1)
    got = knn_predict_leave_one_out(feats, labels, 5, k=k, temperature=0.1, chunk_size=32)  # chunks cross boundaries
    assert torch.equal(got, expected)
    if k == 1:  # the duplicate is each other's nearest neighbour, never the point itself
        assert got[0] == labels[1] and got[1] == labels[0]


def test_leave_one_out_differs_from_letting_points_vote_for_themselves():
    from ssl_norms.eval import knn_predict

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(200, 4, generator=g), torch.randint(0, 4, (200,), generator=g)  # labels unrelated to feats
    with_self = (knn_predict(feats, labels, feats, 4, k=1) == labels).float().mean()
    loo = (knn_predict_leave_one_out(feats, labels, 4, k=1) == labels).float().mean()
    assert with_self == 1.0 and loo < 0.5  # 1-NN with itself is always right; without, near chance


def test_leave_one_out_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        knn_predict_leave_one_out(torch.randn(1, 3), torch.zeros(1), 2)
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict_leave_one_out(torch.randn(5, 3), torch.zeros(5), 2, k=0)


def test_norm_buckets_and_bucket_summary():
    norms = torch.tensor([10.0, 0.1, 0.49, 0.5, 5.0, 9.99, 2.0])  # relative: 1, .01, .049, .05, .5, .999, .2
    assert norm_buckets(norms, 20).tolist() == [19, 0, 0, 1, 10, 19, 4]
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    rows = bucket_summary(norms, values, num_buckets=20, min_count=1)
    assert [r["count"] for r in rows][:2] == [2, 1] and rows[19]["count"] == 2 and sum(r["count"] for r in rows) == 7
    assert rows[0]["mean"] == 0.5 and rows[19]["mean"] == 0.5 and math.isnan(rows[2]["mean"])
    assert [r["shown"] for r in rows if r["count"]] == [True, False, False, False, True]  # more than min_count only
    assert rows[3]["relative_norm_low"] == pytest.approx(0.15) and rows[3]["relative_norm_high"] == pytest.approx(0.2)


def test_norm_auroc_and_entropy():
    reference = torch.tensor([3.0, 4.0, 5.0, 6.0])
    assert norm_auroc(reference, torch.tensor([1.0, 2.0])) == pytest.approx(1.0)  # all lower: perfectly novel
    assert norm_auroc(reference, torch.tensor([7.0, 8.0])) == pytest.approx(0.0)
    assert norm_auroc(reference, reference.clone()) == pytest.approx(0.5)
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0, 0], [0.25] * 4])
    assert entropy_bits(probs).tolist() == pytest.approx([0.0, 1.0, 2.0])


def test_original_train_indices_for_both_storage_formats():
    clean = torch.tensor([2, 0, 1, 0, 2, 1, 0])  # the original order
    # image folder: class-sorted, original order inside each class -> positions 0..2 are class 0
    folder_labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    original = original_train_indices(torch.arange(7), folder_labels, clean, "image_folder", num_classes=10)
    assert original.tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert original_train_indices(torch.tensor([4, 1]), torch.tensor([2, 0]), clean, "torchvision", 10).tolist() == [4, 1]
    with pytest.raises(ValueError, match="joining human labels failed"):
        original_train_indices(torch.tensor([0]), torch.tensor([1]), clean, "torchvision", 10)
    with pytest.raises(AnalysisUnavailable, match="cifar10-jpg"):
        original_train_indices(torch.arange(7), folder_labels, clean, "image_folder", num_classes=100)


# ---- metrics files: Fig 5 and Table S1 ------------------------------------------------------------


def write_run(run_dir: Path, epochs: int, steps_per_epoch: int, weight_decay: float, opposite: float) -> Path:
    """A run dir as `ssl-norms fit` leaves it: metrics.csv (with lr rows that have no epoch) and config.yaml."""
    run_dir.mkdir(parents=True)
    columns = ["epoch", "knn/top1", "lr-SGD", "norm/mean", "pairs/opposite_rate", "step"]
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        step = 0
        for epoch in range(epochs):
            for i in range(steps_per_epoch):
                writer.writerow({"lr-SGD": 0.3, "step": step})
                writer.writerow({"epoch": epoch, "norm/mean": 1 + epoch * weight_decay * 100 + i,
                                 "pairs/opposite_rate": opposite / (epoch + 1) + 0.01 * i, "step": step})
                step += 1
            writer.writerow({"epoch": epoch, "knn/top1": 0.1 * (epoch + 1), "step": step - 1})
    (run_dir / "config.yaml").write_text(
        f"model:\n  class_path: ssl_norms.methods.SimCLR\n  init_args:\n    weight_decay: {weight_decay}\n"
        f"run_dir: {run_dir}\ntrainer:\n  default_root_dir: {run_dir}\n"
    )
    return run_dir


def test_read_metrics_by_epoch_averages_each_epoch(tmp_path):
    run = write_run(tmp_path / "a", epochs=3, steps_per_epoch=2, weight_decay=0.01, opposite=0.2)
    by_epoch = read_metrics_by_epoch(run)
    assert by_epoch["norm/mean"] == pytest.approx({0: 1.5, 1: 2.5, 2: 3.5})
    assert by_epoch["knn/top1"] == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3})
    assert "lr-SGD" not in by_epoch  # logged without an epoch


def test_curves_command_plots_several_runs_with_labels_from_their_configs(tmp_path):
    runs = [write_run(tmp_path / f"wd{i}", epochs=12, steps_per_epoch=2, weight_decay=wd, opposite=0.1) for i, wd in enumerate([0.0, 0.0005])]
    assert run_labels(runs) == ["weight_decay=0.0", "weight_decay=0.0005"]
    out = tmp_path / "out"
    main(["analyze", "fig5", "--runs", *map(str, runs), "--out", str(out)])
    assert (out / "curves.png").stat().st_size > 20_000
    with open(out / "curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {r["run"] for r in rows} == {"weight_decay=0.0", "weight_decay=0.0005"}
    last = [r for r in rows if r["run"] == "weight_decay=0.0005" and r["epoch"] == "12"][0]
    assert float(last["norm_mean"]) == pytest.approx(1 + 11 * 0.05 + 0.5) and float(last["knn_top1"]) == pytest.approx(1.2)
    assert json.loads((out / "curves.json").read_text())["final"]["weight_decay=0.0"]["epoch"] == 12


def _method_run(run_dir: Path, method: str, weight_decay: float, seed: int = 0) -> Path:
    """A write_run whose config is a SimCLR or SimSiam config: keys only one method has, as in fit's config.yaml."""
    write_run(run_dir, epochs=2, steps_per_epoch=2, weight_decay=weight_decay, opposite=0.1)
    own = "    temperature: 0.5\n" if method == "SimCLR" else "    fixed_predictor_lr: false\n    predictor_hidden_dims: [512]\n"
    (run_dir / "config.yaml").write_text(
        f"seed_everything: {seed}\nmodel:\n  class_path: ssl_norms.methods.{method}\n  init_args:\n{own}"
        f"    weight_decay: {weight_decay}\nrun_dir: {run_dir}\n")
    return run_dir


def test_run_labels_tell_methods_settings_and_seeds_apart(tmp_path):
    # Fig 5's runs: the first sorted differing keys (class_path, fixed_predictor_lr, predictor_hidden_dims)
    # used to give both SimCLR runs one label
    runs = [_method_run(tmp_path / f"r{i}", m, wd) for i, (m, wd) in enumerate([("SimCLR", 0.0), ("SimCLR", 1e-5), ("SimSiam", 0.0), ("SimSiam", 5e-4)])]
    assert run_labels(runs) == ["method=simclr, weight_decay=0.0", "method=simclr, weight_decay=1e-05",
                                "method=simsiam, weight_decay=0.0", "method=simsiam, weight_decay=0.0005"]
    seeds = [_method_run(tmp_path / f"s{seed}", "SimCLR", 0.0, seed) for seed in (0, 1)]
    assert run_labels(seeds) == ["seed=0", "seed=1"]
    twins = [_method_run(tmp_path / where / "run", "SimCLR", 0.0) for where in ("a", "b")]  # same config, same folder name
    labels = run_labels([*twins, seeds[1]])
    assert labels == ["seed=0 (run) (#1)", "seed=0 (run) (#2)", "seed=1"] and len(set(labels)) == 3
    no_configs = [tmp_path / where / "x" for where in ("c", "d")]
    for run in no_configs:
        run.mkdir(parents=True)
    assert run_labels(no_configs) == [f"x ({run})" for run in no_configs]


def test_curves_keeps_every_run_of_different_methods(tmp_path):
    runs = [_method_run(tmp_path / f"r{i}", m, 0.0005) for i, m in enumerate(["SimCLR", "SimSiam"])]
    out = tmp_path / "out"
    main(["analyze", "curves", "--runs", *map(str, runs), "--out", str(out)])
    final = json.loads((out / "curves.json").read_text())["final"]
    assert sorted(final) == ["method=simclr", "method=simsiam"]
    assert all(v["epoch"] == 2 and v["knn_top1"] == pytest.approx(0.2) for v in final.values())


def test_opposite_pairs_table_from_the_monitor_logs(tmp_path):
    run = write_run(tmp_path / "r", epochs=12, steps_per_epoch=2, weight_decay=0.0, opposite=0.2)
    table = opposite_rate_at_epochs(run, ["last", 10, 1, 100])
    assert list(table) == ["epoch 1", "epoch 10", "epoch 12", "epoch 100"]
    assert table["epoch 1"] == pytest.approx(0.205) and table["epoch 10"] == pytest.approx(0.025)
    assert math.isnan(table["epoch 100"])  # not reached
    out = tmp_path / "out"
    main(["analyze", "tableS1", "--runs", str(run), "--epochs", "1,10,100,last", "--out", str(out)])
    markdown = (out / "opposite_pairs.md").read_text()
    assert "| r | 20.50% | 2.50% | 2.17% | - |" in markdown
    assert (out / "opposite_pairs.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, expected",
    [
        (["analyze", "fig99"], "invalid choice: 'fig99'"),
        (["analyze", "knn_by_norm", "--split", "val"], "--split: Expected a typing.Literal['train', 'test']. Got value: val"),
        (["analyze", "fig4_left", "--k", "many"], "Expected a <class 'int'>. Got value: many"),
        (["analyze", "curves", "--k", "3"], "unrecognized arguments: --k 3"),
        (["analyze", "knn_by_norm"], "needs --ckpt"),
        (["analyze", "curves", "--runs", "nowhere"], "no metrics.csv"),
        (["analyze", "knn_by_norm", "--ckpt", "x.ckpt"], "no run config"),
    ],
)
def test_analyze_bad_input_is_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, err


# ---- a generated torchvision-format CIFAR-10 with human labels --------------------------------------

N_TRAIN, N_TEST = 300, 200


def write_cifar10_with_human_labels(root: Path) -> dict[str, np.ndarray]:
    """torchvision's CIFAR-10 batches (classes differ in colour), a CIFAR-10N file and a CIFAR-10H file."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 120, (n, 3, 32, 32)) + (12 * labels)[:, None, None, None] * np.array([1, 0, 2])[None, :, None, None]
        return {"data": images.clip(0, 255).astype(np.uint8).reshape(n, -1), "labels": labels.tolist()}

    batches = [batch(N_TRAIN // 5) for _ in range(5)]
    for i, entry in enumerate(batches, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    test = batch(N_TEST)
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    clean = np.concatenate([b["labels"] for b in batches])
    aggre = np.where(rng.random(N_TRAIN) < 0.2, (clean + 1) % 10, clean)
    (root / "cifar10n").mkdir()
    torch.save({"clean_label": clean, "aggre_label": aggre}, root / "cifar10n" / "CIFAR-10_human.pt")
    probs = rng.dirichlet(np.full(10, 0.3), N_TEST)
    (root / "cifar10h").mkdir()
    np.save(root / "cifar10h" / "cifar10h-probs.npy", probs)
    return {"clean": clean, "aggre": aggre, "probs": probs, "test_labels": np.array(test["labels"])}


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """A SimCLR checkpoint trained for 6 steps on the generated torchvision-format CIFAR-10."""
    root = tmp_path_factory.mktemp("tv_cifar")
    truth = write_cifar10_with_human_labels(root)
    run_dir = root / "run"
    main(["fit", *TINY_CIFAR_FIT, "--data.init_args.root", str(root), "--data.init_args.batch_size", "50",
          "--run_dir", str(run_dir)])
    return root, run_dir, truth


def test_load_model_and_datamodule_from_the_run_dir(generated_run):
    root, run_dir, _ = generated_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    assert type(model) is SimCLR and not model.training and model.hparams.backbone_width == 4
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    from ssl_norms.analysis.loading import read_run_config

    datamodule = load_datamodule(read_run_config(run_dir / "config.yaml"), root)
    assert isinstance(datamodule, CIFAR10DataModule) and len(datamodule.bank_set) == N_TRAIN


def test_embed_dataset_is_eval_mode_ordered_and_restores_mode(generated_run):
    root, run_dir, _ = generated_run
    run = TrainedRun.load(run_dir / "checkpoints" / "last.ckpt", data_root=root)
    dataset = run.datamodule.val_set
    run.model.train()
    embedded = embed_dataset(run.model, dataset, batch_size=64)
    assert run.model.training  # restored
    run.model.eval()
    with torch.no_grad():
        features, embeddings = run.model.embed(torch.stack([dataset[i]["image"] for i in range(N_TEST)]))
    assert torch.allclose(embedded["embeddings"], embeddings, atol=1e-5) and torch.allclose(embedded["features"], features, atol=1e-5)
    assert embedded["index"].tolist() == list(range(N_TEST))


def test_augmented_option_uses_seeded_first_views(generated_run):
    root, run_dir, _ = generated_run
    loaded = TrainedRun.load(run_dir / "checkpoints" / "last.ckpt", data_root=root)
    model, datamodule = loaded.model, loaded.datamodule
    plain = TrainedRun(model, datamodule, max_samples=120)
    augmented, again = (TrainedRun(model, datamodule, max_samples=120, augmented=True) for _ in range(2))
    assert torch.equal(plain.embeddings("train")["index"], augmented.embeddings("train")["index"])
    assert not torch.allclose(plain.embeddings("train")["embeddings"], augmented.embeddings("train")["embeddings"], atol=1e-3)
    assert torch.equal(augmented.embeddings("train")["embeddings"], again.embeddings("train")["embeddings"])  # seeded
    # test images are never augmented
    assert torch.equal(augmented.embeddings("test")["embeddings"], plain.embeddings("test")["embeddings"])
    with pytest.raises(ValueError, match="training split only"):
        split_dataset(datamodule, "test", augmented=True)


def test_human_label_analyses_join_by_original_position(generated_run, tmp_path):
    root, run_dir, truth = generated_run
    run = TrainedRun.load(run_dir / "checkpoints" / "last.ckpt", data_root=root, max_samples=250)
    result = entropy_by_norm(run, tmp_path, min_count=5)
    samples = np.load(tmp_path / "entropy_by_norm_samples.npz")
    index = samples["index"]
    assert len(index) == 200 and (samples["label"] == truth["test_labels"][index]).all()
    expected = -(truth["probs"][index] * np.log2(np.where(truth["probs"][index] > 0, truth["probs"][index], 1))).sum(1)
    assert np.allclose(samples["entropy_bits"], expected)
    buckets = norm_buckets(torch.as_tensor(samples["norm"]), 20).numpy()
    table = json.loads((tmp_path / "entropy_by_norm.json").read_text())
    for row in table["buckets"]:
        if row["count"]:
            assert row["mean"] == pytest.approx(expected[buckets == row["bucket"]].mean())
    assert result.numbers["overall"] == pytest.approx(expected.mean())

    human_agreement_by_norm(run, tmp_path, min_count=5)
    samples = np.load(tmp_path / "human_agreement_by_norm_samples.npz")
    assert len(samples["index"]) == 250  # max_samples subset, joined by its full-dataset index
    assert (samples["agrees"] == (truth["aggre"] == truth["clean"])[samples["index"]]).all()


def test_novelty_shows_every_set_with_the_runs_own_normalisation(generated_run, tmp_path):
    """An evaluation set goes through the run's DataModule: its size and mean/std, not the set's own
    statistics. With a DataModule normalising unlike CIFAR-10's defaults, the cifar10_test norms of
    novelty equal the norms of the run's own (identically transformed) test images."""
    from ssl_norms.analysis import novelty
    from ssl_norms.data.eval_sets import load_eval_set

    root, run_dir, _ = generated_run

    class OddNormalisation(CIFAR10DataModule):
        mean, std = (0.1, 0.6, 0.3), (0.5, 0.2, 0.4)

    datamodule = OddNormalisation(root=str(root), batch_size=8, num_workers=0)
    datamodule.setup()
    run = TrainedRun(load_model(run_dir / "checkpoints" / "last.ckpt"), datamodule)
    result = novelty(run, tmp_path, sets="cifar10_test")
    samples = np.load(tmp_path / "novelty_samples.npz")
    own = run.embeddings("test")
    assert samples["cifar10_test_index"].tolist() == own["index"].tolist() == list(range(N_TEST))
    assert np.allclose(samples["cifar10_test_norm"], own["embeddings"].norm(dim=1).numpy(), rtol=1e-5)
    # the set's own statistics would show the model other images: the check above can fail
    foreign = embed_dataset(run.model, load_eval_set("cifar10_test", root))["embeddings"].norm(dim=1).numpy()
    assert not np.allclose(samples["cifar10_test_norm"], foreign, rtol=1e-3)
    assert result.numbers["relative_mean/training set"] == pytest.approx(1.0)
    assert 0 <= result.numbers["auroc/cifar10_test"] <= 1


def test_analyze_novelty_reports_detection_per_scorer_and_ood_set_and_leaves_the_run_alone(generated_run, tmp_path, capsys):
    root, run_dir, _ = generated_run
    before = _hashes(run_dir)
    out = tmp_path / "novelty"
    main(["analyze", "novelty", "--ckpt", str(run_dir), "--data", str(root), "--out", str(out), "--sets", "cifar10_test",
          "--ood", "mnist,noise,cifar10_test_blur2", "--k", "20", "--no-wandb"])
    assert _hashes(run_dir) == before
    numbers = json.loads((out / "novelty.json").read_text())
    assert "mnist_test" in numbers["skipped"]  # the generated root has no MNIST: named, not fatal
    assert [r["set"] for r in numbers["sets"]] == ["training set", "cifar10_test", "cifar10_test_noise5", "cifar10_test_blur2"]
    rows = list(csv.DictReader(open(out / "novelty_detection.csv")))
    assert [(r["ood_set"], r["scorer"]) for r in rows] == [
        (s, scorer) for s in ("cifar10_test_noise5", "cifar10_test_blur2") for scorer in ("norm", "relative", "class_relative", "msp")]
    assert all(0 <= float(r["auroc"]) <= 1 and 0 <= float(r["fpr95"]) <= 1 and r["num_id"] == r["num_ood"] == str(N_TEST) for r in rows)
    by_scorer = {(r["ood_set"], r["scorer"]): float(r["auroc"]) for r in rows}
    assert by_scorer[("cifar10_test_noise5", "norm")] == pytest.approx(by_scorer[("cifar10_test_noise5", "relative")])  # same ranking
    assert 0 <= numbers["in_distribution_accuracy"]["probe_top1"] <= 1
    printed = capsys.readouterr().out
    assert re.search(r"note: test images vs cifar10_test_noise5: norm AUROC \d\.\d{3} FPR@95 \d\.\d{3}, relative .*, msp AUROC", printed)


def test_novelty_needs_images():
    from ssl_norms.analysis import novelty
    from ssl_norms.data import SyntheticLatentClasses

    datamodule = SyntheticLatentClasses(train_samples=64, val_samples=32, num_workers=0)
    datamodule.setup()
    with pytest.raises(AnalysisUnavailable, match="has no images"):
        novelty(TrainedRun(SimCLR(backbone="mlp", input_dim=64, projector_dims=[8, 4]), datamodule), Path("unused"))


def test_cifar100n_agreement_on_the_torchvision_format(tmp_path):
    from ssl_norms.data.cifar import CIFAR100DataModule

    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = {split: rng.integers(0, 100, n) for split, n in (("train", 120), ("test", 20))}
    for split, labels in fine.items():
        images = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        (folder / split).write_bytes(pickle.dumps({"data": images, "fine_labels": labels.tolist()}))
    noisy = np.where(rng.random(120) < 0.4, (fine["train"] + 3) % 100, fine["train"])
    (tmp_path / "cifar10n").mkdir()
    torch.save({"clean_label": fine["train"], "noisy_label": noisy}, tmp_path / "cifar10n" / "CIFAR-100_human.pt")
    datamodule = CIFAR100DataModule(root=str(tmp_path), batch_size=8, num_workers=0)
    datamodule.setup()
    run = TrainedRun(SimCLR(backbone_width=4, projector_dims=[8, 4]), datamodule, max_samples=90)
    result = human_agreement_by_norm(run, tmp_path / "out", min_count=5)
    samples = np.load(tmp_path / "out" / "human_agreement_by_norm_samples.npz")
    assert (samples["agrees"] == (noisy == fine["train"])[samples["index"]]).all()
    assert result.numbers["label_key"] == "noisy_label" and result.numbers["overall"] == pytest.approx(samples["agrees"].mean())


def test_entropy_by_norm_refuses_the_image_folder_copy(tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "data" / "cifar10-jpg", {"train": 4, "test": 4}, num_classes=10).parent
    datamodule = CIFAR10DataModule(root=str(root), batch_size=8, num_workers=0)
    datamodule.setup()
    model = SimCLR(backbone_width=4, projector_dims=[8, 4])
    with pytest.raises(AnalysisUnavailable, match="join is not possible"):
        entropy_by_norm(TrainedRun(model, datamodule), tmp_path)


def test_analyze_all_on_a_checkpoint_writes_every_figure(generated_run, tmp_path):
    root, run_dir, _ = generated_run
    out = tmp_path / "all"
    main(["analyze", "all", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--data", str(root),
          "--out", str(out), "--min_count", "10", "--num_pairs", "100", "--no-wandb"])
    for name in ("knn_by_norm", "human_agreement_by_norm", "entropy_by_norm", "extremes", "opposite_pairs", "curves"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
        assert (out / f"{name}.csv").exists() and (out / f"{name}.json").exists(), name
    knn = json.loads((out / "knn_by_norm.json").read_text())
    assert knn["num_images"] == N_TRAIN and 0 <= knn["overall"] <= 1 and knn["k"] == 200
    assert sum(b["count"] for b in knn["buckets"]) == N_TRAIN
    table = list(csv.DictReader(open(out / "opposite_pairs.csv")))
    assert 0 <= float(table[0]["checkpoint (recomputed, eval mode)"]) <= 1
    extremes = list(csv.DictReader(open(out / "extremes.csv")))
    highest = [float(r["norm"]) for r in extremes if r["kind"] == "highest" and r["class"] == extremes[0]["class"]]
    lowest = [float(r["norm"]) for r in extremes if r["kind"] == "lowest" and r["class"] == extremes[0]["class"]]
    assert highest == sorted(highest, reverse=True) and lowest == sorted(lowest) and min(highest) >= max(lowest) - 1e-6


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_analyze_writes_each_call_into_a_new_folder_and_never_touches_the_run(generated_run, capsys):
    root, run_dir, _ = generated_run
    before = _hashes(run_dir)
    folders_before = {p.name for p in run_dir.iterdir()}
    for ckpt in (run_dir / "checkpoints" / "last.ckpt", run_dir):  # a checkpoint, then the run directory itself
        main(["analyze", "knn_by_norm", "--ckpt", str(ckpt), "--data", str(root), "--min_count", "10", "--no-wandb"])
    after = _hashes(run_dir)
    assert {name: after[name] for name in before} == before  # every file of the run byte-identical
    new = sorted({p.name for p in run_dir.iterdir()} - folders_before)
    assert len(new) == 2 and all(re.fullmatch(r"analyze-\d{8}-\d{6}(-\d+)?", name) for name in new), new
    for name in new:
        assert sorted(p.name for p in (run_dir / name).iterdir()) == [f"knn_by_norm{x}" for x in (".csv", ".json", ".png", "_samples.npz")]
    printed = capsys.readouterr()
    assert f"analyzing {run_dir / 'checkpoints' / 'last.ckpt'} (global step 6)" in printed.err
    assert str(run_dir / new[1] / "knn_by_norm.png") in printed.out


def test_analyze_ckpt_run_dir_takes_its_newest_checkpoint_by_step(generated_run, tmp_path, capsys):
    root, run_dir, _ = generated_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    later = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    later["global_step"] = 60
    torch.save(later, run / "checkpoints" / "epoch=9.ckpt")  # sorts before last.ckpt, holds the higher step
    for ckpt in (run, run / "checkpoints"):
        main(["analyze", "knn_by_norm", "--ckpt", str(ckpt), "--data", str(root), "--min_count", "10", "--no-wandb"])
        assert f"analyzing {run / 'checkpoints' / 'epoch=9.ckpt'} (global step 60)" in capsys.readouterr().err


def test_analyze_refuses_a_folder_without_checkpoints_and_an_out_inside_the_run_files(generated_run, tmp_path, capsys):
    root, run_dir, _ = generated_run
    (tmp_path / "empty").mkdir()
    for args, expected in [
        (["--ckpt", str(tmp_path / "empty")], f"no readable checkpoint in {tmp_path / 'empty'} (looked for checkpoints/*.ckpt and hpc_ckpt_*.ckpt)"),
        (["--ckpt", str(run_dir), "--out", str(run_dir)], f"--out {run_dir} is a run directory: analyses never write among a run's files"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["analyze", "knn_by_norm", *args, "--data", str(root)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("empty/*")) and not list(run_dir.glob("analyze-*/*.skipped.txt"))


@pytest.mark.timeout(180)
def test_analysis_figures_go_to_an_offline_wandb_run_without_hanging(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = write_run(tmp_path / "r", epochs=3, steps_per_epoch=2, weight_decay=0.0, opposite=0.2)
    (run / "wandb_run_id").write_text("abc123def456")  # the run logged to W&B: analyses join its W&B run
    main(["analyze", "curves", "--runs", str(run)])
    offline = list((run / "wandb").glob("offline-run-*abc123def456"))
    assert offline and list(offline[0].glob("*.wandb"))
    assert [p.parent.name.startswith("analyze-") for p in run.glob("*/curves.png")] == [True]


@pytest.mark.timeout(180)
def test_analysis_figures_go_into_an_active_wandb_run_and_leave_it_open(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = write_run(tmp_path / "r", epochs=3, steps_per_epoch=2, weight_decay=0.0, opposite=0.2)
    active = wandb.init(project="p", dir=str(tmp_path / "active"), mode="offline", settings=wandb.Settings(console="off", silent=True))
    try:
        main(["analyze", "curves", "--runs", str(run), "--wandb"])
        assert wandb.run is active  # a run someone else started stays open
        images = list(Path(active.dir).glob("media/images/analysis/curves/curves_*.png"))
        assert images and images[0].read_bytes() == next(run.glob("analyze-*/curves.png")).read_bytes()
        assert not (run / "wandb").exists()  # no second run
    finally:
        active.finish()


# ---- the real CIFAR-10 copy ($SSL_NORMS_DATA) ------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """SimCLR (ResNet-18 of width 4) trained for 20 steps on 2,000 real CIFAR-10 images."""
    root = os.environ.get("SSL_NORMS_DATA")
    if not root or not (Path(root) / "cifar10-jpg" / "train").is_dir():
        pytest.skip("real data not available: set SSL_NORMS_DATA to a folder with cifar10-jpg/")
    run_dir = tmp_path_factory.mktemp("real") / "run"
    main(["fit", *TINY_CIFAR_FIT, "--data.init_args.root", root, "--data.init_args.batch_size", "100",
          "--data.init_args.max_train_samples", "2000", "--data.init_args.max_val_samples", "500", "--run_dir", str(run_dir)])
    return Path(root), run_dir


@pytest.mark.real_data
def test_cifar10n_join_on_the_real_image_folder(real_run):
    root, run_dir = real_run
    table = torch.load(root / "cifar10n" / "CIFAR-10_human.pt", weights_only=False)
    clean, aggre = torch.as_tensor(table["clean_label"]), torch.as_tensor(table["aggre_label"])
    folder_labels = CIFAR10DataModule(root=str(root)).load_split(train=True)[1]
    original = original_train_indices(torch.arange(50_000), folder_labels, clean, "image_folder", 10)  # raises on any mismatch
    assert torch.equal(clean[original], folder_labels)  # 100%: the folder class is the clean label
    assert len(torch.unique(original)) == 50_000  # a permutation of the original order
    run = TrainedRun.load(run_dir / "checkpoints" / "last.ckpt", data_root=root)
    index = run.embeddings("train")["index"]  # the run's 2,000-image subset, by full-dataset position
    assert len(index) == 2000 and int(index.max()) > 2000
    agreement = (aggre[original[index]] == clean[original[index]]).double().mean().item()
    assert 0.88 < agreement < 0.94  # CIFAR-10N's aggregate labels are ~91% correct


@pytest.mark.real_data
def test_analyze_all_on_a_real_cifar10_checkpoint(real_run, tmp_path):
    root, run_dir = real_run
    out = tmp_path / "analysis"
    main(["analyze", "all", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--data", str(root), "--out", str(out),
          "--max_samples", "1000", "--num_pairs", "200", "--no-wandb"])
    for name in ("novelty", "knn_by_norm", "human_agreement_by_norm", "extremes", "opposite_pairs", "curves"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
        assert (out / f"{name}.csv").exists() and (out / f"{name}.json").exists(), name
    assert "join is not possible" in (out / "entropy_by_norm.skipped.txt").read_text()  # image folder: no CIFAR-10H
    novelty = json.loads((out / "novelty.json").read_text())
    sets = {row["set"]: row for row in novelty["sets"]}
    assert set(sets) == {"training set", "cifar10_test", "mnist_test", "cifar10_test_noise5", "cifar10_test_blur5"}
    assert "cifar100_test" in novelty["skipped"]
    assert sets["training set"]["relative_mean"] == pytest.approx(1.0)
    assert all(0 <= sets[s]["auroc_vs_training"] <= 1 for s in ("cifar10_test", "mnist_test"))
    assert abs(sets["cifar10_test"]["auroc_vs_training"] - 0.5) < abs(sets["mnist_test"]["auroc_vs_training"] - 0.5)
    detection = {(r["ood_set"], r["scorer"]) for r in novelty["detection"]}
    assert detection == {(s, scorer) for s in ("mnist_test", "cifar10_test_noise5", "cifar10_test_blur5")
                         for scorer in ("norm", "relative", "class_relative", "msp")}
    human = json.loads((out / "human_agreement_by_norm.json").read_text())
    assert human["storage"] == "image_folder" and 0.87 < human["overall"] < 0.95
    knn = json.loads((out / "knn_by_norm.json").read_text())
    assert knn["num_images"] == 1000 and 0.1 < knn["overall"] < 1.0  # 10 classes: above chance after 20 steps
    assert any(b["shown"] for b in knn["buckets"])
