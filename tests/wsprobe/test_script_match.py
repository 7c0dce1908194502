"""``tools/wsprobe/script_match``: the subset matcher, its mismatch paths and the diff."""

from __future__ import annotations

import pytest

from tools.wsprobe.script_match import diff, explain, match, project

EFFECTS = {
    "t": "effects",
    "rid": 2,
    "version": 17,
    "effects": [
        {"e": "item_created", "item": {"id": 1010, "template": "bread"}},
        {"e": "stack_changed", "item_id": 1007, "qty": 3},
    ],
}

SHOWN = (
    '[{"e": "item_created", "item": {"id": 1010, "template": "bread"}}, '
    '{"e": "stack_changed", "item_id": 1007, "qty": 3}]'
)

# (expected, got, the mismatches as printed: empty when it matches)
CASES: list[tuple[object, object, list[str]]] = [
    ({"t": "effects"}, EFFECTS, []),
    ({}, EFFECTS, []),
    (
        {"t": "effects", "effects": [{"e": "item_created"}, {"e": "stack_changed", "qty": 3}]},
        EFFECTS,
        [],
    ),
    (
        {"effects": [{"e": "items_moved"}, {"e": "stack_changed"}]},
        EFFECTS,
        ['$.effects[0].e: expected "items_moved", got "item_created"'],
    ),
    (
        {"effects": [{"e": "item_created", "item": {"template": "cap"}}, {"qty": 4}]},
        EFFECTS,
        [
            '$.effects[0].item.template: expected "cap", got "bread"',
            "$.effects[1].qty: expected 4, got 3",
        ],
    ),
    ({"code": "conflict"}, EFFECTS, ['$.code: missing (expected "conflict")']),
    ({"effects": [{"e": "item_created"}]}, EFFECTS, ["$.effects length: expected 1, got 2"]),
    ({"effects": ["...", {"e": "stack_changed"}]}, EFFECTS, []),
    ({"effects": [{"e": "item_created"}, "..."]}, EFFECTS, []),
    ({"effects": ["...", {"e": "item_created"}, "...", {"qty": 3}, "..."]}, EFFECTS, []),
    ({"effects": ["...", "...", {"e": "stack_changed"}]}, EFFECTS, []),
    ({"effects": ["..."]}, {"effects": []}, []),
    (
        {"effects": ["...", {"e": "item_destroyed"}, "..."]},
        EFFECTS,
        [
            '$.effects: expected a list like ["...", {"e": "item_destroyed"}, "..."] '
            f"('...' = any elements), got {SHOWN}"
        ],
    ),
    (
        {"effects": [{"e": "stack_changed"}, "..."]},
        EFFECTS,
        [
            '$.effects: expected a list like [{"e": "stack_changed"}, "..."] '
            f"('...' = any elements), got {SHOWN}"
        ],
    ),
    # numbers by value, booleans only as booleans
    ({"version": 17.0}, EFFECTS, []),
    ({"replayed": False}, {"replayed": 0}, ["$.replayed: expected false, got 0"]),
    ({"qty": 1}, {"qty": True}, ["$.qty: expected 1, got true"]),
    ({"rid": "2"}, EFFECTS, ['$.rid: expected "2", got 2']),
    # shapes
    ({"effects": {"e": "x"}}, EFFECTS, [f'$.effects: expected {{"e": "x"}}, got {SHOWN}']),
    # long values are cut to 120 characters
    ({"s": "x" * 200}, {"s": "y"}, [f'$.s: expected "{"x" * 118}…, got "y"']),
    ({"version": [17]}, EFFECTS, ["$.version: expected [17], got 17"]),
    ({"t": "effects"}, [1, 2], ['$: expected {"t": "effects"}, got [1, 2]']),
    # keys that are not identifiers are quoted in the path
    (
        {"items": {"1000": {"qty": 2}}},
        {"items": {"1000": {"qty": 1}}},
        ['$.items["1000"].qty: expected 2, got 1'],
    ),
]


@pytest.mark.parametrize(("expected", "got", "printed"), CASES)
def test_match(expected: object, got: object, printed: list[str]) -> None:
    assert [str(m) for m in match(expected, got)] == printed


def test_project_keeps_only_what_the_expectation_names_in_its_order() -> None:
    expected = {"version": 1, "effects": [{"e": "x"}, {"qty": 9}], "missing": 1}
    assert project(expected, EFFECTS) == {
        "version": 17,
        "effects": [{"e": "item_created"}, {"qty": 3}],
    }
    # a list of another length, or with "...", is shown whole
    assert project({"effects": [{"e": "x"}]}, EFFECTS) == {"effects": EFFECTS["effects"]}
    assert project({"effects": ["..."]}, EFFECTS) == {"effects": EFFECTS["effects"]}


def test_diff_shows_the_differences_and_not_the_keys_left_out() -> None:
    expected = {"t": "effects", "effects": [{"e": "items_moved"}, {"e": "stack_changed"}]}
    lines = diff(expected, EFFECTS)
    assert lines[:2] == ["--- expected", "+++ got"]
    assert '-      "e": "items_moved"' in lines
    assert '+      "e": "item_created"' in lines
    assert '       "e": "stack_changed"' in lines  # unchanged context
    assert not any("rid" in line or "1010" in line for line in lines)


def test_diff_of_a_match_is_empty() -> None:
    assert diff({"t": "effects", "version": 17}, EFFECTS) == []


def test_explain_lists_each_mismatch_then_the_diff() -> None:
    expected = {"t": "error", "code": "conflict"}
    lines = explain(expected, EFFECTS, match(expected, EFFECTS))
    assert lines[0] == '  $.t: expected "error", got "effects"'
    assert lines[1] == '  $.code: missing (expected "conflict")'
    assert lines[2:4] == ["  --- expected", "  +++ got"]
    assert '  -  "code": "conflict"' in lines
