"""Agent images: real pip builds from the registry, the cache, concurrent builders, failures, the
read-only result, and agents that import their requirements end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.api import IMAGE_BASES
from bastion.client import BastionClient
from bastion.control import Bastion, create_app
from bastion.errors import InvalidManifest, SandboxError
from bastion.execution.sandbox import (
    BASES,
    BuildProgress,
    ImageBuildFailed,
    ImageCache,
    ProcessBackend,
    SandboxSpec,
    image_digest,
)
from bastion.testing import serve_in_thread

from ._agents import code_agent, wait_finished
from ._docs import raw
from .conftest import Tenant

SIX = "six==1.17.0"
MISSING = "bastion-no-such-package-anywhere==0.0.1"


@pytest.fixture
def cache() -> Iterator[ImageCache]:
    # Not under tmp_path: as root the process backend runs the image as a leased unprivileged uid,
    # which must traverse every parent (as the bwrap and gVisor sandboxes' uids must).
    root = Path(tempfile.mkdtemp(prefix="bastion-images-"))
    root.chmod(0o711)
    built = ImageCache(root / "images")
    yield built
    built.remove_all()  # images may be immutable: the test directory could not be removed otherwise
    shutil.rmtree(root, ignore_errors=True)


def phases(events: list[BuildProgress]) -> list[str]:
    return [e.phase for e in events if e.phase != "output"]


def test_the_digest_is_the_set_of_requirements_not_their_spelling() -> None:
    assert image_digest("python3.11", ["six", "attrs>=23"]) == image_digest(
        "python3.11", [" attrs>=23", "six", "six"]
    )
    assert image_digest("python3.11", ["six"]) != image_digest("python3.11", ["six==1.17.0"])
    assert image_digest("python3.11", []) != image_digest("python3.11", ["six"])


def test_a_real_build_then_a_cache_hit(cache: ImageCache) -> None:
    events: list[BuildProgress] = []
    image = cache.resolve("python3.11", [SIX], progress=events.append)
    assert phases(events) == ["started", "done"]
    assert any("six" in e.message for e in events if e.phase == "output"), "pip's own lines are reported"
    done = events[-1]
    assert done.size_bytes and done.size_bytes > 10_000 and done.seconds is not None
    assert image.interpreter == BASES["python3.11"]
    assert image.site_packages == cache.root / image.digest / "site-packages"
    assert (image.site_packages / "six.py").is_file()
    manifest = json.loads((cache.root / image.digest / "image.json").read_text())
    assert manifest["requirements"] == [SIX] and manifest["digest"] == image.digest
    # The base interpreter imports it from the image, and nothing from the host's dist-packages.
    probe = "import sys; sys.path.append(sys.argv[1]); import six; print(six.__version__, six.__file__)"
    seen = subprocess.run(
        [str(image.interpreter), "-I", "-S", "-c", probe, str(image.site_packages)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert seen == ["1.17.0", str(image.site_packages / "six.py")]
    again: list[BuildProgress] = []
    assert cache.resolve("python3.11", [SIX], progress=again.append) == image
    assert phases(again) == ["cached"] and again[0].size_bytes == done.size_bytes
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".build-")]


def test_an_image_cannot_be_changed_even_by_root(cache: ImageCache) -> None:
    image = cache.resolve("python3.11", [SIX])
    assert image.site_packages is not None
    with pytest.raises(PermissionError):
        (image.site_packages / "six.py").write_text("hacked = True\n")
    with pytest.raises(PermissionError):
        (image.site_packages / "extra.py").write_text("x = 1\n")
    with pytest.raises(PermissionError):
        (image.site_packages / "six.py").unlink()
    assert "hacked" not in (image.site_packages / "six.py").read_text()


def test_an_image_is_read_only_from_inside_a_process_sandbox(cache: ImageCache, tmp_path: Path) -> None:
    image = cache.resolve("python3.11", [SIX])
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "agent.py").write_text(
        "import os, six, sys\n"
        "def attempt(action):\n"
        "    try:\n"
        "        action()\n"
        "        return 'allowed'\n"
        "    except OSError as exc:\n"
        "        return type(exc).__name__\n"
        "def main(input):\n"
        "    here = os.path.dirname(six.__file__)\n"
        "    return {\n"
        "        'python': sys.executable,\n"
        "        'append': attempt(lambda: open(six.__file__, 'a').write('x')),\n"
        "        'create': attempt(lambda: open(os.path.join(here, 'new.py'), 'w').write('x')),\n"
        "        'remove': attempt(lambda: os.remove(six.__file__)),\n"
        "        'chmod': attempt(lambda: os.chmod(six.__file__, 0o777)),\n"
        "    }\n"
    )
    with ProcessBackend() as backend:
        sandbox = backend.start(SandboxSpec(workspace=workspace, image=image), on_log=lambda _: None)
        try:
            seen = sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_refuse)
        finally:
            sandbox.stop()
    assert seen["python"] == str(BASES["python3.11"])
    assert {k: v for k, v in seen.items() if k != "python"} == {
        "append": "PermissionError",
        "create": "PermissionError",
        "remove": "PermissionError",
        "chmod": "PermissionError",
    }


def _refuse(method: str, params: dict[str, Any]) -> Any:
    raise AssertionError(f"unexpected call {method}")


def test_concurrent_builders_build_once_and_never_corrupt_the_image(cache: ImageCache) -> None:
    """Four threads here and two other processes resolve the same image at once."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bastion.execution.sandbox import ImageCache\n"
        "events = []\n"
        "ImageCache(Path(sys.argv[1])).resolve('python3.11', [sys.argv[2]], progress=events.append)\n"
        "print(' '.join(e.phase for e in events if e.phase != 'output'))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(cache.root), SIX], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results: list[list[str]] = []
    images: list[Any] = []
    gate = threading.Barrier(4)

    def build() -> None:
        events: list[BuildProgress] = []
        gate.wait()
        images.append(cache.resolve("python3.11", [SIX], progress=events.append))
        results.append(phases(events))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    outputs = [p.communicate(timeout=120)[0].split() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    every = results + outputs
    assert sum(run.count("started") for run in every) == 1, every
    assert sum(run.count("done") for run in every) == 1, every
    assert all(run[-1] in {"cached", "done"} for run in every), every
    assert len({image.digest for image in images}) == 1
    site = images[0].site_packages
    assert (site / "six.py").is_file()
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".build-")]
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith(".")] == [images[0].digest]


