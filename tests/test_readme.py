"""The README is a front door that stays true: short, its links land, its command lines parse (the docs' too).

A link to a file that moved, a heading renamed under an anchor, or a flag renamed in the CLI fails here
instead of in a newcomer's terminal.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# written by the public-API work of issue 22 (section 2) on another branch: checked as soon as it exists
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    """Relative link targets of a Markdown page, outside fenced code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z+.-]*:", t)]  # no http:, mailto:, ...


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _command_lines(page: Path) -> list[str]:
    """Every ``imae ...`` command in the page's bash blocks, continuation lines joined, one per ``&&`` part."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and Path(words[0]).name == "imae":
                    out.append(shlex.join(["imae", *words[1:]]))
    return out


@functools.cache
def _help(command: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "imae", command, "--help"], capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout + done.stderr


def _listed_flags(help_text: str) -> set[str]:
    """The flags a help text lists: the spec column of its option rows (``  --to {hf,timm,mae}  hf: ...``)."""
    specs = [re.split(r"\s{2,}", line.strip())[0] for line in help_text.splitlines() if re.match(r"\s+-", line)]
    return {f for spec in specs for f in re.findall(r"--[\w-]+", spec)}


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading_that_exist(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_shows_commands_to_check():
    lines = _command_lines(README)
    assert "imae quickstart" in lines and any(line.startswith("imae pretrain ") for line in lines)


@pytest.mark.parametrize("line", sorted({line for page in PAGES for line in _command_lines(page)}))
def test_every_command_line_of_the_readme_and_docs_names_a_command_and_flags_its_help_lists(line):
    words = shlex.split(line)
    code, text = _help(words[1])
    assert code == 0, f"imae {words[1]} --help exited {code}: {text[-500:]}"
    unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - _listed_flags(text)
    assert not unknown, f"{line}: imae {words[1]} --help lists no {sorted(unknown)}"


def test_a_renamed_flag_would_be_caught():
    code, text = _help("export")
    assert code == 0 and {"--to", "--output", "--help"} <= _listed_flags(text)
    assert "--to-format" not in _listed_flags(text) and "--output-dir" not in _listed_flags(text)
