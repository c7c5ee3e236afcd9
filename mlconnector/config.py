"""`connectors.toml`: pydantic models, loading, and error messages a person can act on.

Every model forbids unknown keys: a typo is an error, never a silently ignored setting.
Every problem is raised as `ConfigError(problem, file=..., key="systems.ap.organization_id")`
(exit 2) before anything is read or written. Secrets never live in the file: a secret key
written there is refused, and no message ever repeats a value from the file.

Layout (see connectors.toml.example for a commented, complete file):

    [settings]            data_dir
    [systems.NAME]        type = "freshbooks" | "quickbooks" | "servicetitan" | "servicenow"
                          | "bill" | "salesforce", plus that type's keys (below), and on every
                          type: base_url, timeout, max_in_flight, [tables], [columns]
    [pairs.NAME]          source, target, flows, [lookups.TABLE], [fallbacks], [map.FLOW],
                          [options]

`[systems.NAME.tables]` renames a table the connector uses, by its logical name
(`invoice = "sn_apo_invoice"`). `[systems.NAME.columns.TABLE]` renames that table's columns:
one sub-table per logical table name, documented column name = what this instance calls it
(`[systems.snow.columns.invoice_import]  u_supplier = "u_vendor_code"`).

Pair-specific checks (flow, lookup, fallback, map and option names) are made by the pair
definitions in `mlconnector.pairs`; here those sections are only typed loosely.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .urls import is_loopback

APP = "mlconnector"
CONFIG_FILE = "connectors.toml"
ENV_CONFIG = "MLCONNECTOR_CONFIG"
ENV_DATA_DIR = "MLCONNECTOR_DATA_DIR"

# The secrets of each system type (DESIGN, "Config"). They come from the environment
# (MLCONNECTOR_<SYSTEM>_<FIELD>) or the keyring (service "mlconnector/<system>"), never the file.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "freshbooks": ("client_secret", "refresh_token"),
    "quickbooks": ("client_secret", "refresh_token", "webhook_verifier"),
    "servicetitan": ("client_secret", "app_key"),
    "servicenow": ("client_secret", "password"),
    "bill": ("dev_key", "password", "webhook_security_key"),
    "salesforce": ("client_secret",),
}
# Also refused anywhere under [systems.X], whatever the type: cached credentials.
_CACHED_SECRETS = ("access_token", "session_id", "token", "api_key", "secret", "app_secret")
_ALL_SECRETS = frozenset(f for fields in SECRET_FIELDS.values() for f in fields) | frozenset(
    _CACHED_SECRETS)

_SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PAIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                   r"[A-Za-z0-9])?)*$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def env_var_name(system: str, field: str) -> str:
    """`MLCONNECTOR_<SYSTEM>_<FIELD>`, upper-cased, `-` as `_` (DESIGN, secrets rules)."""
    return f"MLCONNECTOR_{system}_{field}".upper().replace("-", "_")


def check_url(value: str) -> str:
    """An http(s) URL with a host; plain http only on loopback. Returned without a trailing
    slash. The messages never repeat the value (it might hold a pasted credential)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a URL such as https://api.example.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password; secrets live in the "
                         "environment or the keyring")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("plain http is only allowed on loopback (the sandbox and tests); "
                         "use https")
    return value.rstrip("/")


def _host_or_url(value: str) -> str:
    """An instance / My Domain name (`acme`), a full host (`acme.my.salesforce.com`) or a URL."""
    value = value.strip()
    if "://" in value:
        return check_url(value)
    if not _HOST.match(value):
        raise ValueError("must be a name such as 'acme', a host name, or an https:// URL")
    return value


