"""The docs stay true where they name things: every `bastion …` command (and option) they show exists
in the CLI, every repository path they name exists, and no link leaves the repository."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from bastion.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["ARCHITECTURE.md", "SECURITY.md", "README.md"]
_STRIP = "\"'()[]{}$`;,"
_SEPARATORS = {"|", "||", "&&", ";", "#", ">", "<"}
_REPO_DIRS = ("src/", "tests/", "examples/", "scripts/", "bench/", ".ci/")


def _text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _code(text: str) -> Iterator[str]:
    """Each shell block's lines (without comments) and each inline code span (diagrams, YAML and
    Python blocks are no commands)."""
    fences = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
    for info, block in fences.findall(text):
        if info.strip() not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in block.splitlines():
            yield line.split(" #", 1)[0]
    for span in re.findall(r"`([^`]+)`", fences.sub("", text)):
        yield " ".join(span.split())


def _commands(text: str) -> Iterator[list[str]]:
    """The words after each `bastion` in code, up to the end of that command."""
    for snippet in _code(text):
        tokens = snippet.split()
        for i, token in enumerate(tokens):
            if token.strip(_STRIP) != "bastion" and not token.endswith("/bastion"):
                continue
            words: list[str] = []
            for raw in tokens[i + 1 :]:
                if raw in _SEPARATORS or raw.startswith("#") or raw.strip(_STRIP) == "bastion":
                    break
                words.append(raw.strip(_STRIP))
                if raw.endswith((";", "|", ")")):
                    break
            yield words


def _is_group(command: Any) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def _check_command(root: Any, words: list[str]) -> str | None:
    """None if `bastion WORDS` names a command and options it has, else what is wrong."""
    command = root
    path = ["bastion"]
    for word in words:
        if _is_group(command) and re.fullmatch(r"[a-z][a-z-]*(\|[a-z][a-z-]*)+", word):  # a|b|c
            ctx = command.context_class(command)
            missing = [w for w in word.split("|") if command.get_command(ctx, w) is None]
            return f"`{' '.join(path)}` has no subcommand {missing}" if missing else None
        if _is_group(command) and re.fullmatch(r"[a-z][a-z-]*", word):
            sub = command.get_command(command.context_class(command), word)
            if sub is None:
                return f"`{' '.join(path)}` has no subcommand {word!r}"
            command, path = sub, [*path, word]
            continue
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
            if name not in known:
                return f"`{' '.join(path)}` has no option {name}"
        elif _is_group(command) and not re.fullmatch(r"[A-Z_.…]+", word):
            return f"`{' '.join(path)}` is a group, and {word!r} is none of its subcommands"
    return None


@pytest.fixture(scope="module")
def cli() -> Any:
    group = typer.main.get_command(app)
    assert _is_group(group)
    return group


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_the_docs_show_exists(doc: str, cli: Any) -> None:
    seen = [words for words in _commands(_text(doc)) if words]
    wrong = {problem for words in seen if (problem := _check_command(cli, words))}
    assert not wrong, f"{doc}: " + "; ".join(sorted(wrong))
    assert seen, "the docs show commands, and this test finds them"


def test_the_checker_catches_what_does_not_exist(cli: Any) -> None:
    assert _check_command(cli, ["audit", "verify"]) is None
    assert _check_command(cli, ["replay", "run.json", "--until", "3"]) is None
    assert _check_command(cli, ["audit", "verfy"]) is not None
    assert _check_command(cli, ["fly"]) is not None
    assert _check_command(cli, ["replay", "run.json", "--untill", "3"]) is not None
    assert _check_command(cli, ["trust", "show|promote"]) is None
    assert _check_command(cli, ["trust", "show|promot"]) is not None
    assert list(_commands("see `bastion trust restore` and `bastion.agent`")) == [["trust", "restore"]]


def _paths(text: str) -> Iterator[str]:
    for snippet in _code(text):
        for token in snippet.split():
            token = token.strip(_STRIP).rstrip(".:")
            in_a_dir = token.startswith(_REPO_DIRS) and not re.search(r"[<>*…{]|[A-Z]{2,}_?[A-Z]*/", token)
            if in_a_dir or re.fullmatch(r"[A-Z]+\.md|[\w-]+\.(toml|lock)|Makefile", token):
                yield token


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_the_docs_name_exists(doc: str) -> None:
    named = set(_paths(_text(doc)))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc} names {missing}, which the repository does not have"
    if doc == "ARCHITECTURE.md":
        assert len(named) >= 10


@pytest.mark.parametrize("doc", DOCS)
def test_no_link_leaves_the_repository(doc: str) -> None:
    text = _text(doc)
    assert "../" not in text, f"{doc} points outside the repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert not re.match(r"[a-z]+:", target), f"{doc} links outside the repository: {target}"
        path = (ROOT / doc).parent / target.split("#", 1)[0]
        assert path.resolve().is_relative_to(ROOT) and path.exists(), f"{doc}: broken link {target}"
