"""connectors.toml: loading, and the error a person sees for each kind of mistake."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest
from pydantic import ValidationError

from mlconnector.config import (
    SECRET_FIELDS,
    BillSystem,
    Config,
    FreshBooksSystem,
    QuickBooksSystem,
    SalesforceSystem,
    ServiceNowSystem,
    ServiceTitanSystem,
    Settings,
    data_dir,
    env_var_name,
    find_config_path,
    is_loopback,
    load_config,
)
from mlconnector.errors import ConfigError
from mlconnector.pairs import BUILT_IN

EXAMPLE = Path(__file__).resolve().parent.parent / "connectors.toml.example"

GOOD = """
[systems.books]
type = "freshbooks"
client_id = "cid"

[systems.ap]
type = "bill"
environment = "sandbox"
organization_id = "00801ORG"
username = "ap@example.com"

[pairs.freshbooks-bill]
source = "books"
target = "ap"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connectors.toml"
    path.write_text(text)
    return path


def fails(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == 2
    assert err.file == str(path)
    assert err.problem
    # no pydantic text (which quotes input values) chained behind it
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return err


# -- what loads --------------------------------------------------------------------------------

def test_the_example_loads_and_names_every_type():
    cfg = load_config(EXAMPLE)
    assert cfg.path == EXAMPLE
    assert {s.type for s in cfg.systems.values()} == set(SECRET_FIELDS)
    # only the built pairs are live; the planned ones are commented out in the example
    assert {(cfg.systems[p.source].type, cfg.systems[p.target].type)
            for p in cfg.pairs.values()} == set(BUILT_IN)
    for name, system in cfg.systems.items():
        assert system.name == name
        assert system.resolved_base_url().startswith("https://")
    fb_bill = cfg.pairs["freshbooks-bill"]
    assert fb_bill.flows == ["vendors", "bills", "payments"]
    assert fb_bill.fallbacks == {"gl_account": "0ca01SUSPENSEACCOUNT"}
    assert fb_bill.options == {"deletes": "ignore"}
    assert all(v.startswith("0ca") for v in fb_bill.lookups["gl_accounts"].values())
    snow = cfg.systems["snow"]
    assert snow.table("invoice") == "sn_apo_invoice"
    assert snow.table("invoice_line") == "sn_shop_invoice_line"
    assert snow.column("invoice_import", "u_supplier") == "u_vendor_code"
    assert snow.column("invoice_import", "u_currency") == "u_currency"


def test_the_example_names_each_secret_by_its_environment_variable():
    text = EXAMPLE.read_text()
    cfg = load_config(EXAMPLE)
    for name, system in cfg.systems.items():
        for field in SECRET_FIELDS[system.type]:
            assert system.env_var(field) in text, (name, field)


def test_the_example_resolves_with_the_built_in_freshbooks_bill_pair():
    from mlconnector.pairs import resolve

    cfg = load_config(EXAMPLE)
    _, flows, options = resolve("freshbooks-bill", cfg.pairs["freshbooks-bill"],
                                "freshbooks", "bill")
    assert [f.name for f in flows] == ["vendors", "bills", "payments"]
    assert options["deletes"] == "ignore"


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    books, ap = cfg.systems["books"], cfg.systems["ap"]
    assert isinstance(books, FreshBooksSystem) and isinstance(ap, BillSystem)
    assert books.redirect_uri == "https://localhost:8765/callback"
    assert books.timeout == 30 and books.max_in_flight is None
    assert books.tables == {} and books.columns == {}
    assert ap.resolved_base_url() == "https://gateway.stage.bill.com/connect"
    assert cfg.pairs["freshbooks-bill"].flows is None
    assert cfg.settings.data_dir is None


def test_ids_written_as_numbers_are_the_same_ids(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('"00801ORG"', "801") + """
[pairs.freshbooks-bill.lookups.gl_accounts]
"Software" = 6100
"""))
    assert cfg.systems["ap"].organization_id == "801"
    assert cfg.pairs["freshbooks-bill"].lookups["gl_accounts"]["Software"] == "6100"