def _id_to_str(value: Any) -> Any:
    """TOML users write ids with or without quotes; an integer id is the same id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_to_str), StringConstraints(strip_whitespace=True,
                                                                   min_length=1)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Url = Annotated[str, BeforeValidator(lambda v: check_url(v) if isinstance(v, str) else v)]
HostOrUrl = Annotated[str, BeforeValidator(lambda v: _host_or_url(v) if isinstance(v, str)
                                           else v)]
LookupValue = Annotated[str, BeforeValidator(_id_to_str)]


class _Problem(ValueError):
    """A ValueError raised by a model validator that knows which key is at fault."""

    def __init__(self, message: str, *key: str):
        super().__init__(message)
        self.key = key


# -- settings --------------------------------------------------------------------------------

class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "~" is expanded; a relative path is taken from the config file's folder (by load_config)
    data_dir: Path | None = None

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None


# -- systems ---------------------------------------------------------------------------------

class _System(BaseModel):
    """Keys every system type accepts."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str = ""          # the NAME of [systems.NAME]; set by the loader, never in the file
    base_url: Url | None = None
    tables: dict[str, Text] = {}
    columns: dict[str, dict[str, Text]] = {}
    timeout: float = Field(30.0, gt=0, le=600)
    max_in_flight: int | None = Field(None, ge=1)

    # logical table name -> the documented default; where a type lists them, [tables] and
    # [columns] may only name these (a typo is an error, not an ignored rename).
    DEFAULT_TABLES: ClassVar[dict[str, str]] = {}

    @model_validator(mode="after")
    def _known_tables(self) -> _System:
        known = self.DEFAULT_TABLES
        if known:
            for section, names in (("tables", self.tables), ("columns", self.columns)):
                for table in names:
                    if table not in known:
                        raise _Problem(_unknown("table", table, known), section, table)
        return self

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return SECRET_FIELDS[self.type]

    def env_var(self, field: str) -> str:
        """The environment variable that holds this system's secret `field`."""
        return env_var_name(self.name, field)

    def table(self, logical: str) -> str:
        """What this instance calls a table: the [tables] rename, else the default."""
        return self.tables.get(logical) or self.DEFAULT_TABLES.get(logical, logical)

    def column(self, logical_table: str, column: str) -> str:
        """What this instance calls a column of a table (by the table's logical name)."""
        return self.columns.get(logical_table, {}).get(column, column)

    def resolved_base_url(self) -> str:  # pragma: no cover - every type overrides it
        raise NotImplementedError


class FreshBooksSystem(_System):
    type: Literal["freshbooks"]
    client_id: Text
    redirect_uri: Url = "https://localhost:8765/callback"
    account_id: Id | None = None          # learned at `auth login` / first use when left out
    auth_url: Url | None = None           # the browser's authorize page host only

    API: ClassVar[str] = "https://api.freshbooks.com"
    AUTH: ClassVar[str] = "https://auth.freshbooks.com"

    def resolved_base_url(self) -> str:
        return self.base_url or self.API

    def authorize_url(self) -> str:
        return f"{self.auth_url or self.AUTH}/oauth/authorize"

    def token_url(self) -> str:
        # FreshBooks' token endpoint is on the API host, so base_url moves it, not auth_url.
        return f"{self.resolved_base_url()}/auth/oauth/token"


class QuickBooksSystem(_System):
    type: Literal["quickbooks"]
    client_id: Text
    redirect_uri: Url = "https://localhost:8765/callback"
    realm_id: Id | None = None            # learned at `auth login` when left out
    environment: Literal["sandbox", "production"] = "production"
    # QuickBooks serves 1-74 as 75 since 2025-08-01; 75 is the minimum and the default.
    minor_version: int = Field(75, ge=75)
    auth_url: Url | None = None           # replaces the appcenter and token hosts alike

    HOSTS: ClassVar[dict[str, str]] = {
        "sandbox": "https://sandbox-quickbooks.api.intuit.com",
        "production": "https://quickbooks.api.intuit.com",
    }

    def resolved_base_url(self) -> str:
        return self.base_url or self.HOSTS[self.environment]

    def authorize_url(self) -> str:
        return f"{self.auth_url or 'https://appcenter.intuit.com'}/connect/oauth2"

    def token_url(self) -> str:
        return f"{self.auth_url or 'https://oauth.platform.intuit.com'}/oauth2/v1/tokens/bearer"

    def revoke_url(self) -> str:
        return f"{self.auth_url or 'https://developer.api.intuit.com'}/v2/oauth2/tokens/revoke"


