"""The fault suite's cases (tests/test_faults.py) against an old checkout and new ones: what a user saw in each.

    python benchmarks/fault_table.py --before OLD_CHECKOUT [--after CHECKOUT ...] [--skip CASE ...] [--only TEXT]

Each side builds its own finished run with its own code and runs every case in a copy of it, as the
test does; the verdicts are those of ``test_faults.verdict`` (clean, data-lost, traceback,
silent-wrong, noisy, misleading). ``--skip`` names cases whose command line means something else
in the old checkout (shown as n/a); ``--clear`` names cases whose old one-line message, though not
the new wording the case expects, says what is wrong (shown as clean*). Prints a Markdown table (one
column per checkout) and the count of each verdict per checkout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from test_faults import CASES, DEMO, Place, Runner, run_case, verdict  # noqa: E402


def verdicts(checkout: Path, names: list[str], root: Path, workers: int) -> dict[str, tuple[str, str]]:
    """``{case name: (verdict, stderr's last line)}`` of ``checkout``."""
    root.mkdir(parents=True)
    runner = Runner(checkout)
    try:
        place = Place(root, checkout)
        finished = root / "finished"
        built = runner.run(["fit", *map(place.format, DEMO), "--run_dir", str(finished), "--trainer.enable_progress_bar", "false"],
                           root, {"SSL_NORMS_RUNS": str(root / "runs")})
        assert built.code == 0, built.stderr[-3000:]
        cases = [case for case in CASES if case.name in names]
        with ThreadPoolExecutor(workers) as pool:
            outcomes = pool.map(lambda i_case: run_case(runner, i_case[1], finished, root / f"{i_case[0]:03d}"), enumerate(cases))
            return {outcome.case.name: (verdict(outcome)[0], _said(outcome)) for outcome in outcomes}
    finally:
        runner.close()


def _said(outcome) -> str:
    """The last stderr line, the case folder written as ``<case>``, cut at 120 characters."""
    last = next((line for line in reversed(outcome.lines) if line.strip()), "").replace(str(outcome.place.work), "<case>")
    return (last[:117] + "...") if len(last) > 120 else last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, nargs="+", default=[REPO])
    parser.add_argument("--skip", nargs="*", default=[], help="cases that do not apply to the old checkout")
    parser.add_argument("--clear", nargs="*", default=[], help="cases whose old message is clear in other words")
    parser.add_argument("--only", default="", help="cases whose name contains this text")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    names = [case.name for case in CASES if args.only in case.name]
    sides = [("before", args.before), *((f"after ({path.name})", path) for path in args.after)]
    with tempfile.TemporaryDirectory(prefix="fault-table-") as root, ThreadPoolExecutor(len(sides)) as pool:
        futures = [pool.submit(verdicts, path, [n for n in names if i or n not in args.skip], Path(root) / str(i), args.workers)
                   for i, (_, path) in enumerate(sides)]
        results = [future.result() for future in futures]
    before = results[0]
    for name in args.clear:
        if before.get(name, ("",))[0] == "misleading":
            before[name] = ("clean*", before[name][1])
    print(f"| case | {' | '.join(label for label, _ in sides)} | before: stderr's last line |")
    print("|---" * (len(sides) + 2) + "|")
    for name in names:
        cells = [result.get(name, ("n/a", ""))[0] for result in results]
        print(f"| {name} | {' | '.join(cells)} | {before.get(name, ('', ''))[1].replace('|', '/')} |")
    for (label, _), result in zip(sides, results):
        counts = Counter(verdict for verdict, _ in result.values())
        print(f"\n{label}: {len(result)} cases: " + ", ".join(f"{verdict} {count}" for verdict, count in counts.most_common()))


if __name__ == "__main__":
    main()