def test_base_urls_per_type_and_environment():
    assert FreshBooksSystem(type="freshbooks", client_id="c").resolved_base_url() == \
        "https://api.freshbooks.com"
    assert BillSystem(type="bill", organization_id="o", username="u").resolved_base_url() == \
        "https://gateway.prod.bill.com/connect"
    qb = QuickBooksSystem(type="quickbooks", client_id="c", environment="sandbox")
    assert qb.resolved_base_url() == "https://sandbox-quickbooks.api.intuit.com"
    assert qb.minor_version == 75
    assert qb.token_url() == "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
    assert QuickBooksSystem(type="quickbooks", client_id="c").resolved_base_url() == \
        "https://quickbooks.api.intuit.com"
    st = ServiceTitanSystem(type="servicetitan", client_id="c", tenant_id=4123456,
                            environment="integration")
    assert st.tenant_id == "4123456"
    assert st.resolved_base_url() == "https://api-integration.servicetitan.io"
    assert st.token_url() == "https://auth-integration.servicetitan.io/connect/token"
    sn = ServiceNowSystem(type="servicenow", instance="acme", client_id="c")
    assert sn.resolved_base_url() == "https://acme.service-now.com"
    assert sn.token_url() == "https://acme.service-now.com/oauth_token.do"
    assert ServiceNowSystem(type="servicenow", instance="acme.servicenowservices.com",
                            client_id="c").resolved_base_url() == \
        "https://acme.servicenowservices.com"
    sf = SalesforceSystem(type="salesforce", my_domain="acme", client_id="c")
    assert sf.resolved_base_url() == "https://acme.my.salesforce.com"
    assert sf.token_url() == "https://acme.my.salesforce.com/services/oauth2/token"
    assert SalesforceSystem(type="salesforce", client_id="c",
                            my_domain="acme--uat.sandbox.my.salesforce.com"
                            ).resolved_base_url() == "https://acme--uat.sandbox.my.salesforce.com"
    assert SalesforceSystem(type="salesforce", client_id="c",
                            my_domain="https://acme.my.salesforce.com/").resolved_base_url() \
        == "https://acme.my.salesforce.com"
    assert SalesforceSystem(type="salesforce", client_id="c", my_domain="a",
                            api_version="62.0").api_version == "v62.0"


def test_base_url_wins_over_environment(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace(
        'environment = "sandbox"', 'environment = "sandbox"\nbase_url = "http://127.0.0.1:9000/"')))
    assert cfg.systems["ap"].resolved_base_url() == "http://127.0.0.1:9000"
    qb = QuickBooksSystem(type="quickbooks", client_id="c", environment="sandbox",
                          base_url="https://qbo.test.example")
    assert qb.resolved_base_url() == "https://qbo.test.example"
    sn = ServiceNowSystem(type="servicenow", instance="acme", client_id="c",
                          base_url="http://localhost:8080")
    assert sn.resolved_base_url() == "http://localhost:8080"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.9.9.9", "http://[::1]:80",
                                 "http://localhost:1234/connect", "https://example.com"])
def test_http_allowed_on_loopback(tmp_path, url):
    cfg = load_config(write(tmp_path, GOOD.replace('client_id = "cid"',
                                                   f'client_id = "cid"\nbase_url = "{url}"')))
    assert cfg.systems["books"].resolved_base_url() == url.rstrip("/")


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("example.com") and not is_loopback("10.0.0.1")
    assert not is_loopback("localhost.example.com")


def test_relative_data_dir_is_taken_from_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, '[settings]\ndata_dir = "state"\n' + GOOD))
    assert cfg.settings.data_dir == tmp_path.absolute() / "state"
    cfg = load_config(write(tmp_path, '[settings]\ndata_dir = "~/mlc"\n' + GOOD))
    assert cfg.settings.data_dir == Path.home() / "mlc"


# -- what is refused, and how it is said ---------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.exit_code == 2
    assert info.value.file == str(tmp_path / "nope.toml")
    assert "not found" in info.value.problem


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, GOOD)
    path.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_config(path)


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    err = fails(tmp_path, '[systems.ap]\ntype = "bill"\npassword = hunter2\n')
    assert "line 3, column 12" in err.problem
    assert "TOML syntax error" in err.problem
    assert "hunter2" not in str(err)


