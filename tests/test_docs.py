"""docs/config.md is generated from the schema; a stale page fails here."""

from runner.config.docs import config_reference
from runner.config.schema import load_schema

from conftest import REPO


def test_config_reference_is_current():
    page = (REPO / "docs" / "config.md").read_text()
    assert page == config_reference(), "docs/config.md is stale: run `runner schema --docs docs/config.md`"


def _walk(node, path=""):
    obj = node if "properties" in node else next((b for b in node.get("oneOf", []) if "properties" in b), None)
    if obj is None:
        return
    yield path, obj
    for key, sub in obj["properties"].items():
        yield from _walk(sub, f"{path}.{key}")
        if sub.get("type") == "array" and "properties" in sub.get("items", {}):
            yield from _walk(sub["items"], f"{path}.{key}[]")


def test_every_key_has_description_and_closed_sections():
    for path, obj in _walk(load_schema()):
        assert obj.get("additionalProperties") is False, f"{path or 'top level'} must be closed"
        for key, sub in obj["properties"].items():
            assert sub.get("description"), f"{path}.{key} has no description"
            assert "default" in sub or key in obj.get("required", []) or key == "extends" or "properties" in sub, \
                f"{path}.{key} has neither a default nor is required"
