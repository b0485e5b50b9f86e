"""A real plainbox 0.38 session, checkpointing on its own storage and on the face.

Each run is a plainbox 0.38 ``SessionAssistant`` session of ``--jobs`` shell jobs
(``true``) from a generated provider: start, select the test plan, bootstrap,
then run every job and record its result. plainbox checkpoints through its own
``SessionManager.checkpoint()`` (its serialisation included) before and after
each job; every one of those calls is timed. Variants, taking turns round by
round, each in a fresh process and a fresh repository on the disk (under
``--dir``, default /var/tmp):

- ``original``: plainbox 0.38's own ``plainbox.impl.session.storage``;
- ``face``: ``sessionstore.compat.plainbox`` swapped in with the one-line switch;
- ``face-slotted``: the face with ``SessionStorage.default_layout =
  Layout.SLOTTED`` (how a user opts in to the slotted layout).

It prints, per variant, the checkpoints timed, the time spent checkpointing in
one session, the median and p99 of one checkpoint, and the median's ratio to
the original's.

Needs plainbox 0.38 importable by ``--python`` (default: this interpreter), e.g.
the environment ``.ci/clients`` builds::

    /tmp/sessionstore-clients/plainbox/bin/python benchmarks/bench_clients.py

About a minute with the defaults (300 jobs, 3 rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "clients"))
import session_flow

VARIANTS: Final = ("original", "face", "face-slotted")


def child(variant: str, jobs: int) -> None:
    """One session in this process; prints the checkpoint times as JSON."""
    import collections
    import collections.abc

    for name in collections.abc.__all__:  # plainbox 0.38 on Python >= 3.10
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    if variant != "original":
        import sessionstore.compat.plainbox

        sys.modules["plainbox.impl.session.storage"] = sessionstore.compat.plainbox
        if variant == "face-slotted":
            from sessionstore import Layout

            sessionstore.compat.plainbox.SessionStorage.default_layout = Layout.SLOTTED
    from plainbox.impl.session.assistant import (  # type: ignore[import-not-found]
        SessionAssistant,
    )
    from plainbox.impl.session.manager import (  # type: ignore[import-not-found]
        SessionManager,
    )

    times: list[float] = []
    checkpoint = SessionManager.checkpoint

    def timed_checkpoint(self: object) -> None:
        start = time.perf_counter()
        checkpoint(self)
        times.append(time.perf_counter() - start)

    SessionManager.checkpoint = timed_checkpoint
    assistant = SessionAssistant(session_flow.APP_ID["plainbox"], "1.0", "0.99", [])
    assistant.select_providers("*")
    assistant.start_new_session("bench")
    storage = type(assistant._manager.storage)
    if storage.__module__.startswith("sessionstore") != (variant != "original"):
        raise SystemExit(f"{variant}: wrong storage module {storage}")
    assistant.select_test_plan(session_flow.PLAN)
    assistant.bootstrap()
    for job_id in assistant.get_static_todo_list():
        result = assistant.run_job(job_id, "silent", False).get_result()
        assistant.use_job_result(job_id, result)
    print(json.dumps(times))


def run_variant(python: str, variant: str, jobs: int, work: str) -> list[float]:
    repository = tempfile.mkdtemp(prefix=f"{variant}-", dir=work)
    env = {
        **os.environ,
        "XDG_DATA_HOME": os.path.join(work, "data"),
        "PLAINBOX_SESSION_REPOSITORY": repository,
        "USER": os.environ.get("USER", "root"),
    }
    env.pop("SESSIONSTORE_FACE", None)
    done = subprocess.run(
        [python, __file__, "--child", variant, str(jobs)],
        env=env,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(repository)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    times: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return times


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    probe = subprocess.run(
        [
            args.python,
            "-c",
            "import plainbox, sessionstore; print(plainbox.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"plainbox (0.38) and sessionstore must be importable by {args.python}; "
            "run this with the plainbox environment .ci/clients builds, e.g.\n"
            "  /tmp/sessionstore-clients/plainbox/bin/python "
            "benchmarks/bench_clients.py"
        )
    work = tempfile.mkdtemp(prefix="bench-clients-", dir=args.dir)
    try:
        jobs = [f"job-{n}" for n in range(args.jobs)]
        session_flow.write_provider(
            os.path.join(work, "data"), jobs, dict.fromkeys(jobs, "0")
        )
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                samples[variant] += run_variant(args.python, variant, args.jobs, work)
    finally:
        shutil.rmtree(work)
    print(
        f"plainbox {probe.stdout.strip()}, {args.jobs} shell jobs per session, "
        f"{args.rounds} rounds, repository under {args.dir}"
    )
    base = statistics.median(samples["original"])
    print(
        "| variant | checkpoints | checkpointing per session | median | p99 | "
        "median vs original |"
    )
    print("|---|---|---|---|---|---|")
    for variant in VARIANTS:
        times = samples[variant]
        median = statistics.median(times)
        print(
            f"| {variant} | {len(times) // args.rounds} | "
            f"{sum(times) / args.rounds:.2f} s | {ms(median)} | {ms(p99(times))} | "
            f"{median / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
