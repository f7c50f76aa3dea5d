"""The pack's one-way stack (docs/architecture.md): no module imports from a layer above its own and no modules
import each other in a cycle — checked over every import statement, function-local ones included, by the same
code CI runs (scripts/check_imports.py)."""
import os
import sys

import pytest

from harness.paths import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import check_imports  # noqa: E402

pytestmark = pytest.mark.host_independent


def test_no_upward_import_and_no_cycle_in_the_pack():
    edges = check_imports.import_edges()
    assert len(edges) > 150   # the walk found the pack (a wrong root would find nothing and pass)
    assert check_imports.upward(edges) == []
    assert check_imports.cycles(edges) == []
    arrows = check_imports.folder_arrows(edges)
    assert ("nodes", "core") in arrows and ("samplers", "core") in arrows
    assert not any(b == "nodes" for (a, b) in arrows if a not in check_imports.ENTRY_POINTS)


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    files = {
        "__init__.py": "",
        "nodes/__init__.py": "", "nodes/thing.py": "from ..core import a\n",
        "samplers/__init__.py": "", "samplers/guider.py": "def f():\n    from ..distributed import session\n",
        "distributed/__init__.py": "", "distributed/session.py": "from ..samplers import guider\n",
        "core/__init__.py": "", "core/a.py": "from . import b\n", "core/b.py": "def g():\n    from .a import x\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    edges = check_imports.import_edges(str(tmp_path))
    assert ("nodes.thing", "core.a") in edges
    problems = check_imports.upward(edges)
    assert problems == ["samplers.guider (line 2) imports distributed.session: distributed/ is above samplers/"]
    assert sorted(check_imports.cycles(edges)) == [["core.a", "core.b"], ["distributed.session", "samplers.guider"]]
