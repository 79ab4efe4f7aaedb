"""The building blocks of the profile schema: a strict section, the value types, and one-line errors.

Every section is a `Section`: unknown keys are refused with the closest valid key, values are
checked strictly (no `"3"` for 3, no `true` for 1; an int is accepted where a float is meant),
a name that becomes a file or folder is a plain name (`paths.check_name`), and every model name
is normalized (`names.normalize_name`: surrounding whitespace stripped, invisible characters
refused); `normalized_input` carries the normalized names back into the profile's plain dict.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from arena_dagster.names import fold, normalize_name, spelling
from arena_dagster.paths import check_name


class Section(BaseModel):
    """A mapping of known keys with typed values; an unknown key is an error naming the closest known one."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.setting_names()
            for key in data:
                if key not in known:
                    raise PydanticCustomError("unknown_key", "unknown setting {key}",
                                              {"key": str(key), "known": sorted(known), "fix": cls.unknown_key_hint(str(key))})
        return data

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        """The fix to print for an unknown `key` ("" for the closest known key)."""
        return ""

    @classmethod
    def setting_names(cls) -> set[str]:
        """The keys a profile may write here (a field's alias where it has one)."""
        return {info.alias or name for name, info in cls.model_fields.items()}


def _plain_name(value: str) -> str:
    # ModelNameError and UnsafePathError are ValueErrors: pydantic reports them at the key's path
    return check_name(normalize_name(value, "name"))


Name = Annotated[str, AfterValidator(_plain_name)]
ModelName = Annotated[str, AfterValidator(normalize_name)]  # a model name as files spell it (not a folder)
Text = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def normalized_input(data: Any, validated: Any) -> Any:
    """`data` (the plain dict a section was validated from) with each string a validator changed (a
    name stripped of its surrounding whitespace) replaced by the validated one; `data` itself, the
    same object, where nothing changed. Mappings are paired in order (validation keeps it; two keys
    that normalize alike are refused before, see `check_distinct_keys`)."""
    if isinstance(validated, str):
        return validated if isinstance(data, str) and validated != data else data
    if isinstance(validated, BaseModel) and isinstance(data, dict):
        fields = {info.alias or name: name for name, info in type(validated).model_fields.items()}
        out = {key: normalized_input(value, getattr(validated, fields[key])) if key in fields else value
               for key, value in data.items()}
    elif isinstance(validated, dict) and isinstance(data, dict) and len(validated) == len(data):
        out = {normalized_input(key, new_key): normalized_input(value, new_value)
               for (key, value), (new_key, new_value) in zip(data.items(), validated.items())}
    elif isinstance(validated, (list, tuple)) and isinstance(data, list) and len(validated) == len(data):
        out = [normalized_input(value, new) for value, new in zip(data, validated)]
    else:
        return data
    return out if out != data or list(out) != list(data) else data


def check_distinct_keys(data: Any, field: str, where: str) -> None:
    """A rule error when two keys of `data[field]` (model names) are one name once normalized or case-folded."""
    keys = data.get(field) if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        return
    seen: dict[str, str] = {}
    for key in keys:
        if isinstance(key, str):
            other = seen.setdefault(fold(spelling(key)), key)
            if other != key:
                how = "are one name once stripped" if spelling(other) == spelling(key) else "differ only in case"
                raise rule(where, f"model names {other!r} and {key!r} {how} (and name one folder)", "rename one of them")


def existing_path(value: str, what: str) -> str:
    """`value` itself when the file or folder exists; a ValueError naming `what` otherwise."""
    from pathlib import Path

    if not Path(value).expanduser().exists():
        raise ValueError(f"{what} {value} does not exist")
    return value


def rule(path: str, message: str, fix: str | None = None) -> PydanticCustomError:
    """A broken rule between settings, reported at the key path `path`."""
    return PydanticCustomError("profile_rule", "{message}", {"path": path, "message": message, "fix": fix or ""})


def closest(key: str, known: list[str] | tuple[str, ...] | set[str]) -> str | None:
    match = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_fix(key: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    guess = closest(key, known)
    return f"did you mean {guess}?" if guess else f"known settings here: {', '.join(sorted(known))}"


# ---------------------------------------------------------------- errors as one line


def _dotted(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_path(loc: tuple[Any, ...], data: Any, missing: bool = False) -> list[Any]:
    """The key path of an error, following the input: union tags and validator names are left out."""
    parts: list[Any] = []
    node = data
    for position, item in enumerate(loc):
        if isinstance(node, dict) and item in node:
            parts.append(item)
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(item)
            node = node[item]
        elif missing and position == len(loc) - 1:
            parts.append(item)
    return parts


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(error: dict[str, Any], data: Any) -> tuple[str, str, str | None, list[Any]]:
    """(what, key path, fix, path parts) of one pydantic error, in the profile's words."""
    kind = error["type"]
    parts = error_path(tuple(error["loc"]), data, missing=kind == "missing")
    path = _dotted(parts)
    ctx = error.get("ctx") or {}
    if kind == "unknown_key":
        key = ctx["key"]
        full = f"{path}.{key}" if path else key
        return f"unknown setting {full}", full, ctx.get("fix") or unknown_key_fix(key, ctx["known"]), [*parts, key]
    if kind == "profile_rule":
        path, message = ctx["path"], ctx["message"]
        what = message if path in message else f"{path}: {message}"
        return what, path, ctx.get("fix") or None, path.split(".")
    if kind == "missing":
        return f"missing setting {path}", path, "add it to the profile (or to the profile it extends)", parts
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message[:1].lower() + message[1:]
    where = f"{path}: " if path else ""
    if kind in ("value_error", "assertion_error") or kind.startswith("union_tag") or kind in ("backend", "kind", "source"):
        return f"{where}{message}", path, None, parts
    value = error.get("input")
    fix = None
    if kind == "float_type" and isinstance(value, str):
        fix = "write numbers with a decimal point (1.0e-5, not 1e-5): YAML reads 1e-5 as text"
    elif kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        fix = f"quote it ('{value}'): YAML reads it as a number"
    return f"{where}{message}, got {_shown(value)}", path, fix, parts


def first_error(exc: ValidationError, data: Any) -> tuple[str, str | None, list[Any], int]:
    """(what, fix, path parts, number of other errors) of the first error of a validation."""
    errors = exc.errors(include_url=False)
    what, _path, fix, parts = describe(errors[0], data)
    return what, fix, parts, len(errors) - 1
