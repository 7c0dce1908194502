"""Item templates: the designer's data file, validated into typed, immutable records.

Parsing is pure (``parse_templates`` takes text); only ``load_templates`` reads a file.
Errors name the file, the template and the field so a designer can fix them without
reading Python.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from protocol.model import EQUIP_SLOTS, EquipSlot

DEFAULT_TEMPLATES = Path(__file__).parent / "data" / "templates.toml"
SUPPORTED_SCHEMA_VERSIONS = (1,)

TemplateId = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class ItemTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: TemplateId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    slots: tuple[EquipSlot, ...] = ()
    weight: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_stack: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    equip_cooldown_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0


class KitItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    template: str
    qty: Annotated[int, msgspec.Meta(ge=1)] = 1


class StarterKit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: tuple[KitItem, ...] = ()


class TemplateError(ValueError):
    """The template file is invalid. The message names the file, template and field."""


class Catalog(msgspec.Struct, frozen=True):
    """All templates by id, plus the starter kit. Immutable once loaded."""

    templates: dict[str, ItemTemplate]
    starter_kit: tuple[KitItem, ...] = ()

    def get(self, template_id: str) -> ItemTemplate | None:
        return self.templates.get(template_id)


def parse_templates(text: str, source: str = "<string>") -> Catalog:
    """Parse and validate a TOML template file.

    Raises:
        TemplateError: syntax errors, unknown fields, wrong types, duplicate ids, slots that
            do not exist, or a starter kit naming a missing template.
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
    entries = raw.get("template", [])
    if not isinstance(entries, list):
        raise TemplateError(f"{source}: `template` must be an array of tables ([[template]])")
    templates: dict[str, ItemTemplate] = {}
    for position, entry in enumerate(entries):
        label = (
            entry.get("id")
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
            else None
        )
        where = f"{source}: template {label!r}" if label else f"{source}: template #{position + 1}"
        try:
            tpl = msgspec.convert(entry, ItemTemplate)
        except msgspec.ValidationError as exc:
            raise TemplateError(f"{where}: {_field_message(exc)}") from None
        if tpl.id in templates:
            raise TemplateError(f"{where}: duplicate template id")
        if len(set(tpl.slots)) != len(tpl.slots):
            raise TemplateError(f"{where}: field `slots` lists a slot twice")
        if tpl.slots and tpl.max_stack != 1:
            raise TemplateError(f"{where}: field `max_stack` must be 1 for equippable items")
        templates[tpl.id] = tpl
    try:
        kit = msgspec.convert(raw.get("starter_kit", {}), StarterKit)
    except msgspec.ValidationError as exc:
        raise TemplateError(f"{source}: starter_kit: {_field_message(exc)}") from None
    for item in kit.items:
        tpl_for_kit = templates.get(item.template)
        if tpl_for_kit is None:
            raise TemplateError(f"{source}: starter_kit names unknown template {item.template!r}")
        if item.qty > tpl_for_kit.max_stack:
            raise TemplateError(
                f"{source}: starter_kit: qty {item.qty} of {item.template!r} exceeds max_stack"
            )
    unknown = set(raw) - {"schema_version", "template", "starter_kit"}
    if unknown:
        raise TemplateError(f"{source}: unknown top-level keys {sorted(unknown)}")
    return Catalog(templates=templates, starter_kit=kit.items)


def load_templates(path: Path = DEFAULT_TEMPLATES) -> Catalog:
    """Read and validate a template file.

    Raises:
        TemplateError: see :func:`parse_templates`; also when the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_templates(text, str(path))


def _field_message(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.weight`"; designers want "field `weight`".
    text = str(exc)
    message, sep, path = text.rpartition(" - at `$.")
    if sep:
        return f"field `{path.rstrip('`')}`: {message}"
    return text


__all__ = [
    "EQUIP_SLOTS",
    "Catalog",
    "ItemTemplate",
    "TemplateError",
    "load_templates",
    "parse_templates",
]
