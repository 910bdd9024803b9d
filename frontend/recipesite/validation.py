"""The input rules of a recipe, one implementation for the HTML form and the JSON API.

Each violation is a FieldError naming the field and the rule, so both the form (message next to the
field) and the API (a list in the 400 body) can say exactly what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TITLE_MAX = 200
AUTHOR_MAX = 100
INGREDIENTS_MAX = 100
INGREDIENT_MAX = 200
STEPS_MAX = 10_000
FIELDS = ("title", "author", "ingredients", "steps")


@dataclass(frozen=True)
class FieldError:
    field: str  # "title", "ingredients", "ingredients[3]" (JSON index) or "body"
    # machine-readable: required, max_length, min_items, max_items, type, unknown_field, character
    rule: str
    message: str  # for people: names the field and the limit

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "rule": self.rule, "message": self.message}


@dataclass
class RecipeInput:
    """A recipe as the user wrote it, normalised (stripped, CRLF -> LF); valid only if errors is empty."""

    title: str = ""
    author: str = ""
    ingredients: list[str] = field(default_factory=list)
    steps: str = ""
    errors: list[FieldError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_by_field(self) -> dict[str, list[str]]:
        """Messages grouped by form field ("ingredients[3]" belongs to "ingredients")."""
        out: dict[str, list[str]] = {}
        for err in self.errors:
            out.setdefault(err.field.split("[", 1)[0], []).append(err.message)
        return out


def _text(value: str) -> str:
    # Browsers send textarea line breaks as CRLF; count and store what the user sees.
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def _unstorable(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None. NUL (U+0000) is refused by PostgreSQL's text
    type and ends a string inside SQLite's functions; a lone surrogate (U+D800..U+DFFF, which JSON's
    \\ud800 escape produces) has no UTF-8 encoding at all. Both stores get the same rule here."""
    for i, char in enumerate(value, 1):
        if char == "\0" or "\ud800" <= char <= "\udfff":
            return f"the character U+{ord(char):04X} at position {i} cannot be stored; remove it"
    return None


def _check_characters(recipe: RecipeInput, skip: frozenset[str]) -> None:
    for name in ("title", "author", "steps"):
        why = None if name in skip else _unstorable(getattr(recipe, name))
        if why:
            recipe.errors.append(FieldError(name, "character", f"{name}: {why}"))
    if "ingredients" not in skip:
        for i, item in enumerate(recipe.ingredients):
            why = _unstorable(item)
            if why:
                recipe.errors.append(
                    FieldError("ingredients", "character", f"ingredients, item {i + 1}: {why}")
                )
                break


def _check(recipe: RecipeInput, skip: frozenset[str] = frozenset()) -> None:
    """The rules shared by both inputs, on normalised values; fields in `skip` already have an error."""
    errs = recipe.errors
    _check_characters(recipe, skip)
    if "title" not in skip:
        if not recipe.title:
            errs.append(FieldError("title", "required", f"title: required (1 to {TITLE_MAX} characters)"))
        elif len(recipe.title) > TITLE_MAX:
            errs.append(
                FieldError(
                    "title", "max_length", f"title: at most {TITLE_MAX} characters (got {len(recipe.title)})"
                )
            )
    if "author" not in skip and len(recipe.author) > AUTHOR_MAX:
        errs.append(
            FieldError(
                "author", "max_length", f"author: at most {AUTHOR_MAX} characters (got {len(recipe.author)})"
            )
        )
    if "ingredients" not in skip:
        n = len(recipe.ingredients)
        if n == 0:
            errs.append(
                FieldError("ingredients", "min_items", "ingredients: at least 1 ingredient is required")
            )
        elif n > INGREDIENTS_MAX:
            errs.append(
                FieldError(
                    "ingredients",
                    "max_items",
                    f"ingredients: at most {INGREDIENTS_MAX} ingredients (got {n})",
                )
            )
    if "steps" not in skip and len(recipe.steps) > STEPS_MAX:
        errs.append(
            FieldError(
                "steps", "max_length", f"steps: at most {STEPS_MAX:,} characters (got {len(recipe.steps):,})"
            )
        )


def _ingredient_too_long(field_name: str, label: str, item: str) -> FieldError:
    return FieldError(
        field_name,
        "max_length",
        f"{label}: at most {INGREDIENT_MAX} characters per ingredient (got {len(item)})",
    )


def from_form(form: Mapping[str, str]) -> RecipeInput:
    """The HTML form: ingredients are one per line; blank lines separate nothing and are dropped."""
    recipe = RecipeInput(
        title=_text(form.get("title", "")),
        author=_text(form.get("author", "")),
        ingredients=[line.strip() for line in _text(form.get("ingredients", "")).split("\n") if line.strip()],
        steps=_text(form.get("steps", "")),
    )
    _check(recipe)
    recipe.errors += [
        _ingredient_too_long("ingredients", f"ingredients, line {i}", item)
        for i, item in enumerate(recipe.ingredients, 1)
        if len(item) > INGREDIENT_MAX
    ]
    return recipe


def from_json(data: Any) -> RecipeInput:
    """A decoded JSON body: an object with string fields and `ingredients` a list of strings."""
    recipe = RecipeInput()
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        recipe.errors.append(FieldError("body", "type", f"body: must be a JSON object, got {kind}"))
        return recipe
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        # Most likely "id" or "created_at": those are assigned by the site, never by the client.
        recipe.errors.append(
            FieldError(
                unknown[0],
                "unknown_field",
                f"unknown field(s): {', '.join(unknown)} "
                f"(allowed: {', '.join(FIELDS)}; the id comes from idgen)",
            )
        )
    skip: set[str] = set()
    for name in ("title", "author", "steps"):
        value = data.get(name, "")
        if value is None and name != "title":
            value = ""  # an explicit null for an optional field means "none"
        if isinstance(value, str):
            setattr(recipe, name, _text(value))
        else:
            recipe.errors.append(FieldError(name, "type", f"{name}: must be a string"))
            skip.add(name)
    raw = data.get("ingredients", [])
    if not isinstance(raw, list):
        recipe.errors.append(FieldError("ingredients", "type", "ingredients: must be a list of strings"))
        skip.add("ingredients")
        raw = []
    if len(raw) > INGREDIENTS_MAX:
        # Report the count only: item-by-item errors for thousands of items would drown the message.
        recipe.errors.append(
            FieldError(
                "ingredients",
                "max_items",
                f"ingredients: at most {INGREDIENTS_MAX} ingredients (got {len(raw)})",
            )
        )
        skip.add("ingredients")
        raw = []
    for i, item in enumerate(raw):
        where = f"ingredients[{i}]"
        if not isinstance(item, str):
            recipe.errors.append(FieldError(where, "type", f"{where}: must be a string"))
            skip.add("ingredients")
        elif not item.strip():
            recipe.errors.append(FieldError(where, "required", f"{where}: must not be blank"))
            skip.add("ingredients")
        else:
            recipe.ingredients.append(_text(item))
            if len(recipe.ingredients[-1]) > INGREDIENT_MAX:
                recipe.errors.append(_ingredient_too_long(where, where, recipe.ingredients[-1]))
    _check(recipe, frozenset(skip))
    return recipe
