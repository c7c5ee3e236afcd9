"""The declarative mapping evaluator.

A mapping is data: target field -> rule. A rule is a source path ("vendor_name",
"amount.amount") or a table with some of these keys:

  from      a source path, or a list of paths (the first that is not empty wins)
  const     a constant
  option    the value of one of the pair's [options] (e.g. an external-id field name)
  template  a string with {path} placeholders
  type      money | money_str | decimal | str | int | bool | date | country
  default   used when the value is empty (may hold {path} placeholders)
  required  true: an empty value holds the record
  values    a table translating source values (e.g. payment types); `default` if no hit
  lookup    the name of a user lookup table; `keys` lists the source paths tried in order
            (ids or names); `fallback` names an entry of the pair's [fallbacks];
            `optional = true` leaves the field out instead of holding the record
  ref       the flow whose id map turns this source id into a target id;
            `reverse = true` turns a target id back into the source id
  each      a list path: the rule's `fields` are applied to every element

Every decision that is not a plain copy (lookup hit, fallback, id-map reference, default)
is recorded; a reference that cannot be resolved holds the record (HeldError) unless a
fallback is configured. Mappings know nothing of HTTP.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ConfigError, HeldError

CENT = Decimal("0.01")
RULE_KEYS = {"from", "const", "template", "type", "default", "required", "values", "lookup",
             "keys", "fallback", "ref", "reverse", "each", "fields", "label", "optional",
             "option"}
TYPES = {"money", "money_str", "decimal", "str", "int", "bool", "date", "country"}
# Country names as FreshBooks writes them -> the ISO codes BILL wants; others pass if 2 letters.
COUNTRIES = {
    "united states": "US", "united states of america": "US", "usa": "US", "canada": "CA",
    "united kingdom": "GB", "great britain": "GB", "australia": "AU", "new zealand": "NZ",
    "ireland": "IE", "mexico": "MX", "germany": "DE", "france": "FR", "netherlands": "NL",
    "spain": "ES", "italy": "IT", "india": "IN", "south africa": "ZA", "singapore": "SG",
}
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def get_path(data: Any, path: str) -> Any:
    cur = data
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def set_path(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    cur = data
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def to_decimal(value: Any) -> Decimal:
    if isinstance(value, Mapping) and "amount" in value:  # a FreshBooks Money object
        value = value["amount"]
    if isinstance(value, float):
        raise TypeError("money must never pass through float")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def convert(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "money":
        return to_decimal(value).quantize(CENT)
    if kind == "money_str":
        return str(to_decimal(value).quantize(CENT))
    if kind == "country":
        text = str(value).strip()
        return COUNTRIES.get(text.lower(), text.upper() if len(text) == 2 else None)
    if kind == "decimal":
        return to_decimal(value)
    if kind == "str":
        return str(value)
    if kind == "int":
        return int(Decimal(str(value)))
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
    if kind == "date":
        return str(value)[:10]
    raise ValueError(f"unknown type {kind}")


def _render(template: str, record: Any) -> str:
    return _PLACEHOLDER.sub(lambda m: str(get_path(record, m.group(1)) or ""), template)


def payload_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# (flow, id, reverse) -> the other side's id, or None
RefResolver = Callable[[str, str, bool], str | None]


@dataclass
class Context:
    lookups: Mapping[str, Mapping[str, str]]
    fallbacks: Mapping[str, str]
    resolve_ref: RefResolver
    lookup_labels: Mapping[str, str] = field(default_factory=dict)  # table -> "GL account"
    options: Mapping[str, Any] = field(default_factory=dict)        # the pair's [options]


@dataclass
class Result:
    payload: dict[str, Any]
    decisions: list[dict[str, Any]]


class FieldMap:
    """A compiled mapping for one flow."""

    def __init__(self, fields: Mapping[str, Any], *, where: str = "map"):
        self.fields = {name: normalize(rule, f"{where}.{name}") for name, rule in fields.items()}

    def apply(self, record: Mapping[str, Any], ctx: Context) -> Result:
        decisions: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        payload: dict[str, Any] = {}
        self._apply(self.fields, record, ctx, payload, "", decisions, missing)
        if missing:
            reasons = list(dict.fromkeys(m["reason"] for m in missing))  # once each
            raise HeldError("; ".join(reasons), missing={"missing": missing})
        return Result(payload, decisions)

    def _apply(self, fields, record, ctx, out, prefix, decisions, missing) -> None:
        for name, rule in fields.items():
            where = f"{prefix}{name}"
            if "each" in rule:
                items = get_path(record, rule["each"]) or []
                mapped = []
                for i, item in enumerate(items):
                    sub: dict[str, Any] = {}
                    self._apply(rule["fields"], item, ctx, sub, f"{where}[{i}].", decisions,
                                missing)
                    mapped.append(sub)
                set_path(out, name, mapped)
                continue
            value = self._value(rule, record, ctx, where, decisions, missing)
            if value is not None:
                set_path(out, name, value)

    def _value(self, rule, record, ctx, where, decisions, missing) -> Any:
        if "const" in rule:
            return rule["const"]
        if "option" in rule:
            return ctx.options.get(rule["option"])
        if "template" in rule:
            return _render(rule["template"], record)
        value, used = None, None
        for path in rule.get("from", []):
            value = get_path(record, path)
            if not empty(value):
                used = path
                break
        if "lookup" in rule:
            return self._lookup(rule, record, ctx, where, decisions, missing)
        if "ref" in rule and not empty(value):
            found = self._ref(rule, str(value), ctx, where, decisions, missing)
            return convert(found, rule["type"]) if "type" in rule and found else found
        if "values" in rule and not empty(value):
            table = rule["values"]
            hit = table.get(str(value))
            if hit is None:
                decisions.append({"field": where, "rule": "default", "source": value,
                                  "result": rule.get("default")})
                return rule.get("default")
            return hit
        if empty(value):
            if "default" in rule:
                result = rule["default"]
                if isinstance(result, str) and _PLACEHOLDER.search(result):
                    result = _render(result, record)
                decisions.append({"field": where, "rule": "default", "result": result})
                return result
            if rule.get("required"):
                missing.append({"field": where, "reason": f"{where} is empty in the source"})
            return None
        if used and len(rule.get("from", [])) > 1 and used != rule["from"][0]:
            decisions.append({"field": where, "rule": "alternative", "path": used})
        try:
            return convert(value, rule["type"]) if "type" in rule else value
        except (ValueError, TypeError) as exc:
            missing.append({"field": where, "reason": f"{where}: {exc}"})
            return None

    def _lookup(self, rule, record, ctx, where, decisions, missing) -> Any:
        table_name = rule["lookup"]
        table = ctx.lookups.get(table_name, {})
        tried = []
        for path in rule.get("keys", []):
            key = get_path(record, path)
            if empty(key) or isinstance(key, Mapping | list):
                continue  # e.g. `category` is an object in one API version, a name in another
            tried.append(str(key))
            if str(key) in table:
                decisions.append({"field": where, "rule": "lookup", "table": table_name,
                                  "key": path, "value": str(key), "result": table[str(key)]})
                return table[str(key)]
        label = ctx.lookup_labels.get(table_name, table_name)
        shown = " / ".join(repr(t) for t in tried) or "(none)"
        fb = rule.get("fallback")
        if fb and ctx.fallbacks.get(fb):
            decisions.append({"field": where, "rule": "fallback", "table": table_name,
                              "tried": tried, "fallback": fb, "result": ctx.fallbacks[fb]})
            return ctx.fallbacks[fb]
        if rule.get("optional"):
            if tried:
                decisions.append({"field": where, "rule": "lookup", "table": table_name,
                                  "tried": tried, "result": None})
            return None
        missing.append({"field": where, "lookup": table_name, "tried": tried,
                        "reason": f"{label} not mapped for {shown} (lookup {table_name})"})
        return None

    def _ref(self, rule, value, ctx, where, decisions, missing) -> Any:
        flow, reverse = rule["ref"], bool(rule.get("reverse"))
        found = ctx.resolve_ref(flow, value, reverse)
        if found is None:
            label = rule.get("label", flow.rstrip("s"))
            missing.append({"field": where, "ref": flow, "id": value,
                            "reason": f"{label} {value} is not synced yet (flow {flow})"})
            return None
        decisions.append({"field": where, "rule": "id_map", "flow": flow, "source": value,
                          "result": found})
        return found


def normalize(rule: Any, where: str) -> dict[str, Any]:
    """A rule in its full table form; raise ConfigError for a malformed one."""
    if isinstance(rule, str):
        return {"from": [rule]}
    if not isinstance(rule, Mapping):
        raise ConfigError(f"a mapping rule must be a source path or a table, not {rule!r}",
                          key=where)
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ConfigError(f"unknown rule keys {sorted(unknown)}; known: {sorted(RULE_KEYS)}",
                          key=where)
    out = dict(rule)
    if isinstance(out.get("from"), str):
        out["from"] = [out["from"]]
    if isinstance(out.get("keys"), str):
        out["keys"] = [out["keys"]]
    if "type" in out and out["type"] not in TYPES:
        raise ConfigError(f"unknown type {out['type']!r}; known: {sorted(TYPES)}", key=where)
    if "each" in out:
        out["fields"] = {k: normalize(v, f"{where}.{k}") for k, v in out.get("fields", {}).items()}
    if not ({"from", "const", "template", "lookup", "each", "option"} & set(out)):
        raise ConfigError("a rule needs one of from, const, template, lookup, option or each",
                          key=where)
    return out


def with_overrides(fields: Mapping[str, Any], overrides: Mapping[str, Any],
                   where: str) -> dict[str, Any]:
    """The built-in fields with a user's overrides: `name = rule` replaces a field,
    `list[].name = rule` a field of each element, and "" removes one."""
    merged = copy.deepcopy(dict(fields))
    for key, rule in overrides.items():
        target, name = merged, key
        if "[]." in key:
            outer, name = key.split("[].", 1)
            if outer not in merged or "each" not in _as_table(merged[outer]):
                raise ConfigError(f"{outer!r} is not a list field of this flow",
                                  key=f"{where}.{key}")
            outer_rule = _as_table(merged[outer])
            merged[outer] = outer_rule
            target = outer_rule.setdefault("fields", {})
        if rule == "":
            target.pop(name, None)
        else:
            target[name] = rule
    return merged


def _as_table(rule: Any) -> dict[str, Any]:
    return {"from": [rule]} if isinstance(rule, str) else rule
