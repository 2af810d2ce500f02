"""The documentation: the README is a landing page into docs/, the site builds strictly with MkDocs, and
every `lightreasoner ...` command the README and the docs show is a command (with flags) that exists."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightreasoner.cli import CONFIG_REFERENCE_PAGE, main
from lightreasoner.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console"}
# `lightreasoner` where a shell command starts: a line's start, or after &&, ;, |, $( or a backtick span's start
COMMAND = re.compile(r"(?:^|&&|;|\||\$\()\s*lightreasoner((?:\s+[^\s&;|]+)*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _command_lines(text: str) -> list[str]:
    """The shell lines of the page's command blocks (continuations joined, comments cut) and its inline
    code spans that start with `lightreasoner `."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang in SHELL:
            for line in body.replace("\\\n", " ").splitlines():
                lines.append(re.split(r"\s#\s", line, maxsplit=1)[0])
    outside = FENCE.sub("", text)
    lines += [span for span in re.findall(r"`([^`\n]+)`", outside) if span.startswith("lightreasoner ")]
    return lines


def _commands() -> dict[tuple[str, ...], set[str]]:
    """(command words) -> the flags used with them, over the README and every docs page."""
    found: dict[tuple[str, ...], set[str]] = {}
    for page in PAGES:
        for line in _command_lines(page.read_text()):
            for match in COMMAND.finditer(line):
                words = match.group(1).split()
                command = tuple(w for w in words[:2] if re.fullmatch(r"[a-z][a-z-]*", w))
                command = command[:1] if command[:1] != ("pipeline",) else command
                if command:
                    found.setdefault(command, set()).update(FLAG.findall(match.group(1)))
    return found


def _help(words: tuple[str, ...], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0, f"lightreasoner {' '.join(words)} --help: exit {exit_info.value.code}"
    return capsys.readouterr().out


def _unknown_flags(words: tuple[str, ...], flags: set[str], capsys) -> list[str]:
    text = _help(words, capsys)
    return sorted(f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", text))


def test_every_documented_command_exists_with_its_flags(capsys):
    commands = _commands()
    # the documented commands are found at all (the scan itself works)
    assert {("run",), ("sample",), ("train",), ("evaluate",), ("pipeline", "submit"), ("doctor",)} <= set(commands)
    for words, flags in sorted(commands.items()):
        missing = _unknown_flags(words, flags, capsys)
        assert not missing, f"lightreasoner {' '.join(words)}: no such flag {missing} (see its --help)"


def test_the_check_catches_an_unknown_command_or_flag(capsys):
    assert _unknown_flags(("train",), {"--resume", "--no-such-flag", "--output-dir"}, capsys) == \
        ["--no-such-flag", "--output-dir"]
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command", "--help"])
    assert exit_info.value.code != 0
    capsys.readouterr()


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for block in ("main-command", "test-command"):
        assert f"<!-- {block} -->" in text, block
    # every page of the site is in the README's table of contents
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"


def _anchors(page: Path) -> set[str]:
    """The heading ids MkDocs (Python-Markdown's toc) gives a page's headings."""
    text = FENCE.sub("", page.read_text())
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        out.add(re.sub(r"[-\s]+", "-", slug))
    return out


def test_readme_links_into_docs_resolve():
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README.read_text())
    assert links
    for target, anchor in links:
        assert (ROOT / target).is_file(), target
        if anchor:
            assert anchor in _anchors(ROOT / target), f"{target}#{anchor}: no such heading"


def test_dated_measurements_live_on_the_performance_page():
    for page in PAGES:
        if page.name != "performance.md":
            assert not re.search(r"\b20\d\d-\d\d-\d\d\b", page.read_text()), f"{page.name}: a dated measurement"


def test_config_update_readme_defaults_to_the_docs_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / CONFIG_REFERENCE_PAGE
    page.parent.mkdir(parents=True)
    page.write_text("# Reference\n\n<!-- config-reference -->\nold\n<!-- /config-reference -->\ntail\n")
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--update-readme"]) == 0
    assert page.read_text() == f"# Reference\n\n<!-- config-reference -->\n{config_reference_markdown()}" \
                               "<!-- /config-reference -->\ntail\n"
    other = tmp_path / "OTHER.md"  # a path still names the file
    other.write_text("<!-- config-reference -->\n<!-- /config-reference -->\n")
    assert main(["config", "--update-readme", str(other)]) == 0
    assert config_reference_markdown() in other.read_text()
    capsys.readouterr()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs / mkdocs-material not installed (the dev extras install them)")
def test_docs_build_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    quickstart = (tmp_path / "site" / "quickstart" / "index.html").read_text()
    assert "pip install torch==2.13.0" in quickstart  # the README's commands, included in the page
