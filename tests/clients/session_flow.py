"""A real session of a client, killed and resumed, on its own storage or the face.

Run by ``.ci/clients`` with a client's virtual environment::

    python session_flow.py plainbox --start-with face --resume-with face

One flow: a provider of six shell jobs is written to a temporary directory; a
child process starts a session with the client's ``SessionAssistant``, runs the
jobs (the client checkpoints after each) and is SIGKILLed while the fourth is
running; a new process finds the session among the resumable ones, resumes it,
checks that the three finished jobs kept their outcomes, runs the rest and
finalizes; then the client's own commands list and delete it (plainbox:
``plainbox session list`` and ``plainbox session remove``; Checkbox:
``checkbox-cli --clear-old-sessions``) and the repository is checked to be
empty. ``--start-with`` and ``--resume-with`` choose the client's own storage
module or the face for each step, so one flow also shows that a session
written by one is resumed, saved and removed by the other. Checkbox's base
directory is moved into the temporary directory; the backend is the one
``SESSIONSTORE_BACKEND`` names. Exits non-zero, saying why, on any failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from typing import Final

JOBS: Final = [f"step-{n}" for n in range(1, 7)]
KILL_AFTER: Final = 3
NAMESPACE: Final = "com.example.sessionstore"
PLAN: Final = f"{NAMESPACE}::flow"
# checkbox-cli --clear-old-sessions removes only the sessions of its own app id.
APP_ID: Final = {
    "plainbox": "com.example.sessionstore:flow",
    "checkbox": "com.canonical:checkbox-cli",
}


def write_provider(
    data_home: str, jobs: list[str], pauses: dict[str, str] | None = None
) -> None:
    """A provider of shell jobs and a test plan of them, where the client finds it.

    Each job echoes and then sleeps for its entry in ``pauses`` (default 0.05 s).
    """
    location = os.path.join(data_home, "flow-provider")
    os.makedirs(os.path.join(location, "units"))
    providers = os.path.join(data_home, "plainbox-providers-1")
    os.makedirs(providers)
    with open(os.path.join(providers, "flow.provider"), "w") as out:
        out.write(
            textwrap.dedent(f"""\
                [PlainBox Provider]
                name = {NAMESPACE}:flow
                namespace = {NAMESPACE}
                version = 1.0
                description = shell jobs for sessionstore's client flows
                location = {location}
                """)
        )
    units = [
        f"id: {job}\nplugin: shell\n_summary: {job}\n"
        f"command: echo {job} ran; sleep {(pauses or {}).get(job, '0.05')}\n"
        "estimated_duration: 1\n"
        for job in jobs
    ]
    units.append(
        "unit: test plan\nid: flow\n_name: flow\ninclude:\n"
        + "".join(f" {job}\n" for job in jobs)
    )
    with open(os.path.join(location, "units", "jobs.pxu"), "w") as out:
        out.write("\n".join(units))


def make_assistant(client: str) -> object:
    storage = importlib.import_module("plainbox.impl.session.storage")
    on_face = storage.SessionStorage.__module__.startswith("sessionstore.compat.")
    if on_face != bool(os.environ.get("SESSIONSTORE_FACE")):
        raise SystemExit(f"wrong storage module in use: {storage.SessionStorage}")
    wanted = os.environ.get("SESSIONSTORE_BACKEND")
    if on_face and wanted:
        in_use = importlib.import_module("sessionstore").backend
        if in_use != wanted:
            raise SystemExit(f"backend {in_use} in use, {wanted} asked for")
    assistant_module = importlib.import_module("plainbox.impl.session.assistant")
    assistant = assistant_module.SessionAssistant(APP_ID[client], "1.0", "0.99", [])
    if client == "plainbox":
        assistant.select_providers("*")
    return assistant


def run_jobs(assistant: object, job_ids: list[str]) -> None:
    for job_id in job_ids:
        builder = assistant.run_job(job_id, "silent", False)  # type: ignore[attr-defined]
        assistant.use_job_result(job_id, builder.get_result())  # type: ignore[attr-defined]
        print("done", job_id, flush=True)


def outcome_of(assistant: object, job_id: str) -> str | None:
    state = assistant.get_job_state(job_id)  # type: ignore[attr-defined]
    outcome: str | None = state.result.outcome
    return outcome


def child_start(client: str) -> None:
    assistant = make_assistant(client)
    assistant.start_new_session("flow")  # type: ignore[attr-defined]
    assistant.select_test_plan(PLAN)  # type: ignore[attr-defined]
    # What checkbox-cli records, and Checkbox's resume reads back.
    blob = json.dumps({"testplan_id": PLAN, "description": "flow"}).encode()
    assistant.update_app_blob(blob)  # type: ignore[attr-defined]
    assistant.bootstrap()  # type: ignore[attr-defined]
    print("session", assistant.get_session_id(), flush=True)  # type: ignore[attr-defined]
    run_jobs(assistant, list(assistant.get_static_todo_list()))  # type: ignore[attr-defined]


def child_resume(client: str, session_id: str) -> None:
    assistant = make_assistant(client)
    resumable = [c[0] for c in assistant.get_resumable_sessions()]  # type: ignore[attr-defined]
    if session_id not in resumable:
        raise SystemExit(f"session {session_id} is not resumable: {resumable}")
    assistant.resume_session(session_id)  # type: ignore[attr-defined]
    assistant.select_test_plan(PLAN)  # type: ignore[attr-defined]
    assistant.bootstrap()  # type: ignore[attr-defined]
    kept = {
        job: outcome_of(assistant, f"{NAMESPACE}::{job}") for job in JOBS[:KILL_AFTER]
    }
    if set(kept.values()) != {"pass"}:
        raise SystemExit(f"finished jobs lost their outcomes on resume: {kept}")
    print("resumed", json.dumps(kept), flush=True)
    ids = [f"{NAMESPACE}::{job}" for job in JOBS]
    run_jobs(assistant, [job for job in ids if outcome_of(assistant, job) != "pass"])
    final = {job: outcome_of(assistant, f"{NAMESPACE}::{job}") for job in JOBS}
    if set(final.values()) != {"pass"}:
        raise SystemExit(f"not every job passed: {final}")
    assistant.finalize_session()  # type: ignore[attr-defined]
    print("finished", json.dumps(final), flush=True)


def sessions_in(repository: str) -> list[str]:
    if not os.path.isdir(repository):
        return []
    return sorted(n for n in os.listdir(repository) if n.endswith(".session"))


def child_env(base_env: dict[str, str], storage: str, client: str) -> dict[str, str]:
    env = dict(base_env)
    env.pop("SESSIONSTORE_FACE", None)
    if storage == "face":
        env["SESSIONSTORE_FACE"] = client
    return env


def spawn(python: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [python, os.path.abspath(__file__), "--child", *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def flow(client: str, start_with: str, resume_with: str, python: str) -> None:
    work = tempfile.mkdtemp(prefix=f"sessionstore-flow-{client}-")
    # The job after the last one the first process finishes is still running
    # when that process is killed.
    write_provider(work, JOBS, {JOBS[KILL_AFTER]: "2"})
    env = {
        **os.environ,
        "XDG_DATA_HOME": work,
        "XDG_CACHE_HOME": os.path.join(work, "cache"),
        "USER": os.environ.get("USER", "root"),
    }
    if client == "plainbox":
        repository = os.path.join(work, "plainbox-sessions")
        env["PLAINBOX_SESSION_REPOSITORY"] = repository
        env["SESSIONSTORE_COLLECTIONS_ALIASES"] = "1"
    else:
        env["SESSIONSTORE_CHECKBOX_BASE"] = os.path.join(work, "checkbox-ng")
        repository = os.path.join(work, "checkbox-ng", "sessions")
    backend = os.environ.get("SESSIONSTORE_BACKEND") or "default backend"
    label = f"{client} flow ({start_with} -> {resume_with}, {backend})"

    starter = spawn(python, child_env(env, start_with, client), "start", client)
    assert starter.stdout is not None
    session_id = None
    done = 0
    for line in starter.stdout:
        word, _, rest = line.strip().partition(" ")
        if word == "session":
            session_id = rest
        elif word == "done":
            done += 1
            if done == KILL_AFTER:
                starter.send_signal(signal.SIGKILL)
                break
    starter.wait()
    if starter.returncode != -signal.SIGKILL or session_id is None:
        raise SystemExit(f"{label}: the first process ended before it was killed")
    print(f"{label}: killed while {JOBS[KILL_AFTER]} ran in session {session_id}")

    resumer = spawn(python, child_env(env, resume_with, client), "resume", client)
    out, _ = resumer.communicate(session_id)
    if resumer.returncode != 0:
        raise SystemExit(f"{label}: resume failed:\n{out}")
    print(f"{label}: " + out.strip().replace("\n", f"\n{label}: "))

    delete_env = child_env(env, resume_with, client)
    if client == "plainbox":
        plainbox = os.path.join(os.path.dirname(python), "plainbox")
        listing = _run([plainbox, "session", "list"], delete_env, label)
        if session_id not in listing:
            raise SystemExit(f"{label}: 'plainbox session list' misses it:\n{listing}")
        _run([plainbox, "session", "remove", session_id], delete_env, label)
    else:
        checkbox_cli = os.path.join(os.path.dirname(python), "checkbox-cli")
        _run(
            [checkbox_cli, "--clear-old-sessions", "list", "test plan"],
            delete_env,
            label,
        )
    left = sessions_in(repository)
    if left:
        raise SystemExit(f"{label}: sessions left after deleting: {left}")
    print(f"{label}: listed and deleted; repository empty: ok")
    shutil.rmtree(work)


def _run(command: list[str], env: dict[str, str], label: str) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label}: {command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        phase, client = sys.argv[2], sys.argv[3]
        if phase == "start":
            child_start(client)
        else:
            child_resume(client, sys.stdin.read().strip())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("client", choices=sorted(APP_ID))
    parser.add_argument("--start-with", choices=["original", "face"], default="face")
    parser.add_argument("--resume-with", choices=["original", "face"], default="face")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    flow(args.client, args.start_with, args.resume_with, args.python)


if __name__ == "__main__":
    main()
