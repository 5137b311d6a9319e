"""README.md's metric and configuration tables are the ones `make docs` writes from the declarations."""

from __future__ import annotations

import importlib.util
import re

import pytest

from support.helpers import ROOT

spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
assert spec is not None and spec.loader is not None
docs_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_tables)


def committed_table(name: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(f"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", readme, re.DOTALL)
    assert found is not None, f"README.md lost its {name} markers"
    return found[1]


@pytest.mark.parametrize("name", ["metrics", "configuration"])
def test_the_committed_readme_table_is_the_declared_one(name: str) -> None:
    assert committed_table(name) == docs_tables.tables()[name], f"README.md's {name} table: run make docs"


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match="metrics:begin"):
        docs_tables.generated("# a README without generated tables\n")
