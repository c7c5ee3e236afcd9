"""FreshBooks -> Salesforce end to end: clients as Accounts, invoices as Opportunities,
payments closing them as won; upserts by external id, over loopback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlconnector.cli import app
from tests.conftest import PairHarness

PAIR = "freshbooks-salesforce"


class Crm(PairHarness):
    PAIR, SOURCE, TARGET = PAIR, "books", "crm"

    def __init__(self, fb, sf, tmp_path, monkeypatch):
        super().__init__(tmp_path)
        self.fb, self.sf = fb, sf
        self.path = self.config_path
        monkeypatch.setenv("MLCONNECTOR_BOOKS_CLIENT_SECRET", fb.client_secret)
        monkeypatch.setenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN", fb.issue_refresh_token())
        monkeypatch.setenv("MLCONNECTOR_CRM_CLIENT_SECRET", sf.client_secret)

    def systems(self) -> dict:
        return {"books": {"type": "freshbooks", "client_id": self.fb.client_id,
                          "base_url": self.fb.base_url, "auth_url": self.fb.base_url},
                "crm": {"type": "salesforce", "client_id": self.sf.client_id,
                        "base_url": self.sf.base_url}}


@pytest.fixture
def crm(tmp_path, monkeypatch):
    from mlconnector.sandbox import FreshBooksSandbox, SalesforceSandbox

    with FreshBooksSandbox() as fb, SalesforceSandbox() as sf:
        yield Crm(fb, sf, tmp_path, monkeypatch)


def opportunity(crm, invoice_id) -> dict:
    (row,) = [r for r in crm.sf.rows("Opportunity")
              if str(r.get("FreshBooks_Invoice_Id__c")) == str(invoice_id)]
    return row


def test_clients_and_invoices_become_accounts_and_opportunities(crm):
    client = crm.fb.add_client("ap@harbor.example", organization="Harbor Cafe")
    invoice = crm.fb.add_invoice(client["id"], [{"name": "Catering", "qty": "2",
                                                 "unit_cost": "150.00"}],
                                 invoice_number="INV-0042")

    first = crm.sync()

    assert first.exit_code == 0, first.aborted
    (account,) = crm.sf.rows("Account")
    assert (account["Name"], str(account["FreshBooks_Client_Id__c"])) == (
        "Harbor Cafe", str(client["id"]))
    opp = opportunity(crm, invoice["id"])
    assert opp["AccountId"] == account["Id"]
    assert (opp["Name"], opp["StageName"]) == ("FreshBooks invoice INV-0042", "Prospecting")
    assert str(opp["Amount"]) in ("300.00", "300", "300.0")

    second = crm.sync()
    assert second.exit_code == 0
    assert second.flows["clients"].created == second.flows["invoices"].created == 0
    assert len(crm.sf.rows("Account")) == 1 and len(crm.sf.rows("Opportunity")) == 1


def test_a_payment_in_full_closes_the_opportunity_as_won(crm):
    client = crm.fb.add_client("ap@cedar.example", organization="Cedar Dental")
    invoice = crm.fb.add_invoice(client["id"], [{"name": "Checkup", "qty": "1",
                                                 "unit_cost": "200.00"}])
    assert crm.sync().exit_code == 0

    crm.fb.add_payment(invoice["id"], "50.00")
    assert crm.sync().exit_code == 0
    assert opportunity(crm, invoice["id"])["StageName"] == "Prospecting"  # partly paid

    crm.fb.add_payment(invoice["id"], "150.00")
    result = crm.sync()
    assert result.exit_code == 0, result.aborted
    assert opportunity(crm, invoice["id"])["StageName"] == "Closed Won"


def test_an_account_already_in_salesforce_is_matched_by_external_id(crm):
    client = crm.fb.add_client("ap@summit.example", organization="Summit Office")
    existing = crm.sf.add_account("Summit Office Co", FreshBooks_Client_Id__c=str(client["id"]))

    result = crm.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["clients"].matched == 1
    (account,) = crm.sf.rows("Account")
    assert account["Id"] == existing["Id"]


def test_auth_test_names_a_missing_external_id_field(crm):
    crm.sf.remove_field("Opportunity", "FreshBooks_Invoice_Id__c")
    crm.config()
    out = CliRunner().invoke(app, ["--config", str(crm.path), "auth", "test", "crm"])
    assert out.exit_code == 2, out.output
    assert "Opportunity has no field FreshBooks_Invoice_Id__c" in out.output
