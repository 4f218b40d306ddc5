"""What is committed beside the code (tables, cards, configs) holds up on any machine that clones it."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def test_committed_tables_and_cards_name_no_folder_of_the_machine_that_made_them():
    """Results, cards and configs travel with the repository: a path like /tmp/... or /home/... in them is
    this machine's, meaningless elsewhere (bench_inference once copied one from a converter's error)."""
    local = re.compile(r"(?<![\w.~-])/(tmp|work|home|root|Users|var/folders)/")
    folders = ["results", "configs", "tf_models/release", "tf_models/models/weights"]
    files = [path for folder in folders for path in (REPO_ROOT / folder).rglob("*")
             if path.suffix in {".md", ".csv", ".json", ".yaml", ".txt"}]
    files += [REPO_ROOT / "README.md", REPO_ROOT / "ARCHITECTURE.md"]
    assert len(files) > 20
    found = [f"{path.relative_to(REPO_ROOT)}: {match.group(0)}" for path in files
             for match in local.finditer(path.read_text(encoding="utf-8", errors="replace"))]
    assert not found, found
