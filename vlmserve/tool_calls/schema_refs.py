"""Tool schemas with `$defs` (what pydantic writes for nested models), made ready to join one grammar.

A tool-call grammar holds many schemas: each tool's arguments (Llama 3.2, under one root) or each argument
(Llama 4, one root per argument). So a tool's definitions are lifted out of its schema and its references
rewritten to name them under a prefix, which keeps the tools' definitions apart where they share one root.
Only references to the schema's own top-level definitions are supported (`#/$defs/Name`, `#/definitions/Name`);
anything else is refused naming the tool.
"""

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from vlmserve.engine.grammar_limits import DATA_KEYWORDS, SCHEMA_MAPS

DEFINITIONS = ("$defs", "definitions")
_LOCAL_REF = re.compile(r"^#/(\$defs|definitions)/([^/]+)$")


@dataclass(frozen=True)
class LiftedSchema:
    """A tool's arguments schema ready for a grammar: its body (None: it takes no arguments) and its definitions,
    which the body's references name as `#/$defs/<name>`."""

    body: dict | None
    definitions: dict[str, Any] = field(default_factory=dict)


def lifted(schema: dict | None, field: str, prefix: str = "") -> LiftedSchema:
    """The schema with its definitions lifted out and renamed `prefix`+name, every reference in both pointing at
    `#/$defs/<prefix><name>`. ValueError, naming `field`, for a reference that is not local."""
    if schema is None:
        return LiftedSchema(None)
    definitions = {}
    for key in DEFINITIONS:
        found = schema.get(key, {})
        if not isinstance(found, dict):
            raise ValueError(f"{field}.{key} must be an object of schemas")
        definitions.update(found)
    body = {key: value for key, value in schema.items() if key not in DEFINITIONS}
    rewrite = partial(_renamed, field=field, prefix=prefix, known=set(definitions))
    return LiftedSchema(rewrite(body), {prefix + name: rewrite(value) for name, value in definitions.items()})


def _renamed(value: Any, field: str, prefix: str, known: set[str]) -> Any:
    if isinstance(value, list):
        return [_renamed(item, field, prefix, known) for item in value]
    if not isinstance(value, dict):
        return value
    renamed = {}
    for key, item in value.items():
        if key == "$ref":
            renamed[key] = _local_ref(item, field, prefix, known)
        elif key in DATA_KEYWORDS:
            renamed[key] = item
        elif key in SCHEMA_MAPS and isinstance(item, dict):
            renamed[key] = {name: _renamed(schema, field, prefix, known) for name, schema in item.items()}
        else:
            renamed[key] = _renamed(item, field, prefix, known)
    return renamed


def _local_ref(ref: Any, field: str, prefix: str, known: set[str]) -> str:
    match = _LOCAL_REF.match(ref) if isinstance(ref, str) else None
    if match is None or match[2] not in known:
        raise ValueError(f"{field}: $ref {ref!r} is not supported; a tool schema may refer only to its own "
                         "top-level $defs (#/$defs/Name)")
    return f"#/$defs/{prefix}{match[2]}"
