"""Model calls under real crashes: worker processes are SIGKILLed mid-answer and the run resumes.

The call in flight at the crash was not journaled, so the next attempt makes it again (with the
same ``Idempotency-Key``) and journals it once; calls journaled before the crash are answered
from the journal and not made again; the budget's stale reservation is replaced, not added to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.client import BastionClient
from bastion.control import create_app
from bastion.execution.runs import RunState
from bastion.testing import FakeProvider, Hold, reply, serve_in_thread, tool_call

from ._agents import builtin_tool, code_agent, grant_for
from .conftest import BACKENDS, PostgresDatabases
from .test_durability import Cluster, counting_server, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(params=BACKENDS)
def llm_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bastion.db'}"
    else:
        databases: PostgresDatabases = request.getfixturevalue("postgres")
        url = databases.create()
    with counting_server() as tool:
        built = Cluster(request.param, url, tmp_path, tool)
        try:
            with (
                serve_in_thread(create_app(built.bastion)) as api,
                BastionClient(api, built.admin_key) as client,
            ):
                built.client = client
                yield built
        finally:
            built.close()


def policy(fake: FakeProvider) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ModelPolicy",
        "metadata": {"name": "fake-models"},
        "spec": {
            "targets": [{"provider": "openai", "model": "gpt-x", "baseUrl": fake.openai_url}],
            "budgets": {"tokensPerRun": 100_000},
            "maxOutputTokens": 1000,
        },
    }


STREAMING_AGENT = """
from bastion.agent._channel import current

def main(input):
    answer = current().request("llm.chat", {"format": "openai", "request": {
        "model": "gpt-x", "stream": True, "messages": [{"role": "user", "content": "tell me"}]}})
    import json
    chunks = [json.loads(e["data"]) for e in answer["events"] if e["data"] != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
"""


def test_a_worker_killed_mid_stream_resumes_and_journals_the_answer_once(llm_cluster: Cluster) -> None:
    cluster = llm_cluster
    hold = Hold()
    text = "a long answer that streams in several pieces"
    with FakeProvider(reply(text, hold=hold, hold_after=2), reply(text)) as fake:
        agent = code_agent("streamer", STREAMING_AGENT)
        agent["spec"]["modelPolicy"] = "fake-models"
        cluster.apply(policy(fake), agent)
        first = cluster.start_worker()
        run_id = cluster.create_run("streamer", None)
        hold.wait_reached()
        assert cluster.entries(run_id) == []
        cluster.kill(first)
        hold.release()
        cluster.start_worker()
        run = cluster.wait_finished(run_id)
        assert run.state is RunState.SUCCEEDED, (run.reason, cluster.outputs())
        assert run.result == text
        entries = cluster.entries(run_id)
        assert [(e.seq, e.kind, e.attempt) for e in entries] == [(1, "llm", 2)]
        keys = [r.headers.get("idempotency-key") for r in fake.requests]
        assert keys == [f"{run_id}:1", f"{run_id}:1"]
        cluster.verify(run_id)
        usage = entries[0].response["usage"]
        used = cluster.bastion.models.ledger.used(f"run:{run_id}")
        assert used == (usage["inputTokens"] + usage["outputTokens"], 0.0), "one charge, no stale hold"


def test_a_declarative_agent_killed_mid_run_resumes_by_replay(llm_cluster: Cluster) -> None:
    cluster = llm_cluster
    hold = Hold()
    write = tool_call("fs_write", path="draft.txt", content="step one")
    with FakeProvider(write, reply("held", hold=hold), reply("Wrote the draft.")) as fake:
        fs_write = builtin_tool("fs.write")
        agent = {
            "apiVersion": "bastion/v1",
            "kind": "Agent",
            "metadata": {"name": "drafter"},
            "spec": {
                "runtime": "llm",
                "instructions": "Write a draft, then say so.",
                "modelPolicy": "fake-models",
                "tools": ["fs.write"],
            },
        }
        cluster.apply(policy(fake), fs_write, agent, grant_for("drafter", "fs.write"))
        first = cluster.start_worker()
        run_id = cluster.create_run("drafter", "go")
        hold.wait_reached()
        wait_until("two entries", lambda: len(cluster.entries(run_id)) == 2, 10, cluster.outputs)
        cluster.kill(first)
        hold.release()
        cluster.start_worker()
        run = cluster.wait_finished(run_id)
        assert run.state is RunState.SUCCEEDED, (run.reason, cluster.outputs())
        assert run.result == "Wrote the draft."
        entries = cluster.entries(run_id)
        assert [(e.seq, e.kind, e.attempt) for e in entries] == [(1, "llm", 1), (2, "tool", 1), (3, "llm", 2)]
        # The first model call was answered from the journal; only the one in flight was made again.
        assert len(fake.requests) == 3
        assert json.dumps(fake.requests[1].body, sort_keys=True) == json.dumps(
            fake.requests[2].body, sort_keys=True
        )
        draft = cluster.workspaces / run_id / "attempt-2" / "draft.txt"
        assert draft.read_text() == "step one", "the workspace effect was re-created by replay"
        cluster.verify(run_id)
