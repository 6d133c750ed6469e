"""The README and docs/ point at things that exist: every relative link resolves, and the README's layout block
names every top-level folder and every memlm subpackage that the repository has."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def markdown_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in tracked.stdout.split()]


def test_every_relative_link_resolves():
    files = markdown_files()
    assert ROOT / "docs" / "index.md" in files
    broken = [(str(path.relative_to(ROOT)), target) for path in files for target in LINK.findall(path.read_text())
              if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()]
    assert broken == []


def test_docs_index_links_every_page():
    docs = ROOT / "docs"
    linked = {(docs / target).resolve() for target in LINK.findall((docs / "index.md").read_text())}
    pages = {path.resolve() for path in docs.rglob("*.md") if path.name != "index.md"}
    assert sorted(map(str, pages - linked)) == []


def test_readme_layout_names_the_real_folders():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n\n```\n(.*?)```", readme, flags=re.S)[1]
    top = {line.split()[0] for line in block.splitlines() if line and not line[0].isspace()}
    nested = {line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.strip()[0] != "("
              and not line.startswith("   ")}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {name.split("/")[0] + "/" for name in tracked if "/" in name and not name.startswith(".")}
    assert top == folders
    library = {name.split("/")[1] + ("/" if name.count("/") > 1 else "") for name in tracked
               if name.startswith("memlm/") and name.endswith(".py") and not name.endswith("/__init__.py")}
    assert {entry for entry in nested if entry != "harness/"} == library
    assert (ROOT / "scripts" / "harness" / "__init__.py").exists()
