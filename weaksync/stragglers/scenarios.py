"""Straggler scenarios: named, cited sets of delay rules shipped as YAML (weaksync/scenarios/*.yaml).

A scenario file holds `name`, `description`, `source` (where its numbers come from) and `stragglers`, a
list of rules (see `StragglerRule`). `load_scenario` takes a shipped name or the path of a YAML file;
relative trace paths in a file are read relative to that file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .delays import KINDS, MODELS, StragglerRule, TraceDelay, make_sampler

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, description="short name (default: the file name without .yaml)")
    description: str = Field("", description="what the scenario models, in a sentence")
    source: str = Field("", description="where the shape and numbers come from")
    stragglers: list[StragglerRule] = Field(default_factory=list, description="delay rules")


def list_scenarios() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario YAML file by path; errors are one line."""
    text = str(name_or_path)
    shipped = list_scenarios()
    looks_like_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if text in shipped and not looks_like_path:
        path = SCENARIO_DIR / f"{text}.yaml"
    elif Path(text).is_file():
        path = Path(text)
    else:
        raise ValueError(
            f"unknown scenario '{text}': choose one of {', '.join(shipped)}, or pass a path to a YAML file"
        )
    return _load_file(path)


def _load_file(path: Path) -> Scenario:
    where = f"scenario file '{path}'"
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"{where}{line} is not valid YAML: fix its syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} cannot be read ({exc.__class__.__name__}): pass a readable YAML file") from None
    if not isinstance(doc, dict):
        fields = ", ".join(Scenario.model_fields)
        raise ValueError(f"{where} must hold a mapping with {fields}")
    doc.setdefault("name", path.stem)
    _resolve_trace_paths(doc, path.parent)
    try:
        scenario = Scenario.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"{where}: {describe_error(exc)}") from None
    for i, rule in enumerate(scenario.stragglers):
        if isinstance(rule.delay, TraceDelay):
            try:
                make_sampler(rule.delay, 0)  # reads and checks the CSV now, not in a worker mid-run
            except ValueError as exc:
                raise ValueError(f"{where}: stragglers[{i}].delay: {exc}") from None
    return scenario


def _resolve_trace_paths(doc: dict[str, Any], folder: Path) -> None:
    """Relative `path`s of trace delays are relative to the scenario file, not to the current directory."""
    rules = doc.get("stragglers")
    if not isinstance(rules, list):
        return
    for rule in rules:
        delay = rule.get("delay") if isinstance(rule, dict) else None
        if isinstance(delay, dict) and delay.get("kind") == "trace" and isinstance(delay.get("path"), str):
            p = Path(delay["path"]).expanduser()
            delay["path"] = str(p if p.is_absolute() else folder / p)


def describe_error(exc: ValidationError) -> str:
    """`stragglers[0].delay.mean: Input should be greater than 0 (and 1 more)` from a pydantic error."""
    errors = exc.errors()
    err = errors[0]
    raw = list(err["loc"])
    # a discriminated union puts the tag into the location: stragglers.0.delay.pareto.alpha -> ...delay.alpha
    loc = [p for i, p in enumerate(raw) if not (p in KINDS and i > 0 and raw[i - 1] == "delay")]
    ids = next((i for i, p in enumerate(loc) if p in ("ids", "servers") and i == 2), None)
    if ids is not None:  # ids: list[int] | "all" reports once per union member, under labels like list[int]
        loc = loc[: ids + 1]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "scenario"
    kind, msg = err["type"], err["msg"]
    if ids is not None:
        return f"{where}: use all, one id, or a list of ids >= 0 such as [0, 2]"
    if kind == "extra_forbidden":
        fields = _fields_at(raw[:-1])
        msg = f"unknown field: use one of {', '.join(fields)}" if fields else "unknown field"
    elif kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag", "?")
        msg = f"unknown kind '{tag}': use one of {', '.join(KINDS)}"
        where = f"{where}.kind"
    elif kind == "union_tag_not_found":
        msg = f"missing kind: use one of {', '.join(KINDS)}"
        where = f"{where}.kind"
    elif kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", msg))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"


def _fields_at(loc: list[Any]) -> list[str]:
    """Field names allowed at `loc`: the scenario, one of its rules, or a rule's delay model."""
    if not loc:
        return list(Scenario.model_fields)
    if len(loc) == 2 and loc[0] == "stragglers" and isinstance(loc[1], int):
        return list(StragglerRule.model_fields)
    if len(loc) == 4 and loc[0] == "stragglers" and loc[2] == "delay" and loc[3] in MODELS:
        return list(MODELS[loc[3]].model_fields)
    return []
