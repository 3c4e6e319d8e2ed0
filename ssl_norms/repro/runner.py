"""Run a study plan: estimate first, then its points in order, resumable and parallel-safe.

State lives beside the run dirs, never inside them: ``<runs>/<sweep>/.repro/<label>/`` holds the
point's claim (the run-dir lock of :mod:`ssl_norms.runs`, so a dead runner's claim is taken over),
``fit.log`` (the fit's output) and ``done.json`` or ``failed.json`` when the fit has ended.

* resumable: a point with ``done.json`` is skipped; one that was interrupted is run again and its
  fit resumes from its ``last.ckpt`` (``SweepPoint.fit_args``); a failed point is retried only with
  ``retry_failed``;
* parallel-safe: runners started twice on the same runs root claim different points;
* ``jobs`` points at a time, each pinned to its share of this process's CPU cores (so each fit
  sizes its loader workers and torch threads for those cores).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from ssl_norms.repro.plan import Profile, StudyPoint, estimate_seconds

STATE_DIR = ".repro"


def state_dir(point: StudyPoint) -> Path:
    return point.fit.run_dir.parent / STATE_DIR / point.label


def point_status(point: StudyPoint) -> str:
    """``done``, ``failed``, ``running`` (claimed by a live runner), ``partial`` (checkpoints, not
    finished) or ``todo``."""
    state = state_dir(point)
    if (state / "done.json").exists():
        return "done"
    if (state / "failed.json").exists():
        return "failed"
    from ssl_norms.runs import holds_checkpoints, is_locked

    if is_locked(state):
        return "running"
    return "partial" if holds_checkpoints(point.fit.run_dir) else "todo"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def print_plan(points: Sequence[StudyPoint], profile: Profile, jobs: int, skip: Sequence[str] = ()) -> float:
    """The plan table and the estimated wall time of what is left (``skip`` patterns left out);
    returns that estimate (seconds)."""
    left = 0.0
    print(f"{'#':>3}  {'phase':<10} {'point':<42} {'status':<8} {'estimate':>8}")
    for point in points:
        status = point_status(point)
        if status != "done" and any(fnmatch(point.label, pattern) for pattern in skip):
            status = "skipped"
        seconds = estimate_seconds(point, profile, jobs)
        left += 0 if status in ("done", "skipped") else seconds
        print(f"{point.fit.index:>3}  {point.phase:<10} {point.label:<42} {status:<8} {minutes(seconds):>8}")
    done = sum(point_status(p) == "done" for p in points)
    wall = left / jobs
    skipped = f" ({sum(any(fnmatch(p.label, pat) for pat in skip) for p in points if point_status(p) != 'done')} skipped)" if skip else ""
    print(f"profile {profile.name}: {len(points)} points, {done} done; {len(points) - done} left{skipped}, "
          f"estimated {minutes(wall)} with {jobs} at a time ({profile.train_images} images x {profile.epochs} epochs each)",
          flush=True)
    return wall


def core_sets(jobs: int) -> list[set[int]]:
    """This process's cores split into ``jobs`` disjoint sets (all of them for every job when fewer cores)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < jobs:
        return [set(cores)] * jobs
    share = len(cores) // jobs
    return [set(cores[i * share:(i + 1) * share]) for i in range(jobs)]


def launch_fit(point: StudyPoint, cores: set[int], log: Path) -> subprocess.Popen:
    """``ssl-norms fit`` of ``point`` in a subprocess pinned to ``cores``, output to ``log``."""
    command = [sys.executable, "-m", "ssl_norms.main", *point.fit.fit_args()]
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores and hasattr(os, "sched_setaffinity") else None
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_plan(
    points: Sequence[StudyPoint], profile: Profile, jobs: int = 1, *, retry_failed: bool = False, limit: int | None = None,
    skip: Sequence[str] = (),
    launch: Callable[[StudyPoint, set[int], Path], subprocess.Popen] = launch_fit, poll_s: float = 2.0,
) -> dict[str, str]:
    """Run every point not done, ``jobs`` at a time, in plan order; returns ``{label: status}`` of the
    points this call ran. ``limit`` stops after starting that many points (tests, partial sessions);
    ``skip`` leaves out the points whose label matches one of its shell patterns (the report shows
    them as not run)."""
    from ssl_norms.runs import RunError, acquire_lock

    print_plan(points, profile, jobs, skip)
    slots = core_sets(jobs)
    free = list(range(jobs))
    running: dict[int, tuple[StudyPoint, subprocess.Popen, Callable[[], None], float]] = {}
    queue = [p for p in points if point_status(p) not in ("done", "running") and (retry_failed or point_status(p) != "failed")
             and not any(fnmatch(p.label, pattern) for pattern in skip)]
    started, results, began = 0, {}, time.time()
    signal.signal(signal.SIGTERM, _stop)  # kill/scancel: stop our fits too (below), not only the runner
    pace: list[float] = []  # measured / estimated seconds of the points finished in this call
    try:
        while queue or running:
            while free and queue and (limit is None or started < limit):
                point = queue.pop(0)
                state = state_dir(point)
                state.mkdir(parents=True, exist_ok=True)
                try:
                    release = acquire_lock(state)
                except RunError:
                    continue  # another runner has it
                if point_status(point) == "done":  # finished by another runner since the queue was built
                    release()
                    continue
                (state / "failed.json").unlink(missing_ok=True)
                slot = free.pop(0)
                print(f"start {point.label} ({point.phase}) on cores {sorted(slots[slot])}", flush=True)
                running[slot] = (point, launch(point, slots[slot], state / "fit.log"), release, time.time())
                started += 1
            if not running:
                break
            time.sleep(poll_s)
            for slot, (point, process, release, start) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                seconds = time.time() - start
                outcome = {"seconds": round(seconds, 1), "exit_code": code, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                (state_dir(point) / ("done.json" if code == 0 else "failed.json")).write_text(json.dumps(outcome))
                release()
                del running[slot]
                free.append(slot)
                results[point.label] = "done" if code == 0 else "failed"
                estimate = estimate_seconds(point, profile, jobs)
                pace.append(seconds / estimate)
                left = statistics.median(pace) * sum(estimate_seconds(p, profile, jobs) for p in queue) / jobs
                print(f"{'done' if code == 0 else f'FAILED (exit {code})'} {point.label} in {minutes(seconds)} "
                      f"(estimated {minutes(estimate)}); {len(results)} finished this run, {minutes(time.time() - began)} "
                      f"elapsed, {len(queue)} queued: about {minutes(left)} more at the measured pace", flush=True)
    finally:
        for point, process, release, _ in running.values():  # interrupted: stop our fits, keep their checkpoints
            process.terminate()
            process.wait()
            release()
    return results
