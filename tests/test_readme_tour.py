"""The README's tour, executed: every command of its code blocks, in order, as a user types them,
against a live `bastion up` (a real process, a temporary home and port) with the examples' services
up (the demo's weather API among them), each step held to the outcome its comment documents.

The commands are read from the README, so it cannot drift: a command added, changed or removed
there fails here until ``OUTCOMES`` says what it must do. ``RUN`` and ``KEY_ID`` stand for the ids
the tour's ``bastion run`` and ``bastion keys create`` printed, as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TOUR = "## A short tour"
SERVICE_PORTS = (8765, 9000)  # fixed by examples/: the Tools' URLs and the Secrets' destinations
WEATHER_KEY = "demo-weather-key-7f3a91c2e4b8"
KB_TOKEN = "demo-kb-token-not-a-real-secret"  # the example's published fake token


@dataclass(frozen=True)
class Step:
    command: str
    comment: str


@dataclass(frozen=True)
class Outcome:
    code: int = 0
    shows: tuple[str, ...] = ()
    """Text the output must hold."""
    hides: tuple[str, ...] = ()
    """Text it must not."""
    check: Callable[[str, Path], None] | None = None
    """Anything else, given the output and the directory the tour runs in."""


def _run_json_is_a_record(_output: str, work: Path) -> None:
    record = json.loads((work / "run.json").read_text(encoding="utf-8"))
    assert record["run"]["agent"] == "weather-reporter" and record["run"]["state"] == "Succeeded"
    assert [e["decision"] for e in record["entries"]] == ["allow", "deny", "allow", "allow"]
    assert WEATHER_KEY not in json.dumps(record)


def _agent_rows(output: str, _work: Path) -> None:
    names = re.findall(r"^(\S+)\s+Agent\s", output, re.M)
    assert names == ["report-writer", "sdk-packer", "support-bot", "weather-briefer", "weather-reporter"], (
        output
    )


OUTCOMES: dict[str, Outcome] = {
    "source .venv/bin/activate": Outcome(),
    "python examples/services.py &": Outcome(shows=("weather API: http://127.0.0.1:8765/forecast",)),
    "bastion apply -f examples/": Outcome(
        shows=("agent/weather-reporter created", "policy/baseline created", "agent/report-writer created"),
        check=lambda output, _: _count(output, " created", 21),
    ),
    "bastion get agents": Outcome(shows=("NAME", "KIND", "SUMMARY", "GEN", "AGE"), check=_agent_rows),
    "bastion get agent support-bot -o yaml": Outcome(
        shows=("kind: Agent", "name: support-bot", "instructions:", "status:")
    ),
    "bastion get secrets -o yaml": Outcome(
        shows=("[REDACTED]", "weather-api-key", "kb-token"), hides=(WEATHER_KEY, KB_TOKEN)
    ),
    "bastion describe agent support-bot": Outcome(
        shows=("Generation:", "Resource version:", "Condition Accepted=True")
    ),
    "bastion diff -f examples/": Outcome(code=0, shows=("unchanged",), hides=("would",)),
    "bastion explain Agent.spec.limits": Outcome(shows=("cpuSeconds", "CPU time")),
    "bastion get agents -l team=support": Outcome(shows=("support-bot",), hides=("weather-reporter",)),
    """bastion run weather-reporter --input '{"city": "Lisbon"}' --follow""": Outcome(
        shows=(
            "asking the weather API about Lisbon",
            "weather.get",
            "http.fetch",
            "no ToolGrant lets agent 'weather-reporter' call 'http.fetch' (default deny)",
            "Succeeded",
            "Sunny, 19 °C",  # the weather API's answer: it was up, and the gateway added its key
        ),
        hides=("Revoked", "violation", "egress allowlist", WEATHER_KEY),
    ),
    "bastion runs": Outcome(shows=("weather-reporter", "Succeeded"), hides=("Revoked",)),
    "bastion logs RUN -f": Outcome(shows=("asking the weather API about Lisbon", "fs.write", "Succeeded")),
    "bastion cancel RUN": Outcome(code=1, shows=("already finished (Succeeded)",)),
    "bastion audit verify RUN": Outcome(shows=("ok", "weather-reporter", "1 of 1 journals verified")),
    "bastion record export RUN -o run.json": Outcome(
        shows=("written to run.json (4 entries)",), check=_run_json_is_a_record
    ),
    "bastion record verify run.json --public-key \"$(bastion record key | awk '{print $NF}')\"": Outcome(
        shows=("ok: 4 entries",), hides=("UNPINNED", "BROKEN")
    ),
    "bastion replay run.json": Outcome(
        shows=("#1", "weather.get", "matches", "ok: 4 calls replayed, every request and the result matched"),
        hides=("diverged", "otherwise"),
    ),
    """bastion run weather-briefer --input '"Oslo or Lisbon?"' --follow""": Outcome(
        shows=("weather.get", "Pack accordingly.", "Succeeded"),
        check=lambda output, _: _count(output, "weather.get", 2),
    ),
    """bastion run support-bot --input '"Can I get a refund?"' --follow""": Outcome(
        shows=("kb.search", "I cannot promise one.", "Succeeded"),
        hides=("failed", "deny", KB_TOKEN),
    ),
    """bastion run report-writer --input '{"topic": "refund"}' --follow""": Outcome(
        shows=("kb.search", '"sources": 2', "Refund policy", "Succeeded"), hides=(KB_TOKEN,)
    ),
    "bastion tenants create team-a": Outcome(shows=("tenant team-a created", "bst_")),
    "bastion keys create ci --role developer": Outcome(shows=("(developer) created",)),
    "bastion keys list; bastion keys revoke KEY_ID": Outcome(shows=("first-admin", "ci", "revoked")),
    "bastion namespaces create staging": Outcome(shows=("namespace staging created",)),
}


def _count(output: str, text: str, times: int) -> None:
    assert output.count(text) == times, f"{text!r} {output.count(text)} times, not {times}:\n{output}"


def _comment_at(line: str) -> int:
    """Where a shell comment starts in ``line`` (an unquoted ``#`` after a blank), or -1."""
    quote: str | None = None
    for i, char in enumerate(line):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return -1


def tour_steps(text: str) -> list[Step]:
    """Every command line of the tour section's ``sh`` blocks, with its comment."""
    assert TOUR in text, f"the README has no {TOUR!r} section"
    section = text.split(TOUR, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert blocks, "the tour has no ```sh blocks"
    steps: list[Step] = []
    for block in blocks:
        for line in block.splitlines():
            cut = _comment_at(line)
            command, comment = (line, "") if cut < 0 else (line[:cut], line[cut + 1 :])
            if command.strip():
                steps.append(Step(command.strip(), comment.strip()))
    return steps


def test_the_tour_is_read_from_the_readme() -> None:
    steps = tour_steps(README.read_text(encoding="utf-8"))
    commands = [s.command for s in steps]
    assert commands == list(OUTCOMES), (
        "the README's tour and OUTCOMES differ; say in OUTCOMES what each command must do:\n"
        f"only in the README: {[c for c in commands if c not in OUTCOMES]}\n"
        f"only in OUTCOMES: {[c for c in OUTCOMES if c not in commands]}"
    )
    # Comments are parsed as a shell would: a '#' in quotes is no comment.
    assert _comment_at("""echo '#x' "a # b"   # here""") == 20
    assert all(s.comment for s in steps if s.command.startswith("bastion run "))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_free(ports: tuple[int, ...], seconds: float) -> None:
    """The services' ports are fixed; another demo holding them is waited for, then named."""
    deadline = time.monotonic() + seconds
    while True:
        busy: list[int] = []
        for port in ports:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(port)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ports {busy} are in use (a `make demo` running?); the examples need them")
        time.sleep(0.5)


@pytest.fixture
def bastion_up(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`bastion up` on a fresh home and a free port; the environment its CLI then needs."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-c", "from bastion.cli import main; main()", "up", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"bastion up exited: {process.stdout.read() if process.stdout else ''}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "bastion up did not become ready"
            time.sleep(0.1)
        yield env
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


class _Background:
    """A tour command ending in ``&``: started, its first line awaited, stopped at the end."""

    def __init__(self, command: str, work: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.first = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self.first.set()
        self.first.set()

    def started(self, seconds: float) -> str:
        self.first.wait(seconds)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.slow
def test_the_readme_tour_runs_as_documented(bastion_up: dict[str, str], tmp_path: Path) -> None:
    steps = tour_steps(README.read_text(encoding="utf-8"))
    assert [s.command for s in steps] == list(OUTCOMES)  # test_the_tour_is_read_from_the_readme says how
    work = tmp_path / "work"  # a clone's top directory: the tour's relative paths, its run.json
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(bastion_up)
    ids: dict[str, str] = {}
    background: list[_Background] = []
    took: list[tuple[float, str]] = []
    _wait_for_free(SERVICE_PORTS, 60)
    try:
        for step in steps:
            expected = OUTCOMES[step.command]
            if step.command == "source .venv/bin/activate":
                # What activating does for the commands that follow: this venv's bastion and python first.
                bin_dir = Path(sys.executable).parent
                assert (bin_dir / "bastion").exists(), f"no bastion script beside {sys.executable}"
                env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
                env["VIRTUAL_ENV"] = str(bin_dir.parent)
                continue
            command = step.command
            for name in ("RUN", "KEY_ID"):
                if re.search(rf"\b{name}\b", command):
                    assert name in ids, f"{step.command!r} needs {name}, which no earlier step printed"
                    command = re.sub(rf"\b{name}\b", ids[name], command)
            started = time.monotonic()
            if command.endswith("&"):
                job = _Background(command[:-1].strip(), work, env)
                background.append(job)
                output, code = job.started(30), 0 if job.process.poll() in (None, 0) else 1
            else:
                done = subprocess.run(
                    ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=120
                )
                output, code = done.stdout + done.stderr, done.returncode
            took.append((time.monotonic() - started, step.command))
            context = f"step {step.command!r} (documented: {step.comment or '-'}):\n{output}"
            assert code == expected.code, context
            for text in expected.shows:
                assert text in output, f"missing {text!r} in {context}"
            for text in expected.hides:
                assert text not in output, f"unexpected {text!r} in {context}"
            if expected.check is not None:
                expected.check(output, work)
            if found := re.search(r"\brun ([0-9a-f-]{36}) created", output):
                ids.setdefault("RUN", found.group(1))  # the tour's RUN is the first run it starts
            if found := re.search(r"\bkey (\S+) \(\w+\) created", output):
                ids["KEY_ID"] = found.group(1)
    finally:
        for job in background:
            job.stop()
        # The tour's time is mostly the CLI's start-up, once per command: shown with -s.
        print(f"\ntour: {len(took)} commands in {sum(t for t, _ in took):.1f} s")
        for seconds, command in sorted(took, reverse=True)[:5]:
            print(f"  {seconds:5.2f} s  {command}")
