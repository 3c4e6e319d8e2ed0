"""``python -m ssl_norms.repro {plan,run,report}``: the CPU-scale study of issue 16 (``make repro-cpu``).

    python -m ssl_norms.repro plan   [--profile cifar10] [--jobs 2] [--runs DIR]   # points, status, time estimate
    python -m ssl_norms.repro run    [--profile cifar10] [--jobs 2] [--runs DIR]   # run what is not done (resumes)
    python -m ssl_norms.repro report [--profile cifar10] [--runs DIR] [--out DIR]  # results.json, REPRODUCTION.md, PNGs
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssl_norms.repro", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["plan", "run", "report"])
    parser.add_argument("--profile", default="cifar10", help="cifar10 (real data, ~2 h) or demo (seconds)")
    parser.add_argument("--jobs", type=int, default=2, help="points at a time, each on its share of the cores")
    parser.add_argument("--runs", default=None, help="runs root (default $SSL_NORMS_RUNS or ./runs); points go to RUNS/cpu-scale-<profile>/")
    parser.add_argument("--limit", type=int, default=None, help="run: start at most this many points")
    parser.add_argument("--retry-failed", action="store_true", help="run: also retry points whose fit failed")
    parser.add_argument("--skip", nargs="*", default=[], metavar="PATTERN", help="plan, run: leave out points whose label matches (shell patterns)")
    parser.add_argument("--out", default=".", help="report: where REPRODUCTION.md, results.json and figures go")
    args = parser.parse_args(argv)

    from ssl_norms.repro.plan import PROFILES, study_plan
    from ssl_norms.runs import runs_root

    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile!r}; choose from {', '.join(PROFILES)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    profile = PROFILES[args.profile]()
    root = Path(args.runs) if args.runs else runs_root()
    points = study_plan(profile, root)
    if args.action == "plan":
        from ssl_norms.repro.runner import print_plan

        print_plan(points, profile, args.jobs, args.skip)
    elif args.action == "run":
        from ssl_norms.repro.runner import run_plan

        results = run_plan(points, profile, args.jobs, retry_failed=args.retry_failed, limit=args.limit, skip=args.skip)
        failed = [label for label, status in results.items() if status == "failed"]
        if failed:
            raise SystemExit(f"{len(failed)} point(s) failed: {', '.join(failed)} (logs in {points[0].fit.run_dir.parent}/.repro/)")
    else:
        from ssl_norms.repro.report import write_report

        write_report(points, profile, Path(args.out))


if __name__ == "__main__":
    main()