def test_a_secret_in_the_file_is_refused_without_echoing_it(tmp_path):
    err = fails(tmp_path, GOOD.replace('username = "ap@example.com"',
                                       'username = "ap@example.com"\npassword = "s3cr3t-Pa55"'))
    assert err.key == "systems.ap.password"
    assert "MLCONNECTOR_AP_PASSWORD" in err.problem
    assert "mlconnector auth set ap password" in err.problem
    assert "s3cr3t-Pa55" not in str(err) and "s3cr3t-Pa55" not in repr(err.args)


@pytest.mark.parametrize("system,field", [(t, f) for t, fs in SECRET_FIELDS.items() for f in fs])
def test_every_secret_field_is_refused(tmp_path, system, field):
    err = fails(tmp_path, f'[systems.x-y]\ntype = "{system}"\n{field} = "TOPSECRET"\n')
    assert err.key == f"systems.x-y.{field}"
    assert env_var_name("x-y", field) in err.problem
    assert env_var_name("x-y", field).startswith("MLCONNECTOR_X_Y_")
    assert "TOPSECRET" not in str(err)


def test_a_secret_of_another_type_or_a_cached_token_is_refused_too(tmp_path):
    err = fails(tmp_path, GOOD.replace('client_id = "cid"',
                                       'client_id = "cid"\naccess_token = "TOKEN123"'))
    assert err.key == "systems.books.access_token"
    assert "secret" in err.problem and "TOKEN123" not in str(err)
    err = fails(tmp_path, GOOD.replace('client_id = "cid"',
                                       'client_id = "cid"\ndev_key = "DK"'))
    assert err.key == "systems.books.dev_key" and "DK\"" not in str(err)


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path):
    err = fails(tmp_path, GOOD.replace(
        'client_id = "cid"', 'client_id = "cid"\nbase_url = "https://me:pa55word@api.example"'))
    assert err.key == "systems.books.base_url"
    assert "pa55word" not in str(err)


def test_unknown_key_suggests_the_right_one(tmp_path):
    err = fails(tmp_path, GOOD.replace("organization_id", "organisation_id"))
    assert err.key == "systems.ap.organisation_id"
    assert err.problem == "unknown key 'organisation_id' (did you mean 'organization_id'?)"


def test_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path):
    err = fails(tmp_path, GOOD.replace('client_id = "cid"', 'client_id = "cid"\nzzz = 1'))
    assert err.key == "systems.books.zzz"
    assert "unknown key 'zzz'" in err.problem and "redirect_uri" in err.problem
    assert "'name'" not in err.problem


def test_typos_in_sections_and_pairs(tmp_path):
    err = fails(tmp_path, GOOD.replace("[systems.books]", "[system.books]"))
    assert err.key == "system" and "did you mean 'systems'" in err.problem
    err = fails(tmp_path, GOOD + "[pairs.freshbooks-bill.fallback]\ngl_account = \"x\"\n")
    assert err.key == "pairs.freshbooks-bill.fallback"
    assert "did you mean 'fallbacks'" in err.problem
    err = fails(tmp_path, "[settings]\ndatadir = \"/x\"\n")
    assert err.key == "settings.datadir" and "did you mean 'data_dir'" in err.problem


def test_missing_required_key(tmp_path):
    err = fails(tmp_path, GOOD.replace('username = "ap@example.com"', ""))
    assert err.key == "systems.ap.username"
    assert err.problem == "missing required key"
    err = fails(tmp_path, GOOD.replace('target = "ap"', ""))
    assert err.key == "pairs.freshbooks-bill.target"


def test_wrong_choice(tmp_path):
    err = fails(tmp_path, GOOD.replace('environment = "sandbox"', 'environment = "prod"'))
    assert err.key == "systems.ap.environment"
    assert err.problem == "must be one of sandbox, production"
    assert "prod'" not in err.problem


