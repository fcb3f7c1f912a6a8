"""The docs stay in step with the code: docs/architecture.md maps every module of the package
and no other; every module, file and link the docs name exists; README keeps to a page, with
the set-up commands CI runs and the main job; the docs describe the software, not the history
of its making."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imgcomp"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
ALL_DOCS = [README, *DOCS, ROOT / "ckpts/README.md", ROOT / "figs/README.md"]
MAIN_JOB = "python val.py ckpts 1126_0305_2 samples --save_ours --real_bpp"

# A dotted name under the package, anywhere in the text (also `python -m imgcomp.x.y`).
DOTTED = re.compile(r"(?<![\w/.-])imgcomp(?:\.[A-Za-z_]\w*)+")
# A path into the repository's folders, not part of a longer path (~/.cache/imgcomp/...).
REPO_PATH = re.compile(r"(?<![\w/.~$-])(?:imgcomp|tests|bench|docs|figs|original_tf|results|"
                       r"ae_configs|pc_configs)/[\w./-]*\w")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def resolves(dotted: str) -> bool:
    """A module, or a name defined at the top level of one."""
    if dotted in MODULES:
        return True
    module, _, name = dotted.rpartition(".")
    return module in MODULES and name in top_level_names(MODULES[module])


def headings(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    titles = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


def test_architecture_maps_every_module_and_only_existing_ones():
    named = set(re.findall(r"`(imgcomp(?:\.\w+)*)`", (ROOT / "docs/architecture.md").read_text()))
    assert sorted(set(MODULES) - named) == []  # a module the map does not name
    assert sorted(named - set(MODULES)) == []  # a name that is no longer a module


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_modules_files_and_links_that_exist(doc):
    text = doc.read_text()
    assert sorted({d for d in DOTTED.findall(text) if not resolves(d)}) == []
    assert sorted({p for p in REPO_PATH.findall(text) if not (ROOT / p).exists()}) == []
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md"
                                 and anchor not in headings(path)):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_describe_the_software_not_its_making(doc):
    assert re.findall(r"\b(?:issue|session)s? #?\d+", doc.read_text(), re.I) == []


def test_readme_fits_on_a_page_and_links_every_doc():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(text)}
    assert sorted(str(d.relative_to(ROOT)) for d in DOCS if d.resolve() not in linked) == []


def test_readme_has_the_commands_ci_runs_and_the_main_job():
    # .ci/run marks the lines it takes from README with "# README's ... command:".
    ci = (ROOT / ".ci/run").read_text().splitlines()
    commands = [ci[i + 1] for i, line in enumerate(ci) if re.match(r"# README's .* command:", line)]
    assert len(commands) == 2
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = {line.strip() for block in blocks for line in block.splitlines()}
    for command in [*commands, MAIN_JOB]:
        assert command in lines
