"""FreshBooks -> ServiceNow AP end to end: the FreshBooks and ServiceNow sandboxes on loopback,
a config as a user writes it, and `run_pairs` as `mlconnector sync` calls it."""

from __future__ import annotations

import pytest

from tests.conftest import PairHarness

PAIR = "freshbooks-servicenow"


class Books(PairHarness):
    PAIR, SOURCE, TARGET = PAIR, "books", "sn"

    def __init__(self, fb, sn, tmp_path, monkeypatch):
        super().__init__(tmp_path)
        self.fb, self.sn = fb, sn
        monkeypatch.setenv("MLCONNECTOR_BOOKS_CLIENT_SECRET", fb.client_secret)
        monkeypatch.setenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN", fb.issue_refresh_token())
        monkeypatch.setenv("MLCONNECTOR_SN_CLIENT_SECRET", sn.client_secret)
        self.gl = self.lookups.setdefault("gl_accounts", {})
        self.cost_centers = self.lookups.setdefault("cost_centers", {})

    def systems(self) -> dict:
        return {"books": {"type": "freshbooks", "client_id": self.fb.client_id,
                          "base_url": self.fb.base_url, "auth_url": self.fb.base_url},
                "sn": {"type": "servicenow", "base_url": self.sn.base_url,
                       "client_id": self.sn.client_id}}

    def category(self, name: str, number: str, mapped: bool = True) -> int:
        cat = self.fb.add_category(name)
        self.sn.add_gl_account(number, name)
        if mapped:
            self.gl[name] = number
        return cat["categoryid"]


@pytest.fixture
def books(tmp_path, monkeypatch):
    from mlconnector.sandbox import FreshBooksSandbox, ServiceNowSandbox

    with FreshBooksSandbox() as fb, ServiceNowSandbox() as sn:
        yield Books(fb, sn, tmp_path, monkeypatch)


def test_bills_land_as_ap_invoices_on_the_right_gl_and_cost_center(books):
    software = books.category("Software", "600200")
    books.sn.add_cost_center("IT", "CC-IT")
    books.cost_centers["Software"] = "CC-IT"
    vendor = books.fb.add_vendor("Blue Ridge Software", primary_contact_email="ap@br.example")
    bill = books.fb.add_bill(vendor["vendorid"], bill_number="BR-77", lines=[
        {"categoryid": software, "description": "licences", "quantity": 3,
         "unit_cost": "40.00"}])
    books.fb.add_bill_payment(bill["id"], "50.00")

    first = books.sync()

    assert first.exit_code == 0, first.aborted
    (supplier,) = books.sn.rows("sn_fin_supplier")
    assert supplier["u_external_id"] == f"FB-{vendor['vendorid']}"
    (invoice,) = books.sn.rows("sn_shop_invoice")
    assert (invoice["external_invoice_number"], invoice["supplier_invoice_number"],
            invoice["subtotal"], invoice["supplier"]) == (
        f"FB-{bill['id']}", "BR-77", "120.00", supplier["sys_id"])
    (line,) = books.sn.rows("sn_shop_invoice_line")
    (gl,) = books.sn.rows("sn_fin_gl_account")
    (cc,) = books.sn.rows("cmn_cost_center")
    assert (line["line_amount"], line["invoiced_quantity"], line["ledger_account"],
            line["cost_center"]) == ("120.00", "3", gl["sys_id"], cc["sys_id"])
    (detail,) = books.sn.rows("sn_shop_invoice_payment_detail")
    assert (detail["invoice"], detail["payment_amount"], detail["payment_method"]) == (
        invoice["sys_id"], "50.00", "cheque")

    writes = len(books.sn.staging_results)
    again = books.sync()
    assert again.exit_code == 0 and len(books.sn.staging_results) == writes


def test_unmapped_category_holds_the_bill_until_the_lookup_and_a_replay(books):
    travel = books.category("Travel", "640200", mapped=False)
    vendor = books.fb.add_vendor("Skyways")
    books.fb.add_bill(vendor["vendorid"], bill_number="SK-1", lines=[
        {"categoryid": travel, "description": "flight", "quantity": 1, "unit_cost": "300.00"}])

    held = books.sync()
    assert held.exit_code == 4
    (alarm,) = held.alarms
    assert "GL account not mapped for 'Travel'" in alarm.reason
    assert books.sn.rows("sn_shop_invoice") == []

    books.gl["Travel"] = "640200"
    (replayed,) = books.replay([alarm.parked_id])
    assert replayed.exit_code == 0 and replayed.flows["bills"].created == 1


def test_a_fallback_gl_account_posts_and_flags(books):
    misc = books.category("Misc", "699999", mapped=False)
    books.sn.add_gl_account("999000", "Suspense")
    books.fallbacks["gl_account"] = "999000"
    vendor = books.fb.add_vendor("Odd Jobs")
    books.fb.add_bill(vendor["vendorid"], lines=[
        {"categoryid": misc, "description": "x", "quantity": 1, "unit_cost": "9.00"}])

    result = books.sync()

    assert result.exit_code == 0, result.aborted
    (line,) = books.sn.rows("sn_shop_invoice_line")
    suspense = [g for g in books.sn.rows("sn_fin_gl_account") if g["number"] == "999000"][0]
    assert line["ledger_account"] == suspense["sys_id"]
