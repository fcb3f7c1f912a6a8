"""README's Architecture section stays a true map of the package."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Backticked words of the section that are not modules: methods, functions, dataset names.
NOT_MODULES = {"forward", "symbols", "reconstruct", "bits", "compress", "decompress", "layers",
               "read_image", "write_image", "load_model", "samples", "kodak"}


def test_architecture_names_every_module_and_only_existing_ones():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    modules = {p.stem for p in (ROOT / "imgcomp").glob("*.py")} - {"__init__", "__main__"}
    assert sorted(modules - named) == []  # a module the map does not name
    assert sorted(named - modules - NOT_MODULES) == []  # a name that is no longer a module
