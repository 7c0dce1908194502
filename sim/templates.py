"""The game's data: item templates, compartments, skills, base stats and XP curves.

A designer edits one TOML file (``sim/data/templates.toml``); it is validated into typed,
immutable records, and errors name the file, the template (or section) and the field.
Parsing is pure (``parse_templates`` takes text); only ``load_templates`` reads a file.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from protocol.model import EQUIP_SLOTS, EQUIPMENT, LOST_AND_FOUND, EquipSlot

DEFAULT_TEMPLATES = Path(__file__).parent / "data" / "templates.toml"
SUPPORTED_SCHEMA_VERSIONS = (2,)

_T = TypeVar("_T")

Ident = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
StatName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
NonNeg = Annotated[int, msgspec.Meta(ge=0)]


class Requirements(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: Annotated[int, msgspec.Meta(ge=1)] = 1
    skills: dict[Ident, Annotated[int, msgspec.Meta(ge=1)]] = {}


class XpReward(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    skill: Ident
    amount: Annotated[int, msgspec.Meta(ge=1)]


class UseEffect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What using an item does: ``heal`` restores ``amount`` health, ``buff`` adds ``stats``
    for ``duration_ms``, ``xp`` only grants ``xp``. Any use may also grant ``xp``."""

    kind: Literal["heal", "buff", "xp"]
    amount: NonNeg = 0
    stats: dict[StatName, int] = {}
    duration_ms: NonNeg = 0
    xp: XpReward | None = None


Category = Literal["armor", "weapon", "shield", "jewelry", "consumable", "quest", "material"]


class ItemTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Ident
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    category: Category
    slots: tuple[EquipSlot, ...] = ()
    two_handed: bool = False
    stats: dict[StatName, int] = {}
    weight: NonNeg = 0  # grams, per unit of a stack
    max_stack: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    requires: Requirements = Requirements()
    use: UseEffect | None = None
    cooldown_group: Ident | None = None
    use_cooldown_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 0
    charges: Annotated[int, msgspec.Meta(ge=1)] | None = None
    equip_cooldown_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0
    tradeable: bool = True
    bind: Literal["none", "on_pickup", "on_equip"] = "none"

    @property
    def cooldown_key(self) -> str:
        """Shared group if any, else a cooldown of this template alone."""
        return self.cooldown_group or f"item:{self.id}"


class CompartmentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)]
    max_weight: NonNeg | None = None
    accepts: tuple[Category, ...] = ()  # empty = any
    carried: bool = True  # counts towards encumbrance
    player_can_place: bool = True  # lost_and_found: items arrive, players only take out


class Curve(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """XP to reach level L+1 from L is ``round(xp_base * xp_growth ** (L - 1))``."""

    xp_base: Annotated[int, msgspec.Meta(ge=1)] = 100
    xp_growth: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] = 1.5
    max_level: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50

    def thresholds(self) -> tuple[int, ...]:
        """Total XP needed for each level: index L-1 holds the XP at which level L starts."""
        total, out = 0, [0]
        for level in range(1, self.max_level):
            total += round(self.xp_base * self.xp_growth ** (level - 1))
            out.append(total)
        return tuple(out)


class SkillSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Ident
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    curve: Curve = Curve()


class PlayerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_stats: dict[StatName, int] = {}
    carry_capacity_base: NonNeg = 20_000  # grams
    carry_capacity_per_strength: NonNeg = 1_000
    movement_speed: NonNeg = 100  # percent
    burdened_above_pct: Annotated[int, msgspec.Meta(ge=1)] = 100
    overloaded_above_pct: Annotated[int, msgspec.Meta(ge=1)] = 150
    burdened_speed_pct: NonNeg = 75
    overloaded_speed_pct: NonNeg = 25


class KitItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    template: str
    qty: Annotated[int, msgspec.Meta(ge=1)] = 1
    compartment: str = "backpack"


class StarterKit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: tuple[KitItem, ...] = ()


class TemplateError(ValueError):
    """The template file is invalid. The message names the file, template and field."""


