"""The mapping evaluator, by example."""

from decimal import Decimal

import pytest

from mlconnector.errors import ConfigError, HeldError
from mlconnector.mapping import Context, FieldMap, with_overrides
from mlconnector.pairs import pair_definition

BILL = {
    "id": 1141, "vendorid": 5321, "bill_number": None, "issue_date": "2024-03-01",
    "due_date": "2024-03-31", "overall_description": "Toner",
    "lines": [
        {"description": "Toner", "amount": {"amount": "300.00", "code": "USD"},
         "category": {"categoryid": 65773, "category": "Office Expenses & Postage"}},
        {"description": "Flights", "amount": {"amount": "150.10", "code": "USD"},
         "category": {"categoryid": 999, "category": "Travel"}},
    ],
}


def ctx(lookups=None, fallbacks=None, refs=None):
    refs = {("vendors", "5321"): "00901VENDOR"} if refs is None else refs
    return Context(lookups=lookups or {}, fallbacks=fallbacks or {},
                   resolve_ref=lambda flow, value, reverse: refs.get((flow, value)),
                   lookup_labels={"gl_accounts": "GL account"})


def bills_map(overrides=None):
    fields = pair_definition("freshbooks", "bill").flow("bills").fields
    return FieldMap(with_overrides(fields, overrides or {}, "map.bills"))


def test_bill_maps_lines_onto_gl_accounts_with_exact_money():
    gl = {"gl_accounts": {"Office Expenses & Postage": "0ca01OFFICE", "999": "0ca01TRAVEL"}}
    result = bills_map().apply(BILL, ctx(gl))
    p = result.payload
    assert p["vendorId"] == "00901VENDOR"
    assert p["invoice"] == {"invoiceNumber": "FB-1141", "invoiceDate": "2024-03-01"}
    lines = p["billLineItems"]
    assert lines[0]["amount"] == Decimal("300.00") and isinstance(lines[0]["amount"], Decimal)
    assert lines[1]["classifications"]["chartOfAccountId"] == "0ca01TRAVEL"
    rules = {(d["field"], d["rule"]) for d in result.decisions}
    assert ("vendorId", "id_map") in rules
    assert ("billLineItems[1].classifications.chartOfAccountId", "lookup") in rules
    hit = next(d for d in result.decisions if d.get("result") == "0ca01TRAVEL")
    assert hit["key"] == "category.categoryid"  # the audit says which key matched


def test_unmapped_category_holds_the_bill_and_says_what_is_missing():
    with pytest.raises(HeldError) as exc:
        bills_map().apply(BILL, ctx({"gl_accounts": {"Office Expenses & Postage": "0ca1"}}))
    assert "GL account not mapped for 'Travel'" in exc.value.reason
    assert exc.value.missing["missing"][0]["lookup"] == "gl_accounts"


def test_fallback_gl_account_is_used_and_recorded():
    result = bills_map().apply(BILL, ctx({"gl_accounts": {}}, {"gl_account": "0ca01SUSP"}))
    assert {li["classifications"]["chartOfAccountId"] for li in
            result.payload["billLineItems"]} == {"0ca01SUSP"}
    assert any(d["rule"] == "fallback" for d in result.decisions)


def test_vendor_not_synced_yet_holds_with_a_reference_reason():
    with pytest.raises(HeldError) as exc:
        bills_map().apply(BILL, ctx({"gl_accounts": {"Travel": "a", "Office Expenses & "
                                                     "Postage": "b"}}, refs={}))
    assert exc.value.missing["missing"][0]["ref"] == "vendors"


def test_user_override_replaces_a_field_and_a_line_field():
    m = bills_map({"description": "bill_number", "billLineItems[].description": {
        "const": "see FreshBooks"}})
    bill = dict(BILL, bill_number="INV-1")
    p = m.apply(bill, ctx({"gl_accounts": {"Travel": "a", "Office Expenses & Postage": "b"}}))
    assert p.payload["description"] == "INV-1"
    assert p.payload["billLineItems"][0]["description"] == "see FreshBooks"


def test_malformed_override_is_a_config_error():
    with pytest.raises(ConfigError):
        bills_map({"description": {"form": "notes"}})
    with pytest.raises(ConfigError):
        bills_map({"nope[].x": "y"})


def test_money_never_passes_through_float():
    m = FieldMap({"amount": {"from": "x", "type": "money"}})
    with pytest.raises(HeldError):
        m.apply({"x": 1.1}, ctx())
    assert m.apply({"x": "0.1"}, ctx()).payload["amount"] == Decimal("0.10")