def test_wrong_value_types(tmp_path):
    err = fails(tmp_path, GOOD.replace('client_id = "cid"', 'client_id = "cid"\ntimeout = "x"'))
    assert err.key == "systems.books.timeout" and err.problem == "must be a number"
    err = fails(tmp_path, GOOD.replace('client_id = "cid"',
                                       'client_id = "cid"\nmax_in_flight = 0'))
    assert err.key == "systems.books.max_in_flight" and err.problem == "must be at least 1"
    err = fails(tmp_path, GOOD + '[pairs.freshbooks-bill.options]\ndeletes = ["a"]\n')
    assert err.key == "pairs.freshbooks-bill.options.deletes"
    assert err.problem.startswith("must be text (in quotes) or a whole number")
    err = fails(tmp_path, GOOD + '[pairs.freshbooks-bill.lookups.gl_accounts]\n'
                                 '"Office supplies" = true\n')
    assert err.key == 'pairs.freshbooks-bill.lookups.gl_accounts."Office supplies"'
    err = fails(tmp_path, GOOD + 'flows = []\n')
    assert err.key == "pairs.freshbooks-bill.flows" and err.problem == "must not be empty"
    err = fails(tmp_path, GOOD.replace('client_id = "cid"', 'client_id = ""'))
    assert err.key == "systems.books.client_id" and err.problem == "must not be empty"
    err = fails(tmp_path, "[systems]\nbooks = 3\n")
    assert err.key == "systems.books" and "must be a table" in err.problem


def test_unknown_system_type_lists_the_known_ones(tmp_path):
    err = fails(tmp_path, GOOD.replace('type = "freshbooks"', 'type = "freshbook"'))
    assert err.key == "systems.books.type"
    assert "unknown system type 'freshbook'" in err.problem
    assert "did you mean 'freshbooks'" in err.problem
    for kind in SECRET_FIELDS:
        assert kind in err.problem
    err = fails(tmp_path, '[systems.x]\nclient_id = "c"\n')
    assert err.key == "systems.x.type" and err.problem.startswith("missing required key")


def test_pair_must_name_configured_systems(tmp_path):
    err = fails(tmp_path, GOOD.replace('source = "books"', 'source = "book"'))
    assert err.key == "pairs.freshbooks-bill.source"
    assert "names no [systems.book]" in err.problem and "did you mean 'books'" in err.problem
    assert "configured systems: books, ap" in err.problem
    err = fails(tmp_path, GOOD.replace('target = "ap"', 'target = "books"'))
    assert err.key == "pairs.freshbooks-bill.target"
    assert "same system" in err.problem


@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.5:8080",
                                 "http://localhost.example.com"])
def test_plain_http_refused_off_loopback(tmp_path, url):
    err = fails(tmp_path, GOOD.replace('client_id = "cid"',
                                       f'client_id = "cid"\nbase_url = "{url}"'))
    assert err.key == "systems.books.base_url"
    assert err.problem.startswith("plain http is only allowed on loopback (the sandbox and tests)")


@pytest.mark.parametrize("url,problem", [("api.freshbooks.com", "must be a URL"),
                                         ("ftp://example.com", "must be a URL"),
                                         ("https://example.com:99999", "not a valid URL"),
                                         ("https://example.com/?x=1", "query string")])
def test_urls_must_parse(tmp_path, url, problem):
    err = fails(tmp_path, GOOD.replace('client_id = "cid"',
                                       f'client_id = "cid"\nauth_url = "{url}"'))
    assert err.key == "systems.books.auth_url" and problem in err.problem


def test_servicenow_needs_an_instance_and_the_key_for_its_auth(tmp_path):
    err = fails(tmp_path, '[systems.snow]\ntype = "servicenow"\nclient_id = "c"\n')
    assert err.key == "systems.snow.instance" and "base_url" in err.problem
    err = fails(tmp_path, '[systems.snow]\ntype = "servicenow"\ninstance = "acme"\n')
    assert err.key == "systems.snow.client_id"
    err = fails(tmp_path, '[systems.snow]\ntype = "servicenow"\ninstance = "acme"\n'
                          'auth = "basic"\n')
    assert err.key == "systems.snow.username"
    err = fails(tmp_path, '[systems.snow]\ntype = "servicenow"\ninstance = "acme"\n'
                          'auth = "oauth"\nclient_id = "c"\n')
    assert err.problem == "must be one of client_credentials, basic"