class Catalog(msgspec.Struct, frozen=True, dict=True):
    """Everything the rules know about the game's data. Immutable once loaded."""

    templates: dict[str, ItemTemplate]
    compartments: dict[str, CompartmentSpec]
    skills: dict[str, SkillSpec]
    player: PlayerSpec
    progression: Curve
    starter_kit: tuple[KitItem, ...] = ()
    digest: str = ""  # SHA-256 of the source text: which catalog a server runs

    def get(self, template_id: str) -> ItemTemplate | None:
        return self.templates.get(template_id)

    def skill_thresholds(self, skill: str) -> tuple[int, ...]:
        cache: dict[str, tuple[int, ...]] = self.__dict__.setdefault("_thresholds", {})
        found = cache.get(skill)
        if found is None:
            found = cache[skill] = self.skills[skill].curve.thresholds()
        return found

    def level_thresholds(self) -> tuple[int, ...]:
        cache: dict[str, tuple[int, ...]] = self.__dict__.setdefault("_thresholds", {})
        found = cache.get("")
        if found is None:
            found = cache[""] = self.progression.thresholds()
        return found


def level_for(xp: int, thresholds: tuple[int, ...]) -> int:
    """The level that ``xp`` total XP gives on a curve (1-based, capped at max level)."""
    level = 1
    for index, needed in enumerate(thresholds):
        if xp >= needed:
            level = index + 1
        else:
            break
    return level


def _where(source: str, section: str, exc: msgspec.ValidationError) -> TemplateError:
    # msgspec says "Expected `int`, got `str` - at `$.weight`" (or "- at `key` in `$.stats`"
    # for a bad dict key); designers want "field `weight`" (or "a key of field `stats`").
    found = _MSGSPEC_PATH.fullmatch(str(exc))
    if found is None:
        return TemplateError(f"{source}: {section}: {exc}")
    message, key, path = found.groups()
    field = f"a key of field `{path}`" if key else f"field `{path}`"
    return TemplateError(f"{source}: {section}: {field}: {message}")


_MSGSPEC_PATH = re.compile(r"(.*) - at (`key` in )?`\$\.(.+)`", re.DOTALL)


