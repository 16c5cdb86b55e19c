"""`make demo` needs no network once installed: with the package index unreachable the demo builds
its agent image from the wheelhouse `make demo`'s install fetched, a second demo reuses the image,
and a demo leaves nothing behind in the temporary directory or under the sandbox root."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.control import Settings
from bastion.execution.sandbox import ImageCache

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_make_demo_fetches_the_wheelhouse_the_demo_looks_in_before_running_it() -> None:
    from bastion.cli._demo import WHEELHOUSE

    assert VENV / "wheelhouse" == WHEELHOUSE
    # As if the fetch script had changed: make shows what `make demo` would run, in order.
    plan = subprocess.run(
        ["make", "-n", f"VENV={VENV}", "-W", "scripts/demo_wheelhouse.py", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    fetch = [i for i, line in enumerate(plan) if f"demo_wheelhouse.py examples/demo {WHEELHOUSE}" in line]
    run = [i for i, line in enumerate(plan) if line.strip().endswith("bastion demo")]
    assert fetch and run and fetch[0] < run[0], plan


@pytest.fixture
def installed() -> None:
    """The install step of `make demo` (it may use the network, as pip install does)."""
    done = subprocess.run(
        ["make", f"VENV={VENV}", f"{VENV}/wheelhouse/.complete"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((VENV / "wheelhouse").glob("openai-*.whl")), "the wheelhouse holds the demo's requirement"


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """An environment in which pip has no index (a closed local port, no find-links, no
    configuration, no proxy), its own TMPDIR and image cache, and the demo's manifests with the
    weather API on a free port."""
    scratch = Path(tempfile.mkdtemp(prefix="bastion-offline-"))
    scratch.chmod(0o755)  # the sandboxes' unprivileged uids traverse to the images below
    tmp, images = scratch / "tmp", scratch / "images"
    tmp.mkdir(mode=0o755)
    manifests = tmp_path / "demo"
    shutil.copytree(ROOT / "examples" / "demo", manifests)
    port = _free_port()
    for path in manifests.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:8765", f"127.0.0.1:{port}"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "BASTION_")) and not k.lower().endswith("_proxy")
    }
    env |= {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"http://127.0.0.1:{_free_port()}/simple",
        "TMPDIR": str(tmp),
        "BASTION_IMAGE_DIR": str(images),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    yield env, manifests, tmp
    ImageCache(images).remove_all()  # images are immutable where the filesystem allows it
    shutil.rmtree(scratch, ignore_errors=True)


def _demo(env: dict[str, str], manifests: Path) -> str:
    done = subprocess.run(
        [str(VENV / "bin" / "bastion"), "demo", "--manifests", str(manifests)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _assert_left_nothing(output: str, tmp: Path) -> None:
    home = re.search(r"The demo's data \((\S+)\) is removed now", output)
    assert home, output
    data = Path(home.group(1))
    assert data.parent == tmp
    assert list(tmp.iterdir()) == [], "the demo left files in its temporary directory"
    state = Settings(home=data).sandbox_state_dir  # as root /var/lib/bastion/<hash of home>/sandbox
    assert not state.exists() and not state.parent.exists(), f"the demo left {state.parent}"


@pytest.mark.timeout(1200)
def test_the_demo_runs_with_the_package_index_unreachable_and_reuses_its_image(
    installed: None, offline: tuple[dict[str, str], Path, Path]
) -> None:
    env, manifests, tmp = offline
    first = _demo(env, manifests)
    assert "image started building python3.11 with openai" in first
    assert "image done" in first and "Downloading" not in first
    assert first.count("clean:") == 3, "every run replays cleanly, sdk-packer's in its image"
    _assert_left_nothing(first, tmp)
    images = Path(env["BASTION_IMAGE_DIR"])
    built = [p.name for p in images.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1

    second = _demo(env, manifests)
    assert "image cached" in second and "image started" not in second
    assert [p.name for p in images.iterdir() if not p.name.startswith(".")] == built
    _assert_left_nothing(second, tmp)


def test_the_demo_cache_keeps_only_the_images_the_demo_uses(tmp_path: Path) -> None:
    from bastion.cli import load_manifests
    from bastion.cli._demo import _prune_demo_images

    docs = load_manifests([ROOT / "examples" / "demo"])
    cache = ImageCache(tmp_path / "images")
    agents = [d.body["spec"] for d in docs if isinstance(d.body, dict) and d.body.get("kind") == "Agent"]
    used = {cache.digest(a["image"], a.get("requirements", [])) for a in agents if "image" in a}
    assert used, "the demo has an agent with an image"
    stale = cache.digest("python3.11", ["openai==1.49.0"])  # e.g. built from an older lock's wheels
    for digest in (*used, stale):
        (cache.path(digest) / "site-packages").mkdir(parents=True)
    (cache.root / ".locks").mkdir()
    _prune_demo_images(cache, docs)
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([".locks", *used])
