"""`mlconnector demo`: the whole job on the offline sandbox, narrated.

Starts the FreshBooks, BILL, QuickBooks and ServiceNow emulators on 127.0.0.1, seeds a
small business in each source, syncs every pair twice (the second run writes nothing),
shows the held bills, adds the missing GL lookups, replays them, and prints where the
audit trail is. No account, keyring or network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomli_w


def _say(text: str) -> None:
    sys.stdout.write(f"\n== {text}\n")
    sys.stdout.flush()


def demo_config(fb_url: str, bill_url: str, data_dir: Path, gl_lookup: dict[str, str],
                organization_id: str, username: str, client_id: str) -> dict:
    return {
        "settings": {"data_dir": str(data_dir)},
        "systems": {
            "books": {"type": "freshbooks", "client_id": client_id, "base_url": fb_url,
                      "redirect_uri": "https://localhost:8765/callback"},
            "ap": {"type": "bill", "environment": "sandbox", "base_url": bill_url,
                   "organization_id": organization_id, "username": username},
        },
        "pairs": {"freshbooks-bill": {"source": "books", "target": "ap",
                                      "lookups": {"gl_accounts": gl_lookup}}},
    }


def add_ledger(doc: dict, qbo: Any, sn: Any, seed: Any) -> None:
    """The QuickBooks -> ServiceNow pair in the same config."""
    doc["systems"]["qbo"] = {"type": "quickbooks", "client_id": qbo.client_id,
                             "environment": "sandbox", "base_url": qbo.base_url,
                             "auth_url": qbo.auth_url, "realm_id": qbo.realm_id}
    doc["systems"]["sn"] = {"type": "servicenow", "base_url": sn.base_url,
                            "client_id": sn.client_id}
    doc["pairs"]["quickbooks-servicenow"] = {
        "source": "qbo", "target": "sn",
        "lookups": {"gl_accounts": dict(seed.gl_lookup),
                    "cost_centers": dict(seed.cost_centers)}}


def add_books_to_ap(doc: dict, sn: Any) -> dict[str, str]:
    """FreshBooks -> ServiceNow too: the same FreshBooks business, its categories on
    ServiceNow GL accounts by number (Travel left out, as for BILL). Returns the
    categories the demo maps later."""
    from .sandbox.seed import CATEGORIES, UNMAPPED

    for name, (number, _lines, _cost) in {**CATEGORIES, **UNMAPPED}.items():
        sn.add_gl_account(number, name)
    doc["pairs"]["freshbooks-servicenow"] = {
        "source": "books", "target": "sn",
        "lookups": {"gl_accounts": {name: spec[0] for name, spec in CATEGORIES.items()}}}
    return {name: spec[0] for name, spec in UNMAPPED.items()}


def add_field_and_crm(doc: dict, st: Any, sf: Any, fb: Any) -> None:
    """ServiceTitan -> FreshBooks (the same FreshBooks) and FreshBooks -> Salesforce."""
    doc["systems"]["field"] = {"type": "servicetitan", "client_id": st.client_id,
                               "tenant_id": st.tenant_id, "environment": "integration",
                               "base_url": st.base_url, "auth_url": st.auth_url}
    doc["systems"]["crm"] = {"type": "salesforce", "client_id": sf.client_id,
                             "base_url": sf.base_url}
    category = {c["category"]: str(c["categoryid"]) for c in fb.categories.values()}
    doc["pairs"]["servicetitan-freshbooks"] = {
        "source": "field", "target": "books",
        "lookups": {"expense_categories": {
            "material": category["Office Expenses & Postage"],
            "equipment": category["Equipment"]}},
        "options": {"missing_items": "create"}}
    doc["pairs"]["freshbooks-salesforce"] = {"source": "books", "target": "crm"}


# ServiceTitan first: its customers, invoices and purchase orders become FreshBooks clients,
# invoices and bills, which the FreshBooks pairs then carry on to BILL, ServiceNow and
# Salesforce in the same run.
PAIRS = ["servicetitan-freshbooks", "freshbooks-bill", "freshbooks-servicenow",
         "freshbooks-salesforce", "quickbooks-servicenow"]


def run_demo(*, keep: str | None = None, latency: float = 0.0) -> int:
    import keyring

    from . import render
    from .config import load_config
    from .runner import replay, run_pairs, worst_exit
    from .sandbox import (
        BillSandbox,
        FreshBooksSandbox,
        Knobs,
        QuickBooksSandbox,
        SalesforceSandbox,
        ServiceNowSandbox,
        ServiceTitanSandbox,
    )
    from .sandbox.keyring_backend import SandboxKeyring
    from .sandbox.seed import seed_demo
    from .sandbox.seed_field import seed_field
    from .sandbox.seed_ledger import seed_ledger
    from .state import State

    work = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="mlconnector-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    # Sandbox credentials live in a plain in-memory keyring for this process only.
    keyring.set_keyring(SandboxKeyring())
    knobs = Knobs(latency=latency)
    with FreshBooksSandbox(knobs) as fb, BillSandbox(knobs) as bill, \
            QuickBooksSandbox(knobs) as qbo, ServiceNowSandbox(knobs) as sn, \
            ServiceTitanSandbox(knobs) as st, SalesforceSandbox(knobs) as sf:
        seed = seed_demo(fb, bill)
        ledger = seed_ledger(qbo, sn)
        field = seed_field(st)
        _say("Sandbox up on 127.0.0.1: FreshBooks, BILL, QuickBooks Online, ServiceNow, "
             "ServiceTitan, Salesforce")
        print(f"   FreshBooks: {seed.vendors} bill vendors and {seed.bills} bills; BILL already "
              "knows a few of them (to be matched, not duplicated)")
        print(f"   QuickBooks: {ledger.vendors} vendors, {ledger.bills} bills, a payment of two "
              "bills, an A/P journal entry; ServiceNow already has one of the suppliers")
        print(f"   ServiceTitan: {field.customers} customers, {field.invoices} invoices with "
              f"payments, {field.purchase_orders} purchase orders, into FreshBooks and on to "
              "Salesforce")
        os.environ.update({
            "MLCONNECTOR_BOOKS_CLIENT_SECRET": fb.client_secret,
            "MLCONNECTOR_BOOKS_REFRESH_TOKEN": fb.issue_refresh_token(),
            "MLCONNECTOR_AP_DEV_KEY": bill.dev_key,
            "MLCONNECTOR_AP_PASSWORD": bill.password,
            "MLCONNECTOR_QBO_CLIENT_SECRET": qbo.client_secret,
            "MLCONNECTOR_QBO_REFRESH_TOKEN": qbo.issue_refresh_token(),
            "MLCONNECTOR_SN_CLIENT_SECRET": sn.client_secret,
            "MLCONNECTOR_FIELD_CLIENT_SECRET": st.client_secret,
            "MLCONNECTOR_FIELD_APP_KEY": st.app_key,
            "MLCONNECTOR_CRM_CLIENT_SECRET": sf.client_secret,
        })
        path = work / "connectors.toml"
        doc = demo_config(fb.base_url, bill.base_url, work / "data", dict(seed.gl_lookup),
                          bill.organization_id, bill.username, fb.client_id)
        add_ledger(doc, qbo, sn, ledger)
        books_unmapped = add_books_to_ap(doc, sn)
        add_field_and_crm(doc, st, sf, fb)
        path.write_text(tomli_w.dumps(doc))
        print(f"   config: {path}")

        _say("First sync of every pair: mlconnector sync --all")
        first = run_pairs(load_config(path), PAIRS)
        render.show_results(first)

        _say("Second sync: nothing changed, so nothing is written")
        second = run_pairs(load_config(path), PAIRS)
        render.show_results(second)

        state = State(work / "data" / "state.db")
        held = state.parked()
        state.close()
        _say(f"{len(held)} record(s) wait for a person (mlconnector failures):")
        render.show_failures(held)

        _say("Adding the missing GL lookups to the config, then: mlconnector replay "
             "--pair PAIR --all")
        doc["pairs"]["freshbooks-bill"]["lookups"]["gl_accounts"].update(seed.unmapped)
        doc["pairs"]["quickbooks-servicenow"]["lookups"]["gl_accounts"].update(
            ledger.unmapped)
        doc["pairs"]["freshbooks-servicenow"]["lookups"]["gl_accounts"].update(books_unmapped)
        path.write_text(tomli_w.dumps(doc))
        for pair, mapped in (("freshbooks-bill", seed.unmapped),
                             ("quickbooks-servicenow", ledger.unmapped),
                             ("freshbooks-servicenow", books_unmapped)):
            for name, account in mapped.items():
                print(f"   [pairs.{pair}.lookups.gl_accounts] {name!r} = {account!r}")
        replayed = [r for pair in PAIRS for r in replay(load_config(path), pair=pair)]
        render.show_results(replayed)

        _say("Third sync: what the replayed records unblocked, and nothing else")
        third = run_pairs(load_config(path), PAIRS)
        render.show_results(third)

        audit_path = getattr(third[-1], "audit_path", None)
        _say("Done")
        print(f"   BILL now has {len(bill.vendors)} vendors and {len(bill.bills)} bills; "
              f"FreshBooks has {len(fb.bill_payments)} bill payments written back")
        print(f"   ServiceNow now has {len(sn.rows('sn_fin_supplier'))} suppliers, "
              f"{len(sn.rows('sn_shop_invoice'))} AP invoices "
              f"({len(sn.rows('sn_shop_invoice_line'))} lines), "
              f"{len(sn.rows('sn_shop_invoice_payment_detail'))} payment details")
        print(f"   FreshBooks has {len(fb.clients)} clients and {len(fb.invoices)} invoices "
              f"from ServiceTitan; Salesforce has {len(sf.rows('Account'))} accounts and "
              f"{len(sf.rows('Opportunity'))} opportunities")
        print(f"   audit trail: {audit_path}  (try: jq . {audit_path} | less)")
        print(f"   state, config and audit are in {work}"
              + ("" if keep else " (a temporary directory)"))
        return worst_exit(third + replayed)
