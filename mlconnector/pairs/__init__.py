"""The built-in pairs: flows and mappings as data (one TOML file per pair), and the
checks of a user's [pairs.NAME] section against them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import ConfigError
from ..mapping import FieldMap, with_overrides

BUILT_IN = {("freshbooks", "bill"): "freshbooks-bill",
            ("quickbooks", "servicenow"): "quickbooks-servicenow",
            ("freshbooks", "servicenow"): "freshbooks-servicenow",
            ("freshbooks", "salesforce"): "freshbooks-salesforce",
            ("servicetitan", "freshbooks"): "servicetitan-freshbooks"}


@dataclass(frozen=True)
class FlowDef:
    name: str
    label: str
    read_side: str       # "source" or "target": which system of the pair is read
    read_entity: str
    write_side: str
    write_entity: str
    fields: dict[str, Any]
    only: dict[str, list[str]] = field(default_factory=dict)
    void_when: dict[str, list[str]] = field(default_factory=dict)
    # options that allow creating in the target; else a record not found there is held
    create_when: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PairDef:
    key: str
    description: str
    flows: list[FlowDef]
    lookups: dict[str, dict[str, str]]
    fallbacks: dict[str, dict[str, str]]
    options: dict[str, dict[str, Any]]

    def flow(self, name: str) -> FlowDef:
        return next(f for f in self.flows if f.name == name)


@dataclass(frozen=True)
class Flow:
    """One flow as configured: the definition with the user's overrides compiled."""

    definition: FlowDef
    mapping: FieldMap

    @property
    def name(self) -> str:
        return self.definition.name


def pair_definition(source_type: str, target_type: str) -> PairDef | None:
    key = BUILT_IN.get((source_type, target_type))
    if key is None:
        return None
    raw = tomllib.loads(resources.files(__package__).joinpath(f"{key}.toml").read_text())
    flows = [
        FlowDef(name=f["name"], label=f.get("label", f["name"]),
                read_side=f["read"]["side"], read_entity=f["read"]["entity"],
                write_side=f["write"]["side"], write_entity=f["write"]["entity"],
                fields=f["fields"], only=f.get("only", {}),
                void_when=f.get("void_when", {}), create_when=f.get("create_when", {}))
        for f in raw["flows"]
    ]
    return PairDef(key, raw.get("description", ""), flows, raw.get("lookups", {}),
                   raw.get("fallbacks", {}), raw.get("options", {}))


def known_pairs() -> list[str]:
    return [f"{s} -> {t}" for s, t in BUILT_IN]


def resolve(pair_name: str, pair_cfg: Any, source_type: str, target_type: str,
            file: str | None = None) -> tuple[PairDef, list[Flow], dict[str, Any]]:
    """The pair's definition, its flows in dependency order with the user's overrides,
    and its options with defaults. Everything the user wrote is checked here."""
    where = f"pairs.{pair_name}"
    pdef = pair_definition(source_type, target_type)
    if pdef is None:
        raise ConfigError(f"no built-in pair moves {source_type} -> {target_type}; "
                          f"built-in: {', '.join(known_pairs())}", file=file, key=where)
    names = [f.name for f in pdef.flows]
    wanted = pair_cfg.flows or names
    for name in wanted:
        if name not in names:
            raise ConfigError(f"unknown flow {name!r}; this pair has {', '.join(names)}",
                              file=file, key=f"{where}.flows")
    for name in pair_cfg.lookups:
        if name not in pdef.lookups:
            raise ConfigError(f"unknown lookup table {name!r}; this pair uses "
                              f"{', '.join(pdef.lookups) or 'none'}", file=file,
                              key=f"{where}.lookups.{name}")
    for name in pair_cfg.fallbacks:
        if name not in pdef.fallbacks:
            raise ConfigError(f"unknown fallback {name!r}; this pair has "
                              f"{', '.join(pdef.fallbacks) or 'none'}", file=file,
                              key=f"{where}.fallbacks.{name}")
    for name in pair_cfg.map:
        if name not in names:
            raise ConfigError(f"map names unknown flow {name!r}; this pair has "
                              f"{', '.join(names)}", file=file, key=f"{where}.map.{name}")
    options: dict[str, Any] = {}
    for name, spec in pdef.options.items():
        options[name] = pair_cfg.options.get(name, spec.get("default"))
    for name, value in pair_cfg.options.items():
        spec = pdef.options.get(name)
        if spec is None:
            raise ConfigError(f"unknown option {name!r}; this pair has "
                              f"{', '.join(pdef.options) or 'none'}", file=file,
                              key=f"{where}.options.{name}")
        if spec.get("choices") and value not in spec["choices"]:
            raise ConfigError(f"must be one of {', '.join(map(str, spec['choices']))}",
                              file=file, key=f"{where}.options.{name}")
    flows = []
    for fdef in pdef.flows:
        if fdef.name not in wanted:
            continue
        overrides = pair_cfg.map.get(fdef.name, {})
        try:
            fields = with_overrides(fdef.fields, overrides, f"{where}.map.{fdef.name}")
            mapping = FieldMap(fields, where=f"{where}.map.{fdef.name}")
        except ConfigError as exc:
            raise ConfigError(exc.problem, file=file, key=exc.key) from None
        flows.append(Flow(fdef, mapping))
    return pdef, flows, options
