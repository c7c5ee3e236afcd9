"""ServiceNow Accounts Payable as a target (api/servicenow.md).

Odd things handled here:
- Table and column names differ between instances: every name goes through the system's
  `[tables]` / `[columns]` renames (`table()`, `column()`), defaults as documented.
- AP invoices, their lines and payment details go through the Import Set staging tables
  by default; each row's transform result (inserted / updated / ignored / error) is read,
  and an error parks the record. `write_via = { invoices = "table" }` writes straight into
  the tables for instances without the Source-to-Pay integration framework.
- ServiceNow ignores unknown columns without a word: `check_schema` (run by
  `auth test`) asks the dictionary whether the configured tables and columns exist.
- Reference fields are written as sys_ids; GL accounts and cost centres given by number,
  code or name are resolved to theirs (an unknown one holds the record).
- Suppliers are a `core_company` (vendor = true) plus an `sn_fin_supplier` where the
  instance has Accounts Payable Operations; the supplier's sys_id is the target id.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from ..errors import (
    ApiError,
    AuthError,
    ConfigError,
    HeldError,
    NotFound,
    ReauthRequired,
    RejectedError,
)
from ..http import HttpClient, Response, server_message
from .base import Connector

ROLES = ("sn_ap_apm.admin (or sn_ap_apm.accounts_payable_specialist) for invoices and "
         "suppliers, import_set_loader and import_transformer (or sn_spend_intg_admin) for "
         "the staging tables, sn_fcms_intg.integration_user for supplier master data")
SYS_ID = re.compile(r"^[0-9a-f]{32}$")

# entity -> (staging table, target table) by logical name
STAGING = {"invoices": ("invoice_import", "invoice"),
           "invoice_lines": ("invoice_line_import", "invoice_line"),
           "payments": ("payment_detail_import", "payment_detail"),
           "journal_entries": ("journal_import", "journal_entry")}
# staging column -> target column, for writing with the Table API instead
TABLE_COLUMNS = {
    "invoice": {"u_external_invoice_number": "external_invoice_number",
                "u_external_invoice_source": "external_invoice_source",
                "u_supplier": "supplier", "u_supplier_invoice_number": "supplier_invoice_number",
                "u_invoice_date": "invoice_date", "u_due_date": "due_date",
                "u_currency": "currency", "u_subtotal": "subtotal",
                "u_short_description": "short_description", "u_invoice_type": "type",
                "u_sync_token": "u_sync_token", "u_erp_source": "erp_source"},
    "invoice_line": {"u_erp_line_number": "erp_line_number",
                     "u_line_description": "line_description",
                     "u_line_quantity": "invoiced_quantity",
                     "u_line_unit_price": "line_unit_price",
                     "u_line_amount_invoiced": "line_amount", "u_currency": "currency",
                     "u_gl_account": "ledger_account", "u_cost_center": "cost_center"},
    "payment_detail": {"u_payment_amount": "payment_amount", "u_payment_date": "payment_date",
                       "u_payment_method": "payment_method",
                       "u_payment_reference_id": "payment_reference_id",
                       "u_currency": "currency", "u_erp_invoice_number": "erp_invoice_number"},
}
# staging line column -> (logical table, columns a user's value may name), resolved to sys_id
REFERENCES = {"u_gl_account": ("gl_account", ("number", "name")),
              "u_cost_center": ("cost_center", ("code", "name"))}


def classify(resp: Response) -> ApiError | AuthError | ConfigError | None:
    if resp.status < 400:
        return None
    code, message = server_message(resp)
    kw = {"system": "servicenow", "status": resp.status, "code": code}
    if resp.status == 401:
        return ReauthRequired(message or "not authenticated", **kw)
    if resp.status == 403:
        return AuthError(f"ServiceNow refused the request: {message} (the service account "
                         "lacks a role or an ACL allows it no access)", system="servicenow",
                         fix=f"give the service account {ROLES}; then: "
                             "mlconnector auth test <system>")
    if resp.status == 429:
        return None  # http.py's default: Throttled, waiting as long as Retry-After says
    if resp.status == 404:
        return NotFound(message or "no record found", **kw)
    table = re.search(r"Invalid table (\S+)", message or "")
    if resp.status == 400 and table:
        return ConfigError(f"ServiceNow has no table {table.group(1)}: rename it under "
                           "[systems.<system>.tables], or leave the flow that writes it out "
                           "of the pair's `flows` (see `mlconnector auth test <system>`)")
    if resp.status >= 500:
        return None
    return RejectedError(message or f"HTTP {resp.status}", **kw)


def text(value: Any) -> str:
    """Every ServiceNow value is a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def quoted(value: Any) -> str:
    """A value inside an encoded query: `^` is its separator and is doubled."""
    return text(value).replace("^", "^^")