def test_a_bad_requirement_fails_with_pips_error_and_leaves_nothing(cache: ImageCache) -> None:
    events: list[BuildProgress] = []
    with pytest.raises(ImageBuildFailed) as caught:
        cache.resolve("python3.11", [SIX, MISSING], progress=events.append)
    assert caught.value.detail.startswith("image build failed: pip could not install")
    assert "ERROR" in caught.value.detail and "bastion-no-such-package-anywhere" in caught.value.detail
    assert phases(events) == ["started", "failed"]
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith(".")] == []
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".build-")]


# --- end to end: the worker builds, reports, and runs the agent in its image -------------------

IMPORTS_SIX = """
import os, sys
import six

def main(input):
    return {"six": six.__version__, "from": six.__file__, "python": sys.executable}
"""

NO_HOST_PACKAGES = """
import sys

def main(input):
    try:
        import yaml
    except ImportError:
        return {"python": sys.executable, "yaml": None}
    return {"python": sys.executable, "yaml": yaml.__file__}
"""


@pytest.fixture
def live(make_bastion: Callable[..., Bastion]) -> Iterator[BastionClient]:
    bastion = make_bastion(poll_seconds=0.05, lease_seconds=2.0)
    first = bastion.bootstrap()
    assert first is not None
    thread, stop = bastion.start_worker()
    try:
        with serve_in_thread(create_app(bastion)) as url, BastionClient(url, first.admin_key) as client:
            yield client
    finally:
        stop.set()
        thread.join(timeout=30)
        bastion.images.remove_all()


def image_agent(name: str, source: str, requirements: list[str] | None = None) -> dict[str, Any]:
    agent = code_agent(name, source)
    agent["spec"]["image"] = "python3.11"
    if requirements is not None:
        agent["spec"]["requirements"] = requirements
    return agent


def test_an_agent_imports_its_requirements_and_the_build_is_reported(live: BastionClient) -> None:
    live.apply(raw(image_agent("sixer", IMPORTS_SIX, [SIX])))
    first = wait_finished(live, live.create_run("sixer")["id"], timeout=180)
    assert first["state"] == "Succeeded", first
    assert first["result"]["six"] == "1.17.0"
    assert first["result"]["python"] == str(BASES["python3.11"])
    # From the image: its host path on the process backend, its read-only mount inside bwrap/gVisor.
    assert "/images/" in first["result"]["from"] or first["result"]["from"].startswith(
        "/opt/bastion/packages/"
    )
    events = list(live.events(first["id"]))
    image = [e["data"] for e in events if e["type"] == "image"]
    assert [d["phase"] for d in image if d["phase"] != "output"] == ["started", "done"]
    assert any("six" in d["message"] for d in image if d["phase"] == "output")
    assert "MiB" in image[-1]["message"] and image[-1]["sizeBytes"] > 0
    kinds = [e["type"] for e in events]
    assert kinds.index("sandbox") > max(i for i, k in enumerate(kinds) if k == "image"), "built, then started"
    second = wait_finished(live, live.create_run("sixer")["id"], timeout=60)
    assert second["state"] == "Succeeded" and second["result"] == first["result"]
    again = [e["data"]["phase"] for e in live.events(second["id"]) if e["type"] == "image"]
    assert again == ["cached"]


