"""runner.ui.yamledit: the form's edits land on the key's own line (comments, order and flow style
kept) and the edited text loads back with the new value through runner's own YAML reader."""
import pytest

from runner.config.yamlsafe import load_yaml
from runner.errors import UserError
from runner.ui.yamledit import set_value
from tests.tiny_model import REPO

QUICKSTART = (REPO / "cookbook" / "quickstart.yaml").read_text()


def value(text, *path):
    data = load_yaml(text, "t.yaml").value
    for key in path:
        data = data[key]
    return data


def changed_lines(a, b):
    return [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]


def test_an_existing_key_changes_on_its_line_with_its_comment():
    out = set_value(QUICKSTART, ("training", "learning_rate"), 0.0005)
    assert value(out, "training", "learning_rate") == 0.0005
    ((before, after),) = changed_lines(QUICKSTART, out)
    assert before.split("#")[1] == after.split("#")[1]  # the comment stays


@pytest.mark.parametrize("path, new, expected", [
    (("adapter", "r"), 8, 8),                                   # inside a flow mapping
    (("adapter", "use_rslora"), True, True),                    # added to a flow mapping
    (("training", "seed"), 7, 7),                               # added to a block mapping
    (("tracking", "wandb", "project"), "my proj: x", "my proj: x"),  # nested, quoted
    (("evaluation", "limit"), 3, 3),                            # a new section
    (("template", "system_prompt"), "yes", "yes"),              # a YAML keyword stays a string
    (("name",), None, None),
])
def test_edits_load_back_and_leave_the_rest_alone(path, new, expected):
    out = set_value(QUICKSTART, path, new)
    assert value(out, *path) == expected
    others = load_yaml(QUICKSTART, "t.yaml").value
    for key in others:
        if key != path[0]:
            assert value(out, key) == others[key]


def test_a_mapping_or_list_is_not_set_from_the_form():
    with pytest.raises(UserError, match="edit it in the YAML"):
        set_value(QUICKSTART, ("datasets",), "x")
    with pytest.raises(UserError, match="only a number, string"):
        set_value(QUICKSTART, ("training", "epochs"), {"a": 1})
