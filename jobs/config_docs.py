"""``docs/configuration.md``, generated from the config models: every key with its type, default and meaning.

``python -m batchscore.jobs.config_docs > docs/configuration.md`` (``make docs``) writes it; a test checks
that the file is what this module generates, so the reference cannot drift from what the loaders accept.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration

Every key the YAML files take, generated from the config models (`make docs`). A wrong key or type is an
error that names the key and the file, before any work. `${VAR}` and `${VAR:-default}` in string values
come from the environment; `--set a.b=value` on the command line overrides a key of a job
config and is validated the same way.
"""

SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "Job configs (`conf/jobs/<job>.yaml`)",
        "batchscore.jobs.config:ScoringJobConfig",
        "One file per job; `batchscore score|shadow|promote --config <file>`.",
    ),
    (
        "Spark profiles (`conf/spark/<profile>.yaml`)",
        "batchscore.jobs.config:SparkProfile",
        "Named by a job's `spark.profile`; `$BATCHSCORE_CONF_DIR` names another folder of them.",
    ),
    (
        "Airflow DAG configs (`conf/airflow/<dag>.yaml`)",
        "batchscore.jobs.scheduling:DagConfig",
        "One per DAG in `airflow_dags/`; `$BATCHSCORE_AIRFLOW_CONF` names another folder of them.",
    ),
)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (itself or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _model_of(models[0])
    return None


def type_name(annotation: Any) -> str:
    """A field's type in YAML terms: ``str``, ``list[str]``, ``"a" | "b"``, ``x | null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation)).replace("datetime.", "")


def default_of(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` of every field of ``model``, nested sections' keys dotted."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_of(field.annotation)
        meaning = (field.description or (nested.__doc__ or "" if nested else "")).strip()
        meaning = " ".join(meaning.split()) if meaning else "(undocumented)"
        yield key, type_name(field.annotation), default_of(field), meaning
        if nested is not None:
            yield from rows(nested, f"{key}.")


def _load(target: str) -> type[BaseModel]:
    import importlib

    module, name = target.split(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), name)
    return model


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    out = [HEADER]
    for title, target, intro in SECTIONS:
        out += [
            f"## {title}",
            "",
            intro,
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        out += [
            f"| `{key}` | {kind} | {default} | {_cell(meaning)} |"
            for key, kind, default, meaning in rows(_load(target))
        ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