def test_a_failed_build_fails_the_run_and_the_agent_never_runs(live: BastionClient) -> None:
    live.apply(raw(image_agent("broken", IMPORTS_SIX, [SIX, MISSING])))
    done = wait_finished(live, live.create_run("broken")["id"], timeout=180)
    assert done["state"] == "Failed"
    assert done["reason"].startswith("image build failed: pip could not install")
    assert "bastion-no-such-package-anywhere" in done["reason"]
    events = list(live.events(done["id"]))
    assert [
        e["data"]["phase"] for e in events if e["type"] == "image" and e["data"]["phase"] != "output"
    ] == [
        "started",
        "failed",
    ]
    assert not [e for e in events if e["type"] in {"sandbox", "log"}], "no sandbox was started"


def test_an_image_without_requirements_runs_the_base_without_the_hosts_packages(
    live: BastionClient,
) -> None:
    # Debian's python3-yaml lives in /usr/lib/python3/dist-packages: the base must not see it.
    live.apply(raw(image_agent("bare", NO_HOST_PACKAGES)))
    done = wait_finished(live, live.create_run("bare")["id"], timeout=60)
    assert done["state"] == "Succeeded", done
    assert done["result"] == {"python": str(BASES["python3.11"]), "yaml": None}
    assert not [e for e in live.events(done["id"]) if e["type"] == "image"], "nothing to build"


def test_unknown_bases_and_unsafe_requirements_are_refused_at_apply(tenant: Tenant) -> None:
    with tenant.client() as client:
        bad_base = code_agent("ubuntu", "def main(input):\n    return 1\n")
        bad_base["spec"]["image"] = "ubuntu:22.04"
        with pytest.raises(InvalidManifest) as caught:
            client.apply(raw(bad_base))
        [problem] = caught.value.problems
        assert problem.field == "spec.image"
        assert "unknown image 'ubuntu:22.04'" in problem.message and "python3.11" in problem.message
        for requirement, words in [
            ("--index-url=http://evil.example/simple", "pip option"),
            ("-e git+https://example.com/x.git", "pip option"),
            ("evil @ https://example.com/evil.whl", "URL or a path"),
            ("../../etc/passwd", "URL or a path"),
            ("six; rm -rf ~", "not a package requirement"),
            ("six\n--trusted-host=evil", "not a package requirement"),
        ]:
            agent = image_agent("reqs", "def main(input):\n    return 1\n", [requirement])
            with pytest.raises(InvalidManifest) as caught:
                client.apply(raw(agent))
            assert caught.value.problems[0].field == "spec.requirements.0", requirement
            assert words in caught.value.problems[0].message, (requirement, caught.value.problems[0].message)
        orphan = code_agent("orphan", "def main(input):\n    return 1\n")
        orphan["spec"]["requirements"] = [SIX]
        with pytest.raises(InvalidManifest) as caught:
            client.apply(raw(orphan))
        assert "spec.requirements needs spec.image" in caught.value.problems[0].message
        assert not {a["metadata"]["name"] for a in client.list("Agent")} & {"ubuntu", "reqs", "orphan"}


def test_the_bases_are_the_ones_apply_accepts() -> None:
    assert set(BASES) == set(IMAGE_BASES)
    assert all(path.is_relative_to("/usr") for path in BASES.values()), "bwrap sees only /usr of the host"
    assert os.access(BASES["python3.11"], os.X_OK)


@pytest.fixture(scope="module")
def wheelhouse() -> Iterator[Path]:
    """six's wheel, fetched once (with pip's configured registries, as an install step would)."""
    root = Path(tempfile.mkdtemp(prefix="bastion-wheelhouse-"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(root),
            SIX,
        ],
        check=True,
        capture_output=True,
    )
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_an_image_from_a_wheelhouse_uses_its_wheels_alone_and_is_keyed_by_them(
    cache: ImageCache, wheelhouse: Path, tmp_path: Path
) -> None:
    offline = ImageCache(cache.root, wheelhouse=wheelhouse)
    events: list[BuildProgress] = []
    image = offline.resolve("python3.11", [SIX], progress=events.append)
    assert image.site_packages is not None and (image.site_packages / "six.py").is_file()
    assert image.digest != image_digest("python3.11", [SIX]), "a wheelhouse build is its own image"
    lines = [e.message for e in events if e.phase == "output"]
    assert any(str(wheelhouse) in line for line in lines), lines
    assert not (image.site_packages.parent / "wheelhouse-pins.txt").exists(), "no build leftovers"
    # Content-keyed: the same wheels give the same image; another wheel in the house, another one.
    assert ImageCache(cache.root, wheelhouse=wheelhouse).resolve("python3.11", [SIX]) == image
    other = tmp_path / "house"
    shutil.copytree(wheelhouse, other)
    (other / "attrs-0.0.0-py3-none-any.whl").write_bytes(b"not even a zip")
    assert ImageCache(cache.root, wheelhouse=other).digest("python3.11", [SIX]) != image.digest


