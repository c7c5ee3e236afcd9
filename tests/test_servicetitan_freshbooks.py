"""ServiceTitan -> FreshBooks end to end: customers matched by email, pricebook items by SKU
then name (held or created per `missing_items`), invoices and their payments, vendors and
purchase orders as bills; export feeds read from their continuation tokens."""

from __future__ import annotations

import pytest

from tests.conftest import PairHarness

PAIR = "servicetitan-freshbooks"


class Field(PairHarness):
    PAIR, SOURCE, TARGET = PAIR, "field", "books"

    def __init__(self, st, fb, tmp_path, monkeypatch):
        super().__init__(tmp_path)
        self.st, self.fb = st, fb
        monkeypatch.setenv("MLCONNECTOR_FIELD_CLIENT_SECRET", st.client_secret)
        monkeypatch.setenv("MLCONNECTOR_FIELD_APP_KEY", st.app_key)
        monkeypatch.setenv("MLCONNECTOR_BOOKS_CLIENT_SECRET", fb.client_secret)
        monkeypatch.setenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN", fb.issue_refresh_token())
        self.categories = self.lookups.setdefault("expense_categories", {})

    def systems(self) -> dict:
        return {"field": {"type": "servicetitan", "client_id": self.st.client_id,
                          "tenant_id": self.st.tenant_id, "base_url": self.st.base_url,
                          "auth_url": self.st.auth_url},
                "books": {"type": "freshbooks", "client_id": self.fb.client_id,
                          "base_url": self.fb.base_url, "auth_url": self.fb.base_url}}

    def replay_all(self):
        return self.replay()


@pytest.fixture
def field(tmp_path, monkeypatch):
    from mlconnector.sandbox import FreshBooksSandbox, ServiceTitanSandbox

    with ServiceTitanSandbox(per_second=None) as st, FreshBooksSandbox() as fb:
        yield Field(st, fb, tmp_path, monkeypatch)


def test_customers_items_invoices_and_payments_arrive_once(field):
    existing = field.fb.add_client("office@harbor.example", organization="Harbor Cafe")
    field.fb.add_item("Copper pipe 1in", sku="MAT-1", unit_cost="10.00")
    customer = field.st.add_customer("Harbor Cafe", email="office@harbor.example")
    pipe = field.st.add_material("MAT-1", "Copper pipe 1in", price="12.50")
    visit = field.st.add_service("SVC-1", "Service call", price="89.00")
    invoice = field.st.add_invoice(customer["id"], [
        {"sku_id": pipe["id"], "code": "MAT-1", "description": "pipe", "quantity": "4",
         "unit_price": "12.50", "type": "Material"},
        {"sku_id": visit["id"], "code": "SVC-1", "description": "call-out", "quantity": "1",
         "unit_price": "89.00", "type": "Service"}], number="ST-1001")
    field.st.add_payment([(invoice["id"], "139.00")], type_name="Check")

    held = field.sync()

    # the service call is not in FreshBooks and missing_items = "hold": the item, the
    # invoice that uses it and the payment on that invoice wait
    assert held.exit_code == 4, held.aborted
    assert held.flows["customers"].matched == 1
    assert (held.flows["items"].matched, held.flows["items"].held) == (1, 1)
    assert held.flows["invoices"].held == 1 and held.flows["payments"].held == 1
    assert [c["id"] for c in field.fb.clients.values()] == [existing["id"]]
    assert field.fb.invoices == {}

    field.options["missing_items"] = "create"
    replayed = field.replay_all()
    assert all(r.exit_code == 0 for r in replayed), [r.aborted for r in replayed]
    healed = field.sync()  # records held only on a reference heal on their own
    assert healed.exit_code == 0, healed.aborted
    (fb_invoice,) = field.fb.invoices.values()
    assert fb_invoice["invoice_number"] == "ST-1001"
    assert fb_invoice["customerid"] == existing["id"]
    (payment,) = field.fb.payments.values()
    assert payment["invoiceid"] == fb_invoice["id"]
    assert str(payment["amount"]["amount"]) == "139.00"
    assert "ServiceTitan payment" in payment["note"]

    again = field.sync()
    assert again.exit_code == 0
    assert sum(s.created + s.updated for s in again.flows.values()) == 0
    assert len(field.fb.invoices) == 1 and len(field.fb.payments) == 1


def test_vendors_and_sent_purchase_orders_become_bills(field):
    field.options["missing_items"] = "create"
    category = field.fb.add_category("Materials")["categoryid"]
    field.categories["material"] = str(category)
    vendor = field.st.add_vendor("Ferguson Supply", email="orders@ferguson.example")
    pipe = field.st.add_material("MAT-9", "Fitting", price="3.00", cost="1.50")
    field.st.add_purchase_order(vendor["id"], [
        {"sku_id": pipe["id"], "code": "MAT-9", "description": "fittings", "quantity": "10",
         "cost": "1.50"}], number="PO-77", status="Sent")
    field.st.add_purchase_order(vendor["id"], [
        {"sku_id": pipe["id"], "code": "MAT-9", "description": "draft", "quantity": "1",
         "cost": "1.50"}], number="PO-78", status="Pending")

    result = field.sync()

    assert result.exit_code == 0, result.aborted
    (bill_vendor,) = field.fb.vendors.values()
    assert bill_vendor["vendor_name"] == "Ferguson Supply"
    (bill,) = field.fb.bills.values()
    assert (bill["bill_number"], str(bill["amount"]["amount"])) == ("PO-77", "15.00")
    assert result.flows["purchase_orders"].skipped == 1  # still pending: not a bill yet


def test_a_voided_invoice_is_deleted_in_freshbooks_when_deletes_is_void(field):
    field.options.update(deletes="void", missing_items="create")
    customer = field.st.add_customer("Cedar Dental", email="ap@cedar.example")
    visit = field.st.add_service("SVC-2", "Inspection", price="120.00")
    invoice = field.st.add_invoice(customer["id"], [
        {"sku_id": visit["id"], "code": "SVC-2", "description": "inspection",
         "quantity": "1", "unit_price": "120.00", "type": "Service"}], number="ST-2")
    assert field.sync().exit_code == 0

    field.st.deactivate("invoices", invoice["id"])
    result = field.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["invoices"].voided == 1
    (fb_invoice,) = field.fb.invoices.values()
    assert fb_invoice["vis_state"] == 1
