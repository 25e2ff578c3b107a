"""Every Axolotl and LLaMA-Factory fixture imports into a runner config that lints clean, reports exactly
the keys expected as not mapped, carries the expected values, and whose local datasets read through
runner's own data normaliser without a bad row (so columns and roles were translated right)."""

from pathlib import Path

import pytest
import yaml

from runner.importers import import_config
from runner.plan.lint import lint_files

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cases(tool: str, folder: str):
    expected = yaml.safe_load((FIXTURES / folder / "expected.yaml").read_text())
    return [pytest.param(tool, FIXTURES / folder / name, spec, id=f"{tool}:{name}") for name, spec in expected.items()]


CASES = _cases("axolotl", "axolotl") + _cases("llamafactory", "llamafactory")


def _lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_enough_fixtures_of_each_tool():
    assert sum(1 for c in CASES if c.values[0] == "axolotl") >= 10
    assert sum(1 for c in CASES if c.values[0] == "llamafactory") >= 10
    for case in CASES:
        assert case.values[1].is_file(), case.values[1]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("tool,source,spec", CASES)
def test_fixture_imports_and_lints(tool, source, spec, tmp_path):
    info = spec.get("dataset_info")
    # Written beside the source, as a user would (`-o` next to the original), so relative paths hold.
    out = source.parent / f".imported-{source.stem}.yaml"
    try:
        result = import_config(tool, source, out.parent, dataset_info=source.parent / info if info else None)
        assert result.errors == [], result.errors
        out.write_text(result.text)
        lint = lint_files([out])[0]
        assert lint.errors == [], [str(e) for e in lint.errors]
        config = yaml.safe_load(out.read_text())
    finally:
        out.unlink(missing_ok=True)

    assert sorted(result.translation.unmapped_keys()) == sorted(spec["unmapped"])
    for dotted, want in spec["values"].items():
        assert _lookup(config, dotted) == want, dotted
    lines = result.text.splitlines()
    assert lines[0].startswith(f"# Imported from the {tool} config {source}")
    tail = result.text[result.text.index("# Not mapped"):]
    for key in spec["unmapped"]:
        assert f"#   {key}: " in tail, key
    assert (f"# Not mapped ({len(spec['unmapped'])} key" in tail) if spec["unmapped"] else ("Not mapped: none" in tail)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("tool,source,spec", CASES)
def test_imported_local_datasets_read_without_bad_rows(tool, source, spec):
    """The translated format/columns/roles read the real files: no row is malformed under them."""
    from runner.data.readers import load_rows

    info = spec.get("dataset_info")
    result = import_config(tool, source, source.parent, dataset_info=source.parent / info if info else None)
    config = yaml.safe_load(result.text)
    local = [d for group in ("datasets", "eval_datasets") for d in config.get(group, []) if d.get("type") != "hub"]
    for ds in local:
        loaded = load_rows(ds, base_dir=str(source.parent))
        assert loaded.rows, ds["path"]
        assert len(loaded.rows) == loaded.rows_read, ds
        first = loaded.rows[0]
        if ds["format"] == "text":
            assert first["text"].strip()
        else:
            assert first["messages"], ds
