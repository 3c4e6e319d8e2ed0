"""k-NN search: the fp32 vote, ``knn_predict`` (low-precision search, certified or recomputed in fp32),
sklearn's brute-force cosine k-NN and a bf16 matmul + top-k floor, on the same data in one run.

The data are class-structured like real embeddings (a Gaussian class mean plus Gaussian noise, unit
norm after normalisation): how many queries the certificate leaves to fp32 depends on how decisive
the votes are, so the script prints that share too. sklearn (brute-force cosine, equal votes: a
callable weighting like exp(cos / temperature) runs far slower) is skipped with a note when not
installed.

    python benchmarks/knn.py                                   # 50k x 10k, d=512, k=200, 2 threads
    python benchmarks/knn.py --bank 5000 --queries 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ssl_norms.eval import SEARCH_LISTED, _certified_scores, _LowPrecisionBank, knn_predict, search_dtype


def make_data(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(args.classes, args.dim, generator=g)
    labels = torch.randint(0, args.classes, (args.bank + args.queries,), generator=g)
    feats = means[labels] + args.noise * torch.randn(len(labels), args.dim, generator=g)
    return feats[: args.bank], labels[: args.bank], feats[args.bank :], labels[args.bank :]


def floor(bank: torch.Tensor, queries: torch.Tensor, k: int | None, chunk: int = 1024) -> None:
    """What a plain bf16 search does: one bf16 matmul and one top-k per chunk of queries (k=None:
    the matmul alone, the compute limit of any search that looks at every similarity)."""
    low = F.normalize(bank, dim=1).bfloat16()
    for part in F.normalize(queries, dim=1).bfloat16().split(chunk):
        sim = part @ low.T
        if k is not None:
            sim.topk(k, dim=1)


def sklearn_predict(bank, bank_labels, queries, k):
    try:
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError:
        return None
    model = KNeighborsClassifier(k, metric="cosine", algorithm="brute", n_jobs=2)  # equal votes: its fast path
    return torch.from_numpy(model.fit(bank.numpy(), bank_labels.numpy()).predict(queries.numpy()))


def interleaved(fns: dict, rounds: int) -> tuple[dict[str, float], dict]:
    """Median time and last result of each function, the functions taking turns round by round so
    that machine noise hits them alike."""
    times, results = {name: [] for name in fns}, {}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=float, default=4.0, help="noise std per dimension, class means' is 1 (4: top-1 ~0.998, 6: ~0.97)")
    parser.add_argument("-k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many interleaved timings (sklearn: one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bank, bank_labels, queries, labels = make_data(args)
    c = args.classes
    print(f"{args.bank} bank x {args.queries} queries, d={args.dim}, k={args.k}, {args.threads} threads, "
          f"search {search_dtype('cpu', len(bank))}, median of {args.rounds} interleaved rounds")

    times, results = interleaved({
        "fp32": lambda: knn_predict(bank, bank_labels, queries, c, args.k, args.temperature, search=torch.float32),
        "new": lambda: knn_predict(bank, bank_labels, queries, c, args.k, args.temperature),
        "floor": lambda: floor(bank, queries, args.k),
        "matmul": lambda: floor(bank, queries, None),
    }, args.rounds)
    (t_fp32, t_new, t_floor, t_mm), fp32, new = times.values(), results["fp32"], results["new"]
    t_sk, sk = interleaved({"sklearn": lambda: sklearn_predict(bank, bank_labels, queries, args.k)}, 1)
    t_sk, sk = t_sk["sklearn"], sk["sklearn"]
    print(f"fp32 knn_predict   {t_fp32:7.2f} s   top-1 {(fp32 == labels).float().mean():.4f}")
    print(f"knn_predict        {t_new:7.2f} s   identical to fp32: {bool((new == fp32).all())}")
    print(f"bf16 matmul+topk   {t_floor:7.2f} s   (floor)")
    print(f"bf16 matmul alone  {t_mm:7.2f} s   (compute limit)")
    if sk is None:
        print("sklearn            skipped: scikit-learn is not installed")
    else:
        print(f"sklearn brute      {t_sk:7.2f} s   predictions (equal votes) as fp32: {(sk == fp32).float().mean():.4f}")
    print(f"knn_predict: {t_floor / t_new:.2f}x of the floor (goal >= 0.9), {t_mm / t_new:.2f}x of the compute limit, "
          f"{t_fp32 / t_new:.2f}x faster than fp32"
          + ("" if sk is None else f", {t_sk / t_new:.2f}x faster than sklearn (goal >= 5)"))
    bound, rescored = recomputed_shares(bank, bank_labels, queries[:1024], c, args)
    print(f"queries the rounding bound leaves uncertified (first 1024): {bound:.3f}; after fp32 rescoring of "
          f"their listed neighbours: {rescored:.3f}")


def recomputed_shares(bank, bank_labels, queries, num_classes, args) -> tuple[float, float]:
    """Shares of queries whose top-1 the rounding bound cannot certify, and of those that rescoring
    their listed neighbours in fp32 cannot either (knn_predict redoes those in fp32)."""
    low_bank = _LowPrecisionBank(F.normalize(bank, dim=1), search_dtype("cpu", len(bank)))
    queries = F.normalize(queries, dim=1)
    top, idx, bound, unlisted = low_bank.search(queries, SEARCH_LISTED * args.k)
    vote = dict(bank_labels=bank_labels, num_classes=num_classes, k=args.k, temperature=args.temperature, exact_top=(1,))
    _, certified = _certified_scores(top, idx, bound, unlisted, **vote)
    redo = (~certified).nonzero().squeeze(1)
    _, rescored = _certified_scores(*low_bank.rescore(queries[redo], idx[redo]), unlisted[redo], **vote)
    return len(redo) / len(queries), int((~rescored).sum()) / len(queries)


if __name__ == "__main__":
    main()