class ServiceTitanSystem(_System):
    type: Literal["servicetitan"]
    client_id: Text
    tenant_id: Id
    environment: Literal["integration", "production"] = "production"
    auth_url: Url | None = None

    HOSTS: ClassVar[dict[str, str]] = {
        "integration": "https://api-integration.servicetitan.io",
        "production": "https://api.servicetitan.io",
    }
    AUTH_HOSTS: ClassVar[dict[str, str]] = {
        "integration": "https://auth-integration.servicetitan.io",
        "production": "https://auth.servicetitan.io",
    }

    @field_validator("tenant_id")
    @classmethod
    def _numeric(cls, v: str) -> str:
        if not v.isdigit():
            raise ValueError("must be the numeric ServiceTitan tenant id")
        return v

    def resolved_base_url(self) -> str:
        return self.base_url or self.HOSTS[self.environment]

    def token_url(self) -> str:
        return f"{self.auth_url or self.AUTH_HOSTS[self.environment]}/connect/token"


class ServiceNowSystem(_System):
    type: Literal["servicenow"]
    instance: HostOrUrl | None = None     # "acme" -> https://acme.service-now.com
    auth: Literal["client_credentials", "basic"] = "client_credentials"
    client_id: Text | None = None         # for auth = "client_credentials"
    username: Text | None = None          # for auth = "basic"
    # how AP records are written: through the Import Set staging tables (the default,
    # transformed by the instance) or straight into the tables with the Table API, for
    # instances without the Source-to-Pay integration framework
    write_via: dict[Literal["invoices", "payments"], Literal["import_set", "table"]] = {}

    # The documented tables (api/servicenow.md); an instance may rename any of them.
    DEFAULT_TABLES: ClassVar[dict[str, str]] = {
        "company": "core_company",
        "supplier": "sn_fin_supplier",
        "invoice": "sn_shop_invoice",
        "invoice_line": "sn_shop_invoice_line",
        "payment_detail": "sn_shop_invoice_payment_detail",
        "purchase_order": "sn_shop_purchase_order",
        "gl_account": "sn_fin_gl_account",
        "cost_center": "cmn_cost_center",
        "payment_term": "sn_shop_payment_term",
        "supplier_import": "sn_fcms_intg_imp_supplier",
        "invoice_import": "sn_spend_intg_imp_invoice",
        "invoice_line_import": "sn_spend_intg_imp_invoice_line",
        "invoice_tax_line_import": "sn_spend_intg_imp_invoice_tax_line",
        "payment_detail_import": "sn_spend_intg_imp_invoice_payment_detail",
        # No documented S2P staging table takes journal entries: a site-defined import
        # set table (and its target) that the instance must provide; rename freely.
        "journal_import": "u_ap_journal_import",
        "journal_entry": "u_ap_journal_entry",
    }

    @model_validator(mode="after")
    def _complete(self) -> ServiceNowSystem:
        if not self.instance and not self.base_url:
            raise _Problem("missing required key: give instance (e.g. \"acme\" for "
                           "https://acme.service-now.com) or base_url", "instance")
        if self.auth == "client_credentials" and not self.client_id:
            raise _Problem("missing required key (auth = \"client_credentials\" needs the "
                           "OAuth client id)", "client_id")
        if self.auth == "basic" and not self.username:
            raise _Problem("missing required key (auth = \"basic\" needs the user name)",
                           "username")
        return self

    def resolved_base_url(self) -> str:
        if self.base_url:
            return self.base_url
        assert self.instance
        if "://" in self.instance:
            return self.instance
        if "." in self.instance:
            return f"https://{self.instance}"
        return f"https://{self.instance}.service-now.com"

    def token_url(self) -> str:
        return f"{self.resolved_base_url()}/oauth_token.do"


class BillSystem(_System):
    type: Literal["bill"]
    organization_id: Id
    username: Text
    environment: Literal["sandbox", "production"] = "production"

    HOSTS: ClassVar[dict[str, str]] = {
        "sandbox": "https://gateway.stage.bill.com/connect",
        "production": "https://gateway.prod.bill.com/connect",
    }

    def resolved_base_url(self) -> str:
        return self.base_url or self.HOSTS[self.environment]


