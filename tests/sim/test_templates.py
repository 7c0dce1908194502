"""The catalog file: every validation error names the file, the template or section and the
field; XP curves and levels; the shipped data loads and equips a new player."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.apply import apply_all
from sim.rules import grant_starter_kit
from sim.state import new_player
from sim.templates import (
    DEFAULT_TEMPLATES,
    Curve,
    TemplateError,
    level_for,
    load_templates,
    parse_templates,
)
from tests.sim.support import CATALOG, TEMPLATES_TOML, check_invariants, ctx

SOURCE = "designer/items.toml"

COMPARTMENTS = """
[compartments.backpack]
slots = 4
[compartments.belt]
slots = 2
accepts = ["consumable"]
[compartments.lost_and_found]
slots = 2
carried = false
player_can_place = false
"""
SKILL = '[[skill]]\nid = "alchemy"\nname = "Alchemy"\n'
CAP = '[[template]]\nid = "cap"\nname = "Cap"\ncategory = "armor"\nslots = ["head"]\n'
POTION = (
    '[[template]]\nid = "potion"\nname = "Potion"\ncategory = "consumable"\nmax_stack = 5\n'
    'use = { kind = "heal", amount = 10 }\n'
)


def item(template_id: str, category: str, *lines: str) -> str:
    head = f'[[template]]\nid = "{template_id}"\nname = "X"\ncategory = "{category}"\n'
    return head + "".join(f"{line}\n" for line in lines)


def doc(*parts: str, top: str = "schema_version = 2\n", compartments: str = COMPARTMENTS) -> str:
    """A catalog: top-level keys, compartments, one skill, then ``parts`` in order."""
    return top + compartments + SKILL + "".join(parts)


def kit(*entries: str) -> str:
    return f"[starter_kit]\nitems = [{', '.join(entries)}]\n"


# (description, TOML text, substrings the message must contain after "<file>: ")
ERROR_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # the file as a whole
    ("invalid TOML", doc("[[template]\n"), ("not valid TOML",)),
    (
        "unsupported schema_version",
        doc(CAP, top="schema_version = 1\n"),
        ("schema_version 1 is not supported",),
    ),
    ("missing schema_version", doc(CAP, top=""), ("schema_version None is not supported",)),
    (
        "schema_version of the wrong type",
        doc(CAP, top='schema_version = "2"\n'),
        ("schema_version '2' is not supported",),
    ),
    (
        "unknown top-level key",
        doc(CAP, top='schema_version = 2\ncolour = "red"\n'),
        ("unknown top-level keys ['colour']",),
    ),
    (
        "templates not an array of tables",
        doc(top="schema_version = 2\ntemplate = 3\n"),
        ("`template` must be an array of tables",),
    ),
    # templates: types and fields
    (
        "wrong type",
        doc(CAP, 'weight = "heavy"\n'),
        ("template 'cap'", "field `weight`", "Expected `int`, got `str`"),
    ),
    ("negative weight", doc(CAP, "weight = -1\n"), ("template 'cap'", "field `weight`", ">= 0")),
    (
        "unknown field",
        doc(CAP, 'colour = "red"\n'),
        ("template 'cap'", "unknown field `colour`"),
    ),
    (
        "missing field",
        doc('[[template]]\nid = "cap"\ncategory = "armor"\n'),
        ("template 'cap'", "missing required field `name`"),
    ),
    (
        "a template without id is named by position",
        doc(CAP, '[[template]]\nname = "Cap"\ncategory = "armor"\n'),
        ("template #2", "missing required field `id`"),
    ),
    (
        "an id that is not an identifier",
        doc(item("Big Cap", "armor")),
        ("template 'Big Cap'", "field `id`"),
    ),
    (
        "unknown category",
        doc(item("cap", "hat")),
        ("template 'cap'", "field `category`", "'hat'"),
    ),
    (
        "unknown slot",
        doc(item("cap", "armor", 'slots = ["hat"]')),
        ("template 'cap'", "field `slots[0]`", "'hat'"),
    ),
    (
        "a slot listed twice",
        doc(item("ring", "jewelry", 'slots = ["ring1", "ring1"]')),
        ("template 'ring'", "field `slots`", "twice"),
    ),
    (
        "a stat with a bad name",
        doc(CAP, 'stats = { "Armor Class" = 1 }\n'),
        ("template 'cap'", "a key of field `stats`"),
    ),
    (
        "duplicate template id",
        doc(CAP, CAP),
        ("template 'cap'", "field `id`", "duplicate template id"),
    ),
    (
        "two_handed with an off_hand slot",
        doc(item("bow", "weapon", 'slots = ["main_hand", "off_hand"]', "two_handed = true")),
        ("template 'bow'", "field `two_handed`", 'slots` = ["main_hand"]'),
    ),
    (
        "two_handed with no slot",
        doc(item("bow", "weapon", "two_handed = true")),
        ("template 'bow'", "field `two_handed`"),
    ),
    (
        "an equippable item that stacks",
        doc(CAP, "max_stack = 2\n"),
        ("template 'cap'", "field `max_stack`", "must be 1 for equippable items"),
    ),
    (
        "max_stack above its bound",
        doc(item("potion", "consumable", "max_stack = 10001")),
        ("template 'potion'", "field `max_stack`", "<= 10000"),
    ),
    (
        "charges on a stackable item",
        doc(POTION, "charges = 3\n"),
        ("template 'potion'", "field `charges`", "`max_stack` = 1"),
    ),
    (
        "zero charges",
        doc(item("wand", "consumable", "charges = 0", 'use = { kind = "heal", amount = 1 }')),
        ("template 'wand'", "field `charges`", ">= 1"),
    ),
    (
        "an unknown skill in requires",
        doc(CAP, "requires = { skills = { smithing = 2 } }\n"),
        ("template 'cap'", "field `requires.skills`", "unknown skill 'smithing'"),
    ),
    (
        "a required level below 1",
        doc(CAP, "requires = { level = 0 }\n"),
        ("template 'cap'", "field `requires.level`", ">= 1"),
    ),
    (
        "an unknown field in requires",
        doc(CAP, "requires = { rank = 2 }\n"),
        ("template 'cap'", "field `requires`", "unknown field `rank`"),
    ),
    (
        "an unknown skill in use.xp",
        doc(
            item(
                "tonic",
                "consumable",
                'use = { kind = "heal", amount = 1, xp = { skill = "smithing", amount = 5 } }',
            )
        ),
        ("template 'tonic'", "field `use.xp.skill`", "unknown skill 'smithing'"),
    ),
    (
        "an unknown use kind",
        doc(item("tonic", "consumable", 'use = { kind = "teleport" }')),
        ("template 'tonic'", "field `use.kind`", "'teleport'"),
    ),
    (
        "a buff without stats",
        doc(item("tonic", "consumable", 'use = { kind = "buff", duration_ms = 1000 }')),
        ("template 'tonic'", "field `use`", "a buff needs `stats` and `duration_ms`"),
    ),
    (
        "a buff without a duration",
        doc(item("tonic", "consumable", 'use = { kind = "buff", stats = { strength = 1 } }')),
        ("template 'tonic'", "field `use`", "a buff needs `stats` and `duration_ms`"),
    ),
    (
        "an xp use without xp",
        doc(item("book", "consumable", 'use = { kind = "xp" }')),
        ("template 'book'", "field `use.xp` is required"),
    ),
    (
        "a use cooldown without a use",
        doc(CAP, "use_cooldown_ms = 1000\n"),
        ("template 'cap'", "field `use`", "cooldowns and charges"),
    ),
    (
        "a cooldown group without a use",
        doc(CAP, 'cooldown_group = "hats"\n'),
        ("template 'cap'", "field `use`", "cooldowns and charges"),
    ),
    (
        "charges without a use",
        doc(item("wand", "consumable", "charges = 3")),
        ("template 'wand'", "field `use`", "cooldowns and charges"),
    ),
    (
        "a use cooldown above a day",
        doc(POTION, "use_cooldown_ms = 86400001\n"),
        ("template 'potion'", "field `use_cooldown_ms`", "<= 86400000"),
    ),
    (
        "an unknown bind rule",
        doc(CAP, 'bind = "on_sight"\n'),
        ("template 'cap'", "field `bind`", "'on_sight'"),
    ),
    # compartments
    (
        "no backpack",
        doc(CAP, compartments="[compartments.lost_and_found]\nslots = 2\n"),
        ("compartments", "`backpack` must be defined"),
    ),
    (
        "no lost_and_found",
        doc(CAP, compartments="[compartments.backpack]\nslots = 2\n"),
        ("compartments", "`lost_and_found` must be defined"),
    ),
    (
        "the reserved `equipment` name",
        doc(CAP, compartments=COMPARTMENTS + "[compartments.equipment]\nslots = 2\n"),
        ("compartments", "`equipment` is reserved"),
    ),
    (
        "a compartment field of the wrong type",
        doc(compartments=COMPARTMENTS + '[compartments.pouch]\nslots = "many"\n'),
        ("compartment 'pouch'", "field `slots`", "Expected `int`"),
    ),
    (
        "a compartment without cells",
        doc(compartments=COMPARTMENTS + "[compartments.pouch]\nslots = 0\n"),
        ("compartment 'pouch'", "field `slots`", ">= 1"),
    ),
    (
        "a compartment accepting an unknown category",
        doc(compartments=COMPARTMENTS + '[compartments.pouch]\nslots = 2\naccepts = ["gems"]\n'),
        ("compartment 'pouch'", "field `accepts[0]`", "'gems'"),
    ),
    (
        "an unknown compartment field",
        doc(compartments=COMPARTMENTS + "[compartments.pouch]\nslots = 2\nsize = 3\n"),
        ("compartment 'pouch'", "unknown field `size`"),
    ),
    (
        "a compartment name that is not an identifier",
        doc(compartments=COMPARTMENTS + "[compartments.Pouch]\nslots = 2\n"),
        ("compartment 'Pouch'",),
    ),
    # skills, player, progression
    (
        "duplicate skill id",
        doc(SKILL),
        ("skill 'alchemy'", "field `id`", "duplicate skill id"),
    ),
    (
        "an XP curve that shrinks",
        doc('[[skill]]\nid = "mining"\nname = "Mining"\ncurve = { xp_growth = 0.5 }\n'),
        ("skill 'mining'", "field `curve.xp_growth`", ">= 1.0"),
    ),
    (
        "an XP curve that overflows",
        doc(
            '[[skill]]\nid = "mining"\nname = "Mining"\n'
            "curve = { xp_growth = 10.0, max_level = 1000 }\n"
        ),
        ("skill 'mining'", "field `curve`", "overflows"),
    ),
    (
        "a progression that overflows",
        doc("[progression]\nxp_growth = 10.0\nmax_level = 1000\n"),
        ("progression", "overflows"),
    ),
    (
        "a progression field out of range",
        doc("[progression]\nmax_level = 0\n"),
        ("progression", "field `max_level`", ">= 1"),
    ),
    ("an unknown player field", doc("[player]\nluck = 7\n"), ("player", "unknown field `luck`")),
    (
        "a base stat with a bad name",
        doc('[player]\nbase_stats = { "Max Health" = 100 }\n'),
        ("player", "a key of field `base_stats`"),
    ),
    (
        "overloaded below burdened",
        doc("[player]\nburdened_above_pct = 150\noverloaded_above_pct = 100\n"),
        ("player", "`overloaded_above_pct` below `burdened_above_pct`"),
    ),
    # starter kit
    (
        "a kit naming an unknown template",
        doc(CAP, kit('{ template = "crown" }')),
        ("starter_kit", "field `items[0].template`", "unknown template 'crown'"),
    ),
    (
        "a kit stack above max_stack",
        doc(CAP, POTION, kit('{ template = "cap" }', '{ template = "potion", qty = 6 }')),
        ("starter_kit", "field `items[1].qty`", "exceeds max_stack 5"),
    ),
    (
        "a kit naming an unknown compartment",
        doc(CAP, kit('{ template = "cap", compartment = "pocket" }')),
        ("starter_kit", "field `items[0].compartment`", "unknown compartment 'pocket'"),
    ),
    (
        "a kit item in a compartment that refuses its category",
        doc(CAP, kit('{ template = "cap", compartment = "belt" }')),
        ("starter_kit", "field `items[0].compartment`", "'belt' does not accept 'cap' (armor)"),
    ),
    (
        "a kit that does not fit its compartment",
        doc(POTION, kit(*['{ template = "potion", compartment = "belt" }'] * 3)),
        ("starter_kit", "field `items`", "3 items do not fit 'belt' (2 slots)"),
    ),
    (
        "an unknown field in a kit item",
        doc(CAP, kit('{ template = "cap", colour = "red" }')),
        ("starter_kit", "field `items[0]`", "unknown field `colour`"),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(t, e, id=d) for d, t, e in ERROR_CASES]
)
def test_errors_name_the_file_section_and_field(text: str, expected: tuple[str, ...]) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_templates(text, SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: "), message
    for part in expected:
        assert part in message, message


def test_a_minimal_catalog_parses() -> None:
    """The base of the error rows is itself valid, so each row fails for its own reason."""
    catalog = parse_templates(doc(CAP, POTION, kit('{ template = "cap" }')), SOURCE)
    assert list(catalog.templates) == ["cap", "potion"]
    assert catalog.templates["cap"].slots == ("head",)
    assert catalog.compartments["belt"].accepts == ("consumable",)
    assert [entry.template for entry in catalog.starter_kit] == ["cap"]


def test_the_digest_identifies_the_text() -> None:
    assert CATALOG.digest == hashlib.sha256(TEMPLATES_TOML.encode()).hexdigest()


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "items.toml"
    path.write_text(doc(CAP, 'weight = "heavy"\n'), encoding="utf-8")
    with pytest.raises(TemplateError, match=f"^{path}: template 'cap': field `weight`"):
        load_templates(path)
    with pytest.raises(TemplateError, match="cannot read"):
        load_templates(tmp_path / "missing.toml")


def test_the_shipped_catalog_loads_and_equips_a_new_player() -> None:
    catalog = load_templates(DEFAULT_TEMPLATES)
    assert catalog.templates and catalog.skills and catalog.starter_kit
    assert {"backpack", "lost_and_found"} <= set(catalog.compartments)
    player = new_player(1, "new")
    ids = range(1, len(catalog.starter_kit) + 1)
    apply_all(player, grant_starter_kit(player, ctx(0, catalog), ids))
    assert len(player.items) == len(catalog.starter_kit)
    check_invariants(player, catalog)


# --- XP curves and levels ----------------------------------------------------------------


def test_thresholds_follow_the_formula() -> None:
    # 100, then 100 * 1.5 = 150, 225, 337.5 -> 338: cumulative totals.
    assert Curve(xp_base=100, xp_growth=1.5, max_level=5).thresholds() == (0, 100, 250, 475, 813)
    assert Curve(xp_base=7, xp_growth=1.0, max_level=4).thresholds() == (0, 7, 14, 21)
    assert Curve(max_level=1).thresholds() == (0,)


@pytest.mark.parametrize(
    ("xp", "level"),
    [(0, 1), (99, 1), (100, 2), (249, 2), (250, 3), (812, 4), (813, 5), (10**12, 5)],
)
def test_level_for(xp: int, level: int) -> None:
    assert level_for(xp, (0, 100, 250, 475, 813)) == level


curves = st.builds(
    Curve,
    xp_base=st.integers(1, 10_000),
    xp_growth=st.floats(1.0, 10.0),
    max_level=st.integers(1, 1000),
)


@given(curve=curves, xp=st.lists(st.integers(0, 10**30), min_size=2, max_size=2))
def test_any_curve_the_parser_accepts_is_monotonic_and_capped(curve: Curve, xp: list[int]) -> None:
    text = (
        f"[progression]\nxp_base = {curve.xp_base}\nxp_growth = {curve.xp_growth!r}\n"
        f"max_level = {curve.max_level}\n"
    )
    try:
        catalog = parse_templates(doc(text), SOURCE)
    except TemplateError as exc:
        assert "overflows" in str(exc)
        return
    thresholds = catalog.level_thresholds()
    assert thresholds == curve.thresholds()
    assert len(thresholds) == curve.max_level
    assert thresholds[0] == 0
    assert all(a < b for a, b in itertools.pairwise(thresholds))
    low, high = sorted(xp)
    assert 1 <= level_for(low, thresholds) <= level_for(high, thresholds) <= curve.max_level
    for level, needed in enumerate(thresholds[:50], start=1):
        assert level_for(needed, thresholds) == level
        if needed:
            assert level_for(needed - 1, thresholds) == level - 1


def test_skill_thresholds_are_the_skills_curve() -> None:
    assert CATALOG.skill_thresholds("alchemy") == (0, 10, 30, 70, 150)
    assert CATALOG.skill_thresholds("swords")[:3] == (0, 100, 200)
    assert CATALOG.level_thresholds()[:5] == (0, 100, 300, 700, 1500)