def parse_templates(text: str, source: str = "<string>") -> Catalog:
    """Parse and validate a TOML catalog.

    Raises:
        TemplateError: syntax errors, unknown fields, wrong types, duplicate ids, unknown
            slots, skills or categories, inconsistent stacking/charges/two-handed settings,
            compartments that are missing, or a starter kit that does not fit.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{source}: not valid TOML: {exc}") from None
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise TemplateError(
            f"{source}: schema_version {version!r} is not supported "
            f"(expected one of {SUPPORTED_SCHEMA_VERSIONS})"
        )
    unknown = set(raw) - {
        "schema_version", "template", "skill", "compartments", "player", "progression",
        "starter_kit",
    }  # fmt: skip
    if unknown:
        raise TemplateError(f"{source}: unknown top-level keys {sorted(unknown)}")

    def convert(value: object, kind: type[_T], section: str) -> _T:
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            raise _where(source, section, exc) from None

    skills: dict[str, SkillSpec] = {}
    for position, entry in enumerate(_tables(raw, "skill", source)):
        skill = convert(entry, SkillSpec, _label("skill", entry, position))
        _check_curve(skill.curve, f"{source}: skill {skill.id!r}: field `curve`")
        if skill.id in skills:
            raise TemplateError(f"{source}: skill {skill.id!r}: field `id`: duplicate skill id")
        skills[skill.id] = skill

    # One compartment at a time, so an error names it (msgspec paths elide dict keys).
    raw_compartments = raw.get("compartments", {})
    if not isinstance(raw_compartments, dict):
        raise TemplateError(f"{source}: `compartments` must be a table")
    compartments = {
        convert(name, Ident, f"compartment {name!r}"): convert(
            spec, CompartmentSpec, f"compartment {name!r}"
        )
        for name, spec in raw_compartments.items()
    }
    for required in ("backpack", LOST_AND_FOUND):
        if required not in compartments:
            raise TemplateError(f"{source}: compartments: `{required}` must be defined")
    if EQUIPMENT in compartments:
        raise TemplateError(f"{source}: compartments: `{EQUIPMENT}` is reserved")

    templates: dict[str, ItemTemplate] = {}
    for position, entry in enumerate(_tables(raw, "template", source)):
        where = _label("template", entry, position)
        tpl = convert(entry, ItemTemplate, where)
        _check_template(tpl, skills, f"{source}: {where}")
        if tpl.id in templates:
            raise TemplateError(f"{source}: {where}: field `id`: duplicate template id")
        templates[tpl.id] = tpl

    player = convert(raw.get("player", {}), PlayerSpec, "player")
    if player.overloaded_above_pct < player.burdened_above_pct:
        raise TemplateError(f"{source}: player: `overloaded_above_pct` below `burdened_above_pct`")
    progression = convert(raw.get("progression", {}), Curve, "progression")
    _check_curve(progression, f"{source}: progression")
    kit = convert(raw.get("starter_kit", {}), StarterKit, "starter_kit")
    _check_kit(kit, templates, compartments, source)
    return Catalog(
        templates=templates,
        compartments=compartments,
        skills=skills,
        player=player,
        progression=progression,
        starter_kit=kit.items,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


def _check_curve(curve: Curve, where: str) -> None:
    try:
        curve.thresholds()
    except OverflowError:
        raise TemplateError(
            f"{where}: the XP needed overflows; lower `xp_growth` or `max_level`"
        ) from None


def _check_kit(
    kit: StarterKit,
    templates: dict[str, ItemTemplate],
    compartments: dict[str, CompartmentSpec],
    source: str,
) -> None:
    """Raises TemplateError if the kit names unknown things or does not fit."""
    for n, item in enumerate(kit.items):
        where = f"{source}: starter_kit: field `items[{n}]"
        kit_tpl = templates.get(item.template)
        if kit_tpl is None:
            raise TemplateError(f"{where}.template`: unknown template {item.template!r}")
        if item.qty > kit_tpl.max_stack:
            raise TemplateError(
                f"{where}.qty`: {item.qty} of {item.template!r} exceeds max_stack"
                f" {kit_tpl.max_stack}"
            )
        spec = compartments.get(item.compartment)
        if spec is None:
            raise TemplateError(f"{where}.compartment`: unknown compartment {item.compartment!r}")
        if spec.accepts and kit_tpl.category not in spec.accepts:
            raise TemplateError(
                f"{where}.compartment`: {item.compartment!r} does not accept "
                f"{item.template!r} ({kit_tpl.category})"
            )
    for name, spec in compartments.items():
        count = sum(1 for item in kit.items if item.compartment == name)
        if count > spec.slots:
            raise TemplateError(
                f"{source}: starter_kit: field `items`: {count} items do not fit {name!r}"
                f" ({spec.slots} slots)"
            )


def _tables(raw: dict[str, object], key: str, source: str) -> list[object]:
    entries = raw.get(key, [])
    if not isinstance(entries, list):
        raise TemplateError(f"{source}: `{key}` must be an array of tables ([[{key}]])")
    return entries


def _label(kind: str, entry: object, position: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        return f"{kind} {entry['id']!r}"
    return f"{kind} #{position + 1}"


def _check_template(tpl: ItemTemplate, skills: dict[str, SkillSpec], where: str) -> None:
    if len(set(tpl.slots)) != len(tpl.slots):
        raise TemplateError(f"{where}: field `slots` lists a slot twice")
    if tpl.slots and tpl.max_stack != 1:
        raise TemplateError(f"{where}: field `max_stack` must be 1 for equippable items")
    if tpl.charges is not None and tpl.max_stack != 1:
        raise TemplateError(f"{where}: field `charges` needs `max_stack` = 1")
    if tpl.two_handed and tpl.slots != ("main_hand",):
        raise TemplateError(f'{where}: field `two_handed` needs `slots` = ["main_hand"]')
    for skill in tpl.requires.skills:
        if skill not in skills:
            raise TemplateError(f"{where}: field `requires.skills`: unknown skill {skill!r}")
    if tpl.use is not None:
        if tpl.use.xp is not None and tpl.use.xp.skill not in skills:
            raise TemplateError(
                f"{where}: field `use.xp.skill`: unknown skill {tpl.use.xp.skill!r}"
            )
        if tpl.use.kind == "buff" and (not tpl.use.stats or not tpl.use.duration_ms):
            raise TemplateError(f"{where}: field `use`: a buff needs `stats` and `duration_ms`")
        if tpl.use.kind == "xp" and tpl.use.xp is None:
            raise TemplateError(f'{where}: field `use.xp` is required for kind = "xp"')
    elif tpl.use_cooldown_ms or tpl.cooldown_group or tpl.charges:
        raise TemplateError(f"{where}: field `use` is required by cooldowns and charges")


def load_templates(path: Path = DEFAULT_TEMPLATES) -> Catalog:
    """Read and validate a catalog file.

    Raises:
        TemplateError: see :func:`parse_templates`; also when the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_templates(text, str(path))


__all__ = [
    "EQUIP_SLOTS",
    "Catalog",
    "ItemTemplate",
    "TemplateError",
    "level_for",
    "load_templates",
    "parse_templates",
]
