"""Template file validation: every error names the file, the template and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.model import EQUIP_SLOTS
from sim.apply import apply_all
from sim.rules import RuleContext, grant_starter_kit
from sim.state import COMPARTMENT_SIZES, new_player
from sim.templates import (
    DEFAULT_TEMPLATES,
    ItemTemplate,
    KitItem,
    TemplateError,
    load_templates,
    parse_templates,
)

SOURCE = "designer/items.toml"

CAP = '[[template]]\nid = "cap"\nname = "Cap"\ncategory = "armor"\nslots = ["head"]\n'


def doc(*parts: str, version: str = "schema_version = 1\n") -> str:
    return version + "".join(parts)


# (description, TOML text, substrings the message must contain)
ERROR_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "invalid TOML",
        doc("[[template]\nid = 1\n"),
        ("not valid TOML",),
    ),
    (
        "unsupported schema_version",
        doc(CAP, version="schema_version = 2\n"),
        ("schema_version 2 is not supported",),
    ),
    ("missing schema_version", CAP, ("schema_version None is not supported",)),
    (
        "schema_version of the wrong type",
        doc(CAP, version='schema_version = "1"\n'),
        ("schema_version '1' is not supported",),
    ),
    (
        "wrong type",
        doc(CAP, 'weight = "heavy"\n'),
        ("template 'cap'", "field `weight`", "Expected `int`"),
    ),
    (
        "negative number",
        doc(CAP, "weight = -1\n"),
        ("template 'cap'", "field `weight`", ">= 0"),
    ),
    (
        "cooldown above its bound",
        doc(CAP, "equip_cooldown_ms = 3600001\n"),
        ("template 'cap'", "field `equip_cooldown_ms`"),
    ),
    (
        "unknown field",
        doc(CAP, 'colour = "red"\n'),
        ("template 'cap'", "unknown field `colour`"),
    ),
    (
        "missing required field",
        doc('[[template]]\nid = "cap"\ncategory = "armor"\n'),
        ("template 'cap'", "missing required field `name`"),
    ),
    (
        "slot that does not exist",
        doc('[[template]]\nid = "cap"\nname = "Cap"\ncategory = "a"\nslots = ["head", "tail"]\n'),
        ("template 'cap'", "field `slots[1]`", "'tail'"),
    ),
    (
        "slot listed twice",
        doc('[[template]]\nid = "ring"\nname = "R"\ncategory = "a"\nslots = ["ring1", "ring1"]\n'),
        ("template 'ring'", "field `slots`", "twice"),
    ),
    (
        "equippable item that stacks",
        doc(CAP, "max_stack = 5\n"),
        ("template 'cap'", "field `max_stack`"),
    ),
    (
        "id that breaks the pattern",
        doc('[[template]]\nid = "Big Cap"\nname = "Cap"\ncategory = "armor"\n'),
        ("template 'Big Cap'", "field `id`"),
    ),
    (
        "template without an id is named by position",
        doc(CAP, '[[template]]\nname = "Nameless"\ncategory = "junk"\n'),
        ("template #2", "missing required field `id`"),
    ),
    (
        "duplicate id",
        doc(CAP, CAP),
        ("template 'cap'", "duplicate template id"),
    ),
    (
        "template is not an array of tables",
        doc('template = "cap"\n'),
        ("`template` must be an array of tables",),
    ),
    (
        "starter kit naming a missing template",
        doc(CAP, '[starter_kit]\nitems = [{ template = "cap" }, { template = "ghost" }]\n'),
        ("starter_kit", "unknown template 'ghost'"),
    ),
    (
        "starter kit quantity over the stack size",
        doc(CAP, '[starter_kit]\nitems = [{ template = "cap", qty = 2 }]\n'),
        ("starter_kit", "qty 2 of 'cap' exceeds max_stack"),
    ),
    (
        "starter kit entry with a bad field",
        doc(CAP, '[starter_kit]\nitems = [{ template = "cap", qty = 0 }]\n'),
        ("starter_kit", "field `items[0].qty`"),
    ),
    (
        "unknown top-level key",
        doc('colour = "red"\n', CAP),
        ("unknown top-level keys ['colour']",),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=description) for description, text, expected in ERROR_CASES],
)
def test_parse_errors_name_file_template_and_field(text: str, expected: tuple[str, ...]) -> None:
    with pytest.raises(TemplateError) as info:
        parse_templates(text, SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    for part in expected:
        assert part in message


def test_a_valid_document_parses_to_typed_records() -> None:
    catalog = parse_templates(
        doc(
            CAP,
            '[[template]]\nid = "bread"\nname = "Bread"\ncategory = "food"\nmax_stack = 20\n',
            '[starter_kit]\nitems = [{ template = "bread", qty = 3 }, { template = "cap" }]\n',
        ),
        SOURCE,
    )
    assert catalog.templates == {
        "cap": ItemTemplate(id="cap", name="Cap", category="armor", slots=("head",)),
        "bread": ItemTemplate(id="bread", name="Bread", category="food", max_stack=20),
    }
    assert catalog.starter_kit == (KitItem("bread", 3), KitItem("cap", 1))
    assert catalog.get("cap") is catalog.templates["cap"]
    assert catalog.get("ghost") is None


def test_load_templates_names_an_unreadable_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(TemplateError, match=r"nope\.toml: cannot read"):
        load_templates(missing)


def test_load_templates_uses_the_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "items.toml"
    path.write_text(doc(CAP, 'weight = "x"\n'), encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        load_templates(path)
    assert str(info.value).startswith(f"{path}: template 'cap': field `weight`")


def test_the_shipped_templates_load() -> None:
    catalog = load_templates()
    assert catalog == load_templates(DEFAULT_TEMPLATES)
    assert catalog.templates, "no templates shipped"
    for template_id, template in catalog.templates.items():
        assert template.id == template_id
        assert set(template.slots) <= set(EQUIP_SLOTS)
    assert {item.template for item in catalog.starter_kit} <= set(catalog.templates)
    assert len(catalog.starter_kit) <= COMPARTMENT_SIZES["backpack"]


def test_the_shipped_starter_kit_can_be_granted() -> None:
    catalog = load_templates()
    player = new_player(1, "p")
    context = RuleContext(tick=0, tick_ms=50, catalog=catalog)
    ids = range(1, len(catalog.starter_kit) + 1)
    apply_all(player, grant_starter_kit(player, context, ids))
    assert player.version == len(catalog.starter_kit)
    assert [player.items[i].template for i in ids] == [k.template for k in catalog.starter_kit]
