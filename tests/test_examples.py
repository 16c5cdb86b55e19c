"""Every example under examples/ runs: the README's tour runs each agent to its documented outcome
(tests/test_readme_tour.py, with the examples' services up), `make demo` runs sdk-packer
(tests/test_cli_runs.py), and here: what the README says of them without their services."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from bastion.api import parse_yaml
from bastion.execution.runs import Replayer
from bastion.execution.sandbox import ProcessBackend
from bastion.execution.tools import builtin_tools

from ._agents import wait_finished
from ._docs import raw
from .conftest import Tenant
from .test_readme_tour import README, tour_steps

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_BY_MAKE_DEMO = {"sdk-packer"}  # its image needs its requirements installed: make demo's step 9


def example_docs(*names: str) -> list[dict[str, Any]]:
    files = [EXAMPLES / n for n in names] if names else sorted(EXAMPLES.rglob("*.yaml"))
    return [doc.body for f in files for doc in parse_yaml(f.read_text(encoding="utf-8"), str(f))]


def test_the_tour_runs_every_example_agent() -> None:
    agents = {d["metadata"]["name"] for d in example_docs() if d["kind"] == "Agent"}
    run = {
        s.command.split()[2] for s in tour_steps(README.read_text()) if s.command.startswith("bastion run ")
    }
    assert run | RUN_BY_MAKE_DEMO == agents, (
        f"examples no test runs: {sorted(agents - run - RUN_BY_MAKE_DEMO)}"
    )
    assert not run & RUN_BY_MAKE_DEMO
    # Every code agent carries its source (report-writer had none: "has no source").
    for doc in example_docs():
        if doc["kind"] == "Agent" and doc["spec"]["runtime"] == "python":
            assert doc["spec"].get("source") or doc["spec"].get("sourceFile"), doc["metadata"]["name"]


def test_report_writer_without_its_knowledge_base_fails_and_replays_clean(
    tenant: Tenant, tmp_path: Path
) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the knowledge base is down
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/search"
    docs = example_docs("agents.yaml", "tools.yaml", "grants.yaml", "models.yaml")
    for doc in docs:
        if doc["metadata"]["name"] == "kb.search":
            doc["spec"]["implementation"]["url"] = url
        if doc["metadata"]["name"] == "kb-token":  # the API moved: so does where its token may go
            doc["spec"]["destinations"] = [url]
    with tenant.client() as client:
        client.apply(raw(*docs))
        run = wait_finished(client, client.create_run("report-writer", {"topic": "refund"})["id"])
        assert run["state"] == "Failed", run
        assert run["reason"].startswith("the agent raised ToolFailed: tool 'kb.search' failed"), run
        record = client.export_record(run["id"])
    with ProcessBackend() as backend:
        report = Replayer(record, backend, builtin_tools()).run(tmp_path)
    assert report.ok, report
    assert report.error == run["reason"]