def test_servicenow_table_renames_are_checked(tmp_path):
    base = '[systems.snow]\ntype = "servicenow"\ninstance = "acme"\nclient_id = "c"\n'
    err = fails(tmp_path, base + '[systems.snow.tables]\ninvoices = "sn_apo_invoice"\n')
    assert err.key == "systems.snow.tables.invoices"
    assert "did you mean 'invoice'" in err.problem
    err = fails(tmp_path, base + '[systems.snow.columns.invoice_lines]\nu_uom = "u_unit"\n')
    assert err.key == "systems.snow.columns.invoice_lines"


def test_other_type_specific_checks(tmp_path):
    err = fails(tmp_path, '[systems.st]\ntype = "servicetitan"\nclient_id = "c"\n'
                          'tenant_id = "acme"\n')
    assert err.key == "systems.st.tenant_id" and "numeric" in err.problem
    err = fails(tmp_path, '[systems.q]\ntype = "quickbooks"\nclient_id = "c"\n'
                          'minor_version = 65\n')
    assert err.key == "systems.q.minor_version" and err.problem == "must be at least 75"
    err = fails(tmp_path, '[systems.sf]\ntype = "salesforce"\nclient_id = "c"\n')
    assert err.key == "systems.sf.my_domain"
    err = fails(tmp_path, '[systems.sf]\ntype = "salesforce"\nclient_id = "c"\n'
                          'my_domain = "acme"\napi_version = "latest"\n')
    assert err.key == "systems.sf.api_version"


def test_system_names_must_make_distinct_environment_variables(tmp_path):
    err = fails(tmp_path, GOOD + '[systems.my-ap]\ntype = "bill"\norganization_id = "o"\n'
                                 'username = "u"\n[systems.my_ap]\ntype = "bill"\n'
                                 'organization_id = "o"\nusername = "u"\n')
    assert err.key == "systems.my_ap" and "MLCONNECTOR_MY_AP_" in err.problem
    err = fails(tmp_path, '[systems."a b"]\ntype = "bill"\n')
    assert err.key == 'systems."a b"'
    err = fails(tmp_path, GOOD.replace('client_id = "cid"', 'client_id = "cid"\nname = "x"'))
    assert err.key == "systems.books.name"


def test_programmatic_config_still_validates():
    with pytest.raises(ValidationError):
        Settings(data_dir="/x", nope=1)
    cfg = Config(systems={"books": {"type": "freshbooks", "client_id": "c"}})
    assert isinstance(cfg.systems["books"], FreshBooksSystem)


# -- where the config and the data live -----------------------------------------------------------

def test_find_config_path_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"MLCONNECTOR_CONFIG": str(tmp_path / "from-env.toml")}
    assert find_config_path("explicit.toml", env=env) == Path("explicit.toml")
    assert find_config_path("~/c.toml", env=env) == Path.home() / "c.toml"
    assert find_config_path(None, env=env) == tmp_path / "from-env.toml"
    user = Path(platformdirs.user_config_dir("mlconnector", appauthor=False)) / "connectors.toml"
    assert find_config_path(None, env={}) == user          # no ./connectors.toml yet
    (tmp_path / "connectors.toml").write_text(GOOD)
    assert find_config_path(None, env={}) == tmp_path / "connectors.toml"
    assert find_config_path(None, env=env) == tmp_path / "from-env.toml"
    assert find_config_path(None, env={"MLCONNECTOR_CONFIG": ""}) == tmp_path / "connectors.toml"


def test_data_dir_precedence(tmp_path):
    cfg = load_config(write(tmp_path, f'[settings]\ndata_dir = "{tmp_path / "s"}"\n' + GOOD))
    env = {"MLCONNECTOR_DATA_DIR": str(tmp_path / "e")}
    assert data_dir(cfg, env=env) == tmp_path / "e"
    assert data_dir(cfg, env={}) == tmp_path / "s"
    user = Path(platformdirs.user_data_dir("mlconnector", appauthor=False))
    assert data_dir(None, env={}) == user
    assert data_dir(load_config(write(tmp_path, GOOD)), env={}) == user
    assert data_dir(None, env={"MLCONNECTOR_DATA_DIR": "~/d"}) == Path.home() / "d"
