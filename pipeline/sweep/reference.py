"""The profile reference (docs/profile.md), generated from the pydantic models of
``pipeline/sweep/spec.py`` (``model_json_schema``), so that it cannot drift from what a profile
accepts: every key with its type, allowed values, bounds, default and description.

``ipcv-study profile-reference --out docs/profile.md`` rewrites it; ``tests/test_profile_docs.py``
fails when the committed file differs from what the models give.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = """# Profile reference

Generated from the profile schema (`pipeline/sweep/spec.py`) by
`ipcv-study profile-reference --out docs/profile.md`; do not edit by hand. A fully annotated
example that loads and validates: `profiles/example.yaml`. How a profile becomes cells:
docs/sweep.md.

A key path like `models[].dtype` is the `dtype` key of each entry of the `models` list. Keys
not listed are refused.
"""


def _ref(schema: dict[str, Any]) -> str | None:
    return schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None


def _type(schema: dict[str, Any]) -> str:
    """A readable type: ``int >= 0``, ``one of: a, b``, ``list of float (at least 1)``, ``X or null``."""
    if _ref(schema):
        return "mapping (below)"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of: " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        least = f" (at least {schema['minItems']})" if schema.get("minItems") else ""
        return f"list of {_type(schema.get('items', {}))}{least}"
    if kind == "object":
        keys = schema.get("propertyNames", {}).get("enum")
        return "mapping" + (f" with keys {', '.join(f'`{k}`' for k in keys)}" if keys else "")
    names = {"integer": "int", "number": "float", "string": "text", "boolean": "bool", "null": "null"}
    bounds = [f"{sign} {schema[key]:g}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                         ("maximum", "<="), ("exclusiveMaximum", "<")) if key in schema]
    return " ".join([names.get(kind, str(kind)), *bounds]) if bounds else names.get(kind, str(kind))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _nested(schema: dict[str, Any]) -> str | None:
    """The model a property holds: directly, in a list, or as an optional value."""
    for candidate in (schema, schema.get("items", {}), *schema.get("anyOf", [])):
        name = _ref(candidate) or _ref(candidate.get("items", {})) if isinstance(candidate, dict) else None
        if name:
            return name
    return None


def _section(path: str, name: str, defs: dict[str, Any], schema: dict[str, Any], out: list[str]) -> None:
    out += ["", f"## `{path}`" if path else "## top level", ""]
    if schema.get("description"):
        out += [" ".join(schema["description"].split()), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    required = set(schema.get("required", []))
    below = []
    for key, prop in schema.get("properties", {}).items():
        nested = _nested(prop)
        default = "required" if key in required else f"`{json.dumps(prop.get('default'))}`"
        if nested and key not in required and isinstance(prop.get("default"), dict):
            default = "its keys' defaults"
        kind = _type(prop) if not nested else ("list of mappings (below)" if prop.get("type") == "array"
                                               else "mapping (below)" + (" or null" if "anyOf" in prop else ""))
        out.append(f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(prop.get('description', ''))} |")
        if nested:
            below.append((f"{path}.{key}".lstrip(".") + ("[]" if prop.get("type") == "array" else ""), nested))
    for sub_path, sub in below:
        _section(sub_path, sub, defs, defs[sub], out)


def render() -> str:
    """The reference as Markdown."""
    from pipeline.sweep.spec import SweepSpec

    schema = SweepSpec.model_json_schema()
    out = [HEADER.rstrip()]
    _section("", "SweepSpec", schema.get("$defs", {}), schema, out)
    return "\n".join(out) + "\n"


def keys() -> dict[str, tuple[bool, Any]]:
    """Every key path of the schema (``models[].dtype``, ``methods.ipcv.budget``, ...) -> (whether
    it is required, its default)."""
    from pipeline.sweep.spec import SweepSpec

    schema = SweepSpec.model_json_schema()
    defs = schema.get("$defs", {})
    found: dict[str, tuple[bool, Any]] = {}

    def walk(path: str, node: dict[str, Any]) -> None:
        for key, prop in node.get("properties", {}).items():
            here = f"{path}.{key}".lstrip(".")
            found[here] = (key in node.get("required", []), prop.get("default"))
            nested = _nested(prop)
            if nested:
                walk(here + ("[]" if prop.get("type") == "array" else ""), defs[nested])

    walk("", schema)
    return found