def test_a_wheelhouse_build_never_falls_back_to_the_index(cache: ImageCache, wheelhouse: Path) -> None:
    # `attrs` is on every index pip here can reach, but not in the wheelhouse: the build must fail.
    offline = ImageCache(cache.root, wheelhouse=wheelhouse)
    with pytest.raises(ImageBuildFailed) as failed:
        offline.resolve("python3.11", [SIX, "attrs"])
    assert "attrs" in failed.value.detail
    assert not [p for p in cache.root.iterdir() if not p.name.startswith(".")], "no image was kept"
    missing = ImageCache(cache.root, wheelhouse=cache.root / "no-such-dir")
    with pytest.raises(SandboxError, match="wheelhouse"):
        missing.resolve("python3.11", [SIX])


def test_wheelhouses_whose_wheels_differ_only_in_content_give_different_images(tmp_path: Path) -> None:
    # Hosts sharing one image directory, each with its own wheelhouse: a rebuilt (or swapped) wheel
    # keeps its file name, and its size says nothing. Keyed by name and size, the second host would
    # run the first one's image as if built from its own wheels.
    name = "six-1.17.0-py2.py3-none-any.whl"
    houses = [tmp_path / "house-a", tmp_path / "house-b"]
    for house, content in zip(houses, (b"A" * 4096, b"B" * 4096), strict=True):
        house.mkdir()
        (house / name).write_bytes(content)
    root = tmp_path / "images"
    first, second = (ImageCache(root, wheelhouse=house).digest("python3.11", [SIX]) for house in houses)
    assert first != second, "two different wheels under one name made one image digest"
    # The same bytes in another directory are the same image (content, not place).
    twin = tmp_path / "house-c"
    shutil.copytree(houses[0], twin)
    assert ImageCache(root, wheelhouse=twin).digest("python3.11", [SIX]) == first
    # And a wheel replaced in place (same name, same size) changes the digest on the next resolve.
    cache = ImageCache(root, wheelhouse=houses[0])
    before = cache.digest("python3.11", [SIX])
    (houses[0] / name).write_bytes(b"C" * 4096)
    assert cache.digest("python3.11", [SIX]) != before


def _handmade_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of one module ``name`` (no index involved)."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel


def test_a_wheelhouse_build_takes_nothing_from_pips_own_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's pip may be configured with other places to find packages (find-links in an
    # environment variable or a pip.conf). A wheelhouse build must install from the wheelhouse
    # alone: a developer's requirement that it lacks fails, whatever pip would otherwise reach.
    house, elsewhere = tmp_path / "house", tmp_path / "elsewhere"
    house.mkdir()
    elsewhere.mkdir()
    _handmade_wheel(house, "inhouse", "1.0")
    _handmade_wheel(elsewhere, "outside", "1.0")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {elsewhere}\n")
    monkeypatch.setenv("PIP_FIND_LINKS", str(elsewhere))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    cache = ImageCache(tmp_path / "images", wheelhouse=house)
    image = cache.resolve("python3.11", ["inhouse"])
    assert image.site_packages is not None and (image.site_packages / "inhouse.py").is_file()
    with pytest.raises(ImageBuildFailed) as failed:
        cache.resolve("python3.11", ["outside"])
    assert "outside" in failed.value.detail


def test_a_wheelhouse_holding_two_versions_of_a_package_builds_either(tmp_path: Path) -> None:
    # One wheelhouse serving agents that pin different versions of one package: each pin builds.
    house = tmp_path / "house"
    house.mkdir()
    _handmade_wheel(house, "inhouse", "1.0")
    _handmade_wheel(house, "inhouse", "2.0")
    image = ImageCache(tmp_path / "images", wheelhouse=house).resolve("python3.11", ["inhouse==2.0"])
    assert image.site_packages is not None
    assert (image.site_packages / "inhouse-2.0.dist-info").is_dir()