class ServiceNow(Connector):
    system_type = "servicenow"
    write_concurrency = 4   # no limit is documented; rate-limit rules answer 429
    # an invoice is a header and its lines, staged one call each
    update_on_match = frozenset({"invoices"})

    def __init__(self, http: HttpClient, *, system: Any):
        super().__init__(http)
        self.cfg = system
        self.via = dict(getattr(system, "write_via", {}) or {})
        self._apo: bool | None = None
        self._refs: dict[tuple[str, str], str] = {}
        self._refs_lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------
    def table(self, logical: str) -> str:
        return self.cfg.table(logical)

    def columns(self, logical: str, row: dict[str, Any]) -> dict[str, str]:
        """A row with this instance's column names and string values; `_hints` dropped."""
        return {self.cfg.column(logical, k): text(v) for k, v in row.items()
                if v is not None and not k.startswith("_")}

    def col(self, logical: str, column: str) -> str:
        return self.cfg.column(logical, column)

    # -- Table API ------------------------------------------------------------------------
    def list(self, logical: str, query: str, *, limit: int = 2,
             fields: Iterable[str] | None = None) -> list[dict[str, Any]]:
        params = {"sysparm_query": query, "sysparm_limit": limit,
                  "sysparm_exclude_reference_link": "true"}
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        body = self.http.get(f"/api/now/table/{self.table(logical)}", params=params).body
        return list((body or {}).get("result") or [])

    def read_row(self, logical: str, sys_id: str) -> dict[str, Any]:
        body = self.http.get(f"/api/now/table/{self.table(logical)}/{sys_id}",
                             params={"sysparm_exclude_reference_link": "true"}).body
        return (body or {}).get("result") or {}

    def insert(self, logical: str, row: dict[str, Any]) -> dict[str, Any]:
        body = self.http.post(f"/api/now/table/{self.table(logical)}",
                              params={"sysparm_exclude_reference_link": "true"},
                              json=self.columns(logical, row)).body
        return (body or {}).get("result") or {}

    def patch(self, logical: str, sys_id: str, row: dict[str, Any]) -> dict[str, Any]:
        body = self.http.patch(f"/api/now/table/{self.table(logical)}/{sys_id}",
                               params={"sysparm_exclude_reference_link": "true"},
                               json=self.columns(logical, row), idempotent=True).body
        return (body or {}).get("result") or {}

    def remove(self, logical: str, sys_id: str) -> None:
        # the Table API wants a Content-Type on a DELETE too (400 without one)
        self.http.delete(f"/api/now/table/{self.table(logical)}/{sys_id}", idempotent=True,
                         headers={"Content-Type": "application/json"})

    # -- Import Set API -------------------------------------------------------------------
    def stage(self, logical: str, row: dict[str, Any], what: str) -> str:
        """One staging row, transformed at once; the target sys_id, or the record is
        refused with the transform's own message. A staging row coalesces on its
        external number, so sending it twice updates rather than duplicates: safe to
        resend."""
        body = self.http.post(f"/api/now/import/{self.table(logical)}",
                              json=self.columns(logical, row), idempotent=True).body or {}
        results = body.get("result") or []
        first = results[0] if results else {}
        status = first.get("status")
        if status in ("inserted", "updated", "ignored") and first.get("sys_id"):
            return str(first["sys_id"])
        if status == "ignored":
            return ""  # nothing changed; the caller looks the record up
        why = first.get("error_message") or first.get("status_message") or status or "no result"
        raise RejectedError(f"the {self.table(logical)} transform did not take the {what}: "
                            f"{why} (import set {body.get('import_set', '?')})",
                            system="servicenow", code=status)

    # -- references -----------------------------------------------------------------------
    def has_apo(self) -> bool:
        """Accounts Payable Operations installed: sn_fin_supplier exists."""
        if self._apo is None:
            try:
                self.list("supplier", "", limit=1, fields=["sys_id"])
                self._apo = True
            except ConfigError:
                self._apo = False
        return self._apo

    def resolve(self, logical: str, value: str, keys: tuple[str, ...], label: str) -> str:
        if SYS_ID.match(value):
            return value
        with self._refs_lock:
            hit = self._refs.get((logical, value))
        if hit:
            return hit
        query = "^OR".join(f"{self.col(logical, k)}={quoted(value)}" for k in keys)
        rows = self.list(logical, query, fields=["sys_id"])
        if not rows:
            raise HeldError(f"{label} {value!r} is not in ServiceNow ({self.table(logical)})",
                            missing={"missing": [{"field": label, "reason":
                                                  f"{label} {value!r} not found"}]})
        with self._refs_lock:
            self._refs[(logical, value)] = rows[0]["sys_id"]
        return rows[0]["sys_id"]

    def _line_refs(self, line: dict[str, Any]) -> dict[str, Any]:
        out = dict(line)
        for column, (logical, keys) in REFERENCES.items():
            if out.get(column):
                out[column] = self.resolve(logical, text(out[column]), keys,
                                           logical.replace("_", " "))
        return out

    def reset_run_caches(self) -> None:
        with self._refs_lock:
            self._refs.clear()

    # -- the connector interface -----------------------------------------------------------
    def id_of(self, entity: str, obj: dict[str, Any]) -> str:
        return str(obj["sys_id"])

    def find(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if entity == "suppliers":
            return self._find_supplier(payload)
        if entity == "invoices":
            return self._find_invoice(payload)
        if entity == "payments":
            ref = payload.get("u_payment_reference_id")
            rows = self.list("payment_detail", f"{self.col('payment_detail', 'invoice')}="
                             f"{quoted(payload.get('_invoice', ''))}^"
                             f"{self.col('payment_detail', 'payment_reference_id')}="
                             f"{quoted(ref)}") if ref else []
            return rows[0] if rows else None
        if entity == "journal_entries":
            ext = payload["_external_id"]
            rows = self.list("journal_entry", f"{self.col('journal_entry', 'u_external_id')}="
                             f"{quoted(ext)}", limit=1, fields=["sys_id"])
            return {"sys_id": ext} if rows else None
        raise ConfigError(f"ServiceNow cannot write {entity}")

    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity == "suppliers":
            return self._write_supplier(None, payload)
        if entity == "invoices":
            return {"sys_id": self._write_invoice(None, payload)}
        if entity == "payments":
            return {"sys_id": self._write_payment(None, payload)}
        if entity == "journal_entries":
            return {"sys_id": self._write_journal(payload)}
        raise ConfigError(f"ServiceNow cannot write {entity}")

    def update(self, entity: str, obj_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity == "suppliers":
            return self._write_supplier(obj_id, payload)
        if entity == "invoices":
            return {"sys_id": self._write_invoice(obj_id, payload)}
        if entity == "payments":
            return {"sys_id": self._write_payment(obj_id, payload)}
        if entity == "journal_entries":
            return {"sys_id": self._write_journal(payload)}
        raise ConfigError(f"ServiceNow cannot write {entity}")

    def delete(self, entity: str, obj_id: str) -> None:
        """Void / deactivate: nothing is deleted from an AP ledger."""
        if entity == "suppliers":
            company = obj_id
            if self.has_apo():
                company = text(self.read_row("supplier", obj_id).get(
                    self.col("supplier", "related_company")) or "") or obj_id
            self.patch("company", company, {"vendor": False})
        elif entity == "invoices":
            self.patch("invoice", obj_id, {"state": "canceled"})
        elif entity == "payments":
            self.patch("payment_detail", obj_id, {"payment_amount": "0"})
        elif entity == "journal_entries":
            key = self.col("journal_entry", "u_external_id")
            for row in self.list("journal_entry", f"{key}={quoted(obj_id)}", limit=1000,
                                 fields=["sys_id"]):
                self.patch("journal_entry", row["sys_id"], {"u_amount": "0"})
        else:
            raise RejectedError(f"ServiceNow: {entity} cannot be voided by mlconnector",
                                system="servicenow")

    # -- suppliers ------------------------------------------------------------------------
    def _find_supplier(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        supplier = payload.get("supplier") or {}
        ext = supplier.get("u_external_id")
        if self.has_apo() and ext:
            rows = self.list("supplier", f"{self.col('supplier', 'u_external_id')}="
                             f"{quoted(ext)}")
            if rows:
                return rows[0]
        company = self._company_named(payload["company"]["name"])
        if company is None:
            return None
        if not self.has_apo():
            return company
        rows = self.list("supplier", f"{self.col('supplier', 'related_company')}="
                         f"{company['sys_id']}")
        return rows[0] if rows else None

    def _company_named(self, name: str) -> dict[str, Any] | None:
        rows = self.list("company", f"{self.col('company', 'vendor')}=true^"
                         f"{self.col('company', 'name')}={quoted(name)}")
        return rows[0] if rows else None

    def _payment_term(self, name: str) -> str | None:
        """A payment term given by name, as the sys_id its reference field wants; None
        when the instance has no such term (the supplier is written without one)."""
        try:
            return self.resolve("payment_term", name, ("name",), "payment term")
        except (HeldError, ConfigError, NotFound):
            return None

    def _write_supplier(self, sys_id: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        company_row = {**payload["company"], "vendor": True}
        supplier_row = dict(payload.get("supplier") or {})
        term = supplier_row.pop("payment_term", None)
        if term:
            resolved = self._payment_term(text(term))
            if resolved:
                supplier_row["payment_term"] = resolved
        apo = self.has_apo()
        if sys_id is None:
            # a company left by a run that died before its supplier: reuse it
            company = self._company_named(company_row["name"]) or self.insert(
                "company", company_row)
            if not apo:
                return company
            supplier_row.setdefault("name", company_row["name"])
            supplier_row[self.col("supplier", "related_company")] = company["sys_id"]
            return self.insert("supplier", supplier_row)
        if not apo:
            return self.patch("company", sys_id, company_row)
        current = self.read_row("supplier", sys_id)
        company_id = text(current.get(self.col("supplier", "related_company")) or "")
        if company_id:
            self.patch("company", company_id, company_row)
        supplier_row.setdefault("name", company_row["name"])
        return self.patch("supplier", sys_id, supplier_row)

    # -- invoices and their lines ---------------------------------------------------------
    def _find_invoice(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """By our external number, else by supplier + the supplier's invoice number. (Two
        plain queries: `^NQ` would make one, but not every instance or emulator reads it,
        and one that drops it silently would turn a match into a duplicate.)"""
        number = payload.get("u_external_invoice_number")
        supplier, theirs = payload.get("u_supplier"), payload.get("u_supplier_invoice_number")
        ext = self.col("invoice", "external_invoice_number")
        if number:
            rows = self.list("invoice", f"{ext}={quoted(number)}")
            if rows:
                return rows[0]
        if not (supplier and theirs):
            return None
        rows = self.list("invoice", f"{self.col('invoice', 'supplier')}={quoted(supplier)}^"
                         f"{self.col('invoice', 'supplier_invoice_number')}={quoted(theirs)}")
        if not rows:
            return None
        if rows[0].get(ext):
            raise HeldError(
                f"ServiceNow already has invoice {theirs} of this supplier, from another "
                f"source ({rows[0].get(ext)}): check it is not the same bill twice",
                missing={"missing": [{"field": "u_supplier_invoice_number",
                                      "reason": "duplicate supplier invoice number"}]})
        # entered by hand before the sync: claim it with our number, so that the staging
        # rows sent from now on coalesce onto it instead of creating a second invoice
        if number and not self.dry_run:
            claim = {"external_invoice_number": number}
            if payload.get("u_external_invoice_source"):
                claim["external_invoice_source"] = payload["u_external_invoice_source"]
            self.patch("invoice", rows[0]["sys_id"], claim)
        return rows[0]

    def _write_invoice(self, sys_id: str | None, payload: dict[str, Any]) -> str:
        header = {k: v for k, v in payload.items() if k != "lines"}
        lines = [self._line_refs(line) for line in payload.get("lines") or []]
        number = payload.get("u_external_invoice_number")
        if self.via.get("invoices", "import_set") == "import_set":
            known = sys_id
            sys_id = self.stage("invoice_import", header, f"invoice {number}") or known or (
                self._find_invoice(payload) or {}).get("sys_id", "")
            if not sys_id:
                raise RejectedError(f"ServiceNow ignored invoice {number} and has no invoice "
                                    "with that number", system="servicenow")
            if known:
                # lines have no documented coalesce key: replace them, so an update never
                # doubles them however the instance's transform is set up
                self._drop_lines(sys_id)
            for line in lines:
                self.stage("invoice_line_import",
                           {**line, "u_external_invoice_number": number},
                           f"line {line.get('u_erp_line_number')} of invoice {number}")
            return sys_id
        else:
            row = self._as_table("invoice", header)
            sys_id = sys_id or None
            sys_id = self.patch("invoice", sys_id, row)["sys_id"] if sys_id else \
                self.insert("invoice", row)["sys_id"]
            self._table_lines(sys_id, lines)
            return sys_id

    def _as_table(self, logical: str, row: dict[str, Any]) -> dict[str, Any]:
        names = TABLE_COLUMNS[logical]
        return {names[k]: v for k, v in row.items() if k in names}

    def _table_lines(self, invoice: str, lines: list[dict[str, Any]]) -> None:
        link, number = self.col("invoice_line", "invoice"), self.col(
            "invoice_line", "erp_line_number")
        existing = {text(r.get(number)): r["sys_id"] for r in self.list(
            "invoice_line", f"{link}={invoice}", limit=1000, fields=["sys_id", number])}
        for line in lines:
            row = {**self._as_table("invoice_line", line), "invoice": invoice}
            key = text(line.get("u_erp_line_number"))
            if key in existing:
                self.patch("invoice_line", existing.pop(key), row)
            else:
                self.insert("invoice_line", row)
        for stale in existing.values():
            self.remove("invoice_line", stale)

    def _drop_lines(self, invoice: str) -> None:
        link = self.col("invoice_line", "invoice")
        for row in self.list("invoice_line", f"{link}={invoice}", limit=1000,
                             fields=["sys_id"]):
            self.remove("invoice_line", row["sys_id"])

    # -- payments and journal entries ------------------------------------------------------
    def _write_payment(self, sys_id: str | None, payload: dict[str, Any]) -> str:
        ref = payload.get("u_payment_reference_id")
        if sys_id:  # a change (a void): the row itself, so a second one is never staged
            row = self._as_table("payment_detail", payload)
            return self.patch("payment_detail", sys_id, row).get("sys_id") or sys_id
        if self.via.get("payments", "import_set") == "import_set":
            done = self.stage("payment_detail_import", payload, f"payment {ref}")
            return done or sys_id or (self.find("payments", payload) or {}).get("sys_id", "")
        row = {**self._as_table("payment_detail", payload), "invoice": payload["_invoice"]}
        return self.insert("payment_detail", row)["sys_id"]

    def _write_journal(self, payload: dict[str, Any]) -> str:
        """One staging row per line, each carrying the entry's own fields."""
        ext = payload["_external_id"]
        header = {k: v for k, v in payload.items() if k != "lines"}
        for line in payload.get("lines") or []:
            self.stage("journal_import", {**header, **line, "u_external_id": ext},
                       f"line {line.get('u_line_number')} of journal entry {ext}")
        return ext

    # -- auth test ------------------------------------------------------------------------
    def schema_for(self, flows: Iterable[tuple[str, Any]]) -> dict[str, set[str]]:
        """The tables and columns that flows (write entity, FieldMap) write or query."""
        want: dict[str, set[str]] = {}

        def add(logical: str, *columns: str) -> None:
            want.setdefault(logical, set()).update(c for c in columns if not c.startswith("_"))

        for entity, mapping in flows:
            fields = mapping.fields
            top = [k for k, rule in fields.items() if "each" not in rule]
            lines = [k for rule in fields.values() if "each" in rule for k in rule["fields"]]
            if entity == "suppliers":
                add("company", "name", "vendor",
                    *(k.split(".", 1)[1] for k in top if k.startswith("company.")))
                if self.has_apo():
                    add("supplier", "name", "related_company",
                        *(k.split(".", 1)[1] for k in top if k.startswith("supplier.")))
            elif entity == "invoices":
                add("invoice", "external_invoice_number", "external_invoice_source", "supplier",
                    "supplier_invoice_number", "state")
                add("invoice_line", "invoice", "erp_line_number")
                if self.via.get("invoices", "import_set") == "import_set":
                    add("invoice_import", *top)
                    add("invoice_line_import", "u_external_invoice_number", *lines)
                else:
                    add("invoice", *(TABLE_COLUMNS["invoice"].get(k, k) for k in top))
                    add("invoice_line", *(TABLE_COLUMNS["invoice_line"].get(k, k)
                                          for k in lines))
                if any(k in REFERENCES for k in lines):
                    add("gl_account", "number", "name")
                    add("cost_center", "code", "name")
            elif entity == "payments":
                add("payment_detail", "invoice", "payment_reference_id", "payment_amount")
                if self.via.get("payments", "import_set") == "import_set":
                    add("payment_detail_import", *top)
                else:
                    add("payment_detail", *(TABLE_COLUMNS["payment_detail"].get(k, k)
                                            for k in top))
            elif entity == "journal_entries":
                add("journal_import", "u_external_id", *top, *lines)
                add("journal_entry", "u_external_id", "u_amount")
        return want

    def check_schema(self, wanted: dict[str, set[str]]) -> list[str]:
        """Problems with the configured tables and columns (logical table -> columns the
        pairs write); ServiceNow itself would ignore a wrong column without a word."""
        problems = []
        for logical, columns in wanted.items():
            name = self.table(logical)
            chain = self._table_chain(name)
            if not chain:
                problems.append(f"table {name} does not exist (or the account cannot read "
                                f"it); rename it under [systems.{self.cfg.name}.tables] "
                                f"{logical} = \"...\"")
                continue
            known = self._columns_of(chain)
            for column in sorted(columns):
                real = self.col(logical, column)
                if real not in known:
                    problems.append(f"table {name} has no column {real}; rename it under "
                                    f"[systems.{self.cfg.name}.columns.{logical}] "
                                    f"{column} = \"...\"")
        return problems

    def _table_chain(self, name: str) -> list[str]:
        chain: list[str] = []
        while name and name not in chain:
            rows = self._meta("sys_db_object", f"name={quoted(name)}",
                              ["sys_id", "name", "super_class"])
            if not rows:
                break
            chain.append(name)
            parent = rows[0].get("super_class") or ""
            if isinstance(parent, dict):
                parent = parent.get("value") or ""
            name = ""
            if parent:
                up = self._meta("sys_db_object", f"sys_id={parent}", ["name"])
                name = up[0].get("name", "") if up else ""
        return chain

    def _columns_of(self, chain: list[str]) -> set[str]:
        rows = self._meta("sys_dictionary", f"nameIN{','.join(chain)}", ["element"],
                          limit=5000)
        return {r.get("element") for r in rows if r.get("element")} | {"sys_id"}

    def _meta(self, table: str, query: str, fields: list[str],
              limit: int = 10) -> list[dict[str, Any]]:
        body = self.http.get(f"/api/now/table/{table}", params={
            "sysparm_query": query, "sysparm_fields": ",".join(fields),
            "sysparm_limit": limit, "sysparm_exclude_reference_link": "true"}).body
        return list((body or {}).get("result") or [])