def _api_version(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{float(value):.1f}"
    if isinstance(value, str):
        m = re.fullmatch(r"v?(\d+)\.(\d+)", value.strip())
        if not m:
            raise ValueError("must be an API version such as \"v66.0\"")
        return f"v{m.group(1)}.{m.group(2)}"
    return value


class SalesforceSystem(_System):
    type: Literal["salesforce"]
    my_domain: HostOrUrl | None = None    # "acme" -> https://acme.my.salesforce.com
    client_id: Text
    # api/salesforce.md: pin v66.0 (Spring '26, GA everywhere) and keep it configurable
    api_version: Annotated[str, BeforeValidator(_api_version)] = "v66.0"

    @model_validator(mode="after")
    def _complete(self) -> SalesforceSystem:
        if not self.my_domain and not self.base_url:
            raise _Problem("missing required key: give my_domain (e.g. \"acme\" for "
                           "https://acme.my.salesforce.com) or base_url", "my_domain")
        return self

    def resolved_base_url(self) -> str:
        if self.base_url:
            return self.base_url
        assert self.my_domain
        if "://" in self.my_domain:
            return self.my_domain
        if "." in self.my_domain:
            return f"https://{self.my_domain}"
        return f"https://{self.my_domain}.my.salesforce.com"

    def token_url(self) -> str:
        # client credentials work only on the My Domain host
        return f"{self.resolved_base_url()}/services/oauth2/token"


SYSTEM_TYPES: dict[str, type[_System]] = {
    "freshbooks": FreshBooksSystem,
    "quickbooks": QuickBooksSystem,
    "servicetitan": ServiceTitanSystem,
    "servicenow": ServiceNowSystem,
    "bill": BillSystem,
    "salesforce": SalesforceSystem,
}

SystemConfig = Annotated[
    FreshBooksSystem | QuickBooksSystem | ServiceTitanSystem | ServiceNowSystem | BillSystem
    | SalesforceSystem,
    Field(discriminator="type"),
]


# -- pairs -----------------------------------------------------------------------------------

class PairConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Text
    target: Text
    flows: list[Text] | None = Field(None, min_length=1)   # default: all, in order
    lookups: dict[str, dict[str, LookupValue]] = {}
    fallbacks: dict[str, LookupValue] = {}
    map: dict[str, dict[str, str | dict[str, Any]]] = {}
    options: dict[str, str | int | bool | float] = {}


# -- the whole file --------------------------------------------------------------------------

class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: Settings = Settings()
    systems: dict[str, SystemConfig] = {}
    pairs: dict[str, PairConfig] = {}
    path: Path | None = None               # where it was loaded from; set by load_config


def find_config_path(explicit: str | os.PathLike | None = None,
                     env: Mapping[str, str] = os.environ) -> Path:
    """`--config`, else $MLCONNECTOR_CONFIG, else ./connectors.toml (if it exists), else
    the user config dir's connectors.toml. The file itself is not checked here."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    local = Path.cwd() / CONFIG_FILE
    if local.is_file():
        return local
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / CONFIG_FILE


def data_dir(config: Config | None, env: Mapping[str, str] = os.environ) -> Path:
    """$MLCONNECTOR_DATA_DIR, else settings.data_dir, else the user data dir."""
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR]).expanduser()
    if config is not None and config.settings.data_dir is not None:
        return config.settings.data_dir
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a connectors.toml; any problem raises ConfigError (exit 2)."""
    path = Path(path)
    file = str(path)
    raw = _read_toml(path, file)
    return _Loader(file, path).load(raw)


def _read_toml(path: Path, file: str) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found; copy connectors.toml.example there, or point "
                          f"--config or ${ENV_CONFIG} at your config", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a TOML file", file=file) from None
    except PermissionError:
        raise ConfigError("cannot be read: permission denied", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", file=file) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_problem(str(exc)), file=file) from None


def _toml_problem(message: str) -> str:
    """"Invalid value (at line 3, column 9)" -> "TOML syntax error at line 3, column 9:
    invalid value". tomllib's messages name positions, never the text at them."""
    m = re.match(r"^(.*?)\s*\(at (line \d+, column \d+|end of document)\)\s*$", message)
    if not m:
        return f"TOML syntax error: {message}"
    what = m.group(1)
    what = what[:1].lower() + what[1:]
    return f"TOML syntax error at {m.group(2)}: {what}"


class _Loader:
    def __init__(self, file: str, path: Path):
        self.file, self.path = file, path

    def fail(self, problem: str, *keys: str | int) -> ConfigError:
        return ConfigError(problem, file=self.file, key=_dotted(keys) or None)

    def load(self, raw: dict[str, Any]) -> Config:
        for key in raw:
            if key not in ("settings", "systems", "pairs"):
                raise self.fail(_unknown("key", key, ("settings", "systems", "pairs")), key)

        settings = self._settings(raw.get("settings", {}))
        systems = self._systems(raw.get("systems", {}))
        pairs = self._pairs(raw.get("pairs", {}), systems)
        return Config(settings=settings, systems=systems, pairs=pairs, path=self.path)

    def _table(self, value: Any, *keys: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"must be a table ([{_dotted(keys)}])", *keys)
        return value

    def _validate(self, model: type[BaseModel], data: dict[str, Any], *keys: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            sub, problem = _explain(exc, data, model)
            raise self.fail(problem, *keys, *sub) from None

    def _settings(self, raw: Any) -> Settings:
        settings = self._validate(Settings, self._table(raw, "settings"), "settings")
        if settings.data_dir is not None and not settings.data_dir.is_absolute():
            settings = settings.model_copy(update={"data_dir": self.path.parent.absolute()
                                                   / settings.data_dir})
        return settings

    def _systems(self, raw: Any) -> dict[str, Any]:
        raw = self._table(raw, "systems")
        systems: dict[str, Any] = {}
        prefixes: dict[str, str] = {}
        for name, body in raw.items():
            if not _SYSTEM_NAME.match(name):
                raise self.fail("a system name may use only letters, digits, '-' and '_' (it "
                                "becomes part of environment variable names such as "
                                "MLCONNECTOR_AP_PASSWORD)", "systems", name)
            prefix = env_var_name(name, "")
            if prefix in prefixes:
                raise self.fail(f"systems {prefixes[prefix]!r} and {name!r} would share the "
                                f"environment variables {prefix}*; rename one", "systems", name)
            prefixes[prefix] = name
            body = self._table(body, "systems", name)
            self._refuse_secrets(name, body)
            if "name" in body:
                raise self.fail(f"the name comes from the section header [systems.{name}]; "
                                "remove this key", "systems", name, "name")
            kind = body.get("type")
            if kind is None:
                raise self.fail(f"missing required key (one of {', '.join(SYSTEM_TYPES)})",
                                "systems", name, "type")
            if kind not in SYSTEM_TYPES:
                shown = f"{kind!r} " if isinstance(kind, str) else ""
                hint = _suggest(kind, SYSTEM_TYPES) if isinstance(kind, str) else ""
                raise self.fail(f"unknown system type {shown}{hint}; known types: "
                                f"{', '.join(SYSTEM_TYPES)}", "systems", name, "type")
            model = SYSTEM_TYPES[kind]
            system = self._validate(model, body, "systems", name)
            systems[name] = system.model_copy(update={"name": name})
        return systems

    def _refuse_secrets(self, name: str, body: dict[str, Any]) -> None:
        kind = body.get("type")
        own = SECRET_FIELDS.get(kind, ()) if isinstance(kind, str) else ()
        for key in body:
            if key not in _ALL_SECRETS:
                continue
            if key in own:
                problem = (f"{key!r} is a secret and is never read from this file; remove it, "
                           f"then set it in the environment as {env_var_name(name, key)} or "
                           f"store it in the keyring with `mlconnector auth set {name} {key}`")
            else:
                needed = ", ".join(own) or "see the docs"
                problem = (f"{key!r} looks like a secret, and secrets never go in this file; "
                           f"remove it (this system's secrets are {needed}, set as "
                           f"{env_var_name(name, 'FIELD')} or with "
                           f"`mlconnector auth set {name} FIELD`)")
            raise self.fail(problem, "systems", name, key)

    def _pairs(self, raw: Any, systems: dict[str, Any]) -> dict[str, PairConfig]:
        raw = self._table(raw, "pairs")
        pairs: dict[str, PairConfig] = {}
        for name, body in raw.items():
            if not _PAIR_NAME.match(name):
                raise self.fail("a pair name may use only letters, digits, '.', '-' and '_'",
                                "pairs", name)
            body = self._table(body, "pairs", name)
            pair = self._validate(PairConfig, body, "pairs", name)
            for side in ("source", "target"):
                ref = getattr(pair, side)
                if ref not in systems:
                    hint = _suggest(ref, systems)
                    raise self.fail(f"names no [systems.{ref}]" + (f" {hint}" if hint else "")
                                    + f"; configured systems: {', '.join(systems) or 'none'}",
                                    "pairs", name, side)
            if pair.source == pair.target:
                raise self.fail("source and target are the same system; a pair moves records "
                                "between two systems", "pairs", name, "target")
            pairs[name] = pair
        return pairs


# -- turning pydantic's errors into a key and a sentence -------------------------------------

_TYPE_NAMES = {
    "string_type": "text (in quotes)",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "a list",
    "path_type": "a path (in quotes)",
}


def _explain(exc: ValidationError, data: Any, model: type[BaseModel]) -> tuple[list, str]:
    """The TOML key path (below the section validated) and a plain-English problem, from
    the first error; an unknown key goes first, as it is usually why a required key seems
    missing (a typo). Values are never quoted back."""
    errors = exc.errors(include_url=False, include_input=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    keys = _key_path(first["loc"], data)
    ctx = first.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _Problem):
        keys = keys + list(cause.key)
    kind = first["type"]

    if kind in _TYPE_NAMES:
        # A union reports one error per member at the same key: name them all.
        same = [e["type"] for e in errors if _key_path(e["loc"], data) == keys]
        names = list(dict.fromkeys(_TYPE_NAMES.get(t, "") for t in same if t in _TYPE_NAMES))
        return keys, f"must be {' or '.join(names)}"
    if kind == "missing":
        return keys, "missing required key"
    if kind == "extra_forbidden":
        key = str(keys[-1]) if keys else "?"
        known = [f for f in model.model_fields if f != "name"] if len(keys) == 1 else []
        return keys, _unknown("key", key, known)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return keys, f"must be one of {', '.join(choices)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        limit = next(iter(ctx.values()), "?")
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        return keys, f"must be {words} {limit}"
    if kind in ("string_too_short", "too_short"):
        return keys, "must not be empty"
    if kind in ("value_error", "assertion_error") and cause is not None:
        return keys, str(cause)
    if kind == "union_tag_invalid":
        return keys + ["type"], f"must be one of {', '.join(SYSTEM_TYPES)}"
    return keys, str(first.get("msg", "is not valid"))


def _key_path(loc: tuple, data: Any) -> list:
    """Walk pydantic's location through the raw TOML data, keeping the parts that are keys
    in it (dropping union-member and discriminator tags), and a final missing/unknown key."""
    keys: list = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            keys.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            keys.append(part)
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            keys.append(part)     # a missing key
    return keys


def _dotted(keys: tuple | list) -> str:
    out = ""
    for k in keys:
        if isinstance(k, int):
            out += f"[{k}]"
        else:
            k = str(k)
            out += ("." if out else "") + (k if _BARE_KEY.match(k) else json.dumps(k))
    return out


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"(did you mean {close[0]!r}?)" if close else ""


def _unknown(what: str, word: str, choices: Any) -> str:
    hint = _suggest(word, choices)
    if hint:
        return f"unknown {what} {word!r} {hint}"
    known = ", ".join(choices)
    return f"unknown {what} {word!r}" + (f"; known: {known}" if known else "")
