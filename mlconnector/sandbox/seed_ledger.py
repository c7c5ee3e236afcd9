"""The demo's bookkeeping firm for QuickBooks -> ServiceNow, seeded deterministically.

QuickBooks: vendors, expense accounts, two classes, bills of one to three lines, a bill
payment that pays two bills at once and a journal entry accruing freight to A/P.
ServiceNow: a GL account per mapped QuickBooks account, a cost centre per class, and one
supplier already onboarded by hand (to be matched, not duplicated). The "Travel" account is
left out of the GL lookup, so its bills are held until the demo adds it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

from .quickbooks import QuickBooksSandbox
from .servicenow import ServiceNowSandbox

ACCOUNTS = {"Office Supplies": "600100", "Software": "600200", "Contractors": "600300",
            "Freight": "620000"}
UNMAPPED = {"Travel": "610000"}
VENDORS = ["Acme Paper Supply", "Northwind Components", "Blue Ridge Software",
           "Harbor Freight Lines", "Cedar Consulting", "Summit Office Co"]


@dataclass
class LedgerSeed:
    vendors: int
    bills: int
    gl_lookup: dict[str, str] = field(default_factory=dict)
    cost_centers: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)


def seed_ledger(qbo: QuickBooksSandbox, sn: ServiceNowSandbox, *, bills: int = 30,
                seed: int = 7) -> LedgerSeed:
    rng = random.Random(seed)
    out = LedgerSeed(vendors=len(VENDORS), bills=bills)
    accounts = {}
    for name, number in {**ACCOUNTS, **UNMAPPED}.items():
        accounts[name] = qbo.add_account(name, acct_num=number)["Id"]
        sn.add_gl_account(number, name)
    out.gl_lookup = dict(ACCOUNTS)
    out.unmapped = dict(UNMAPPED)
    ap = qbo.add_account("Accounts Payable (A/P)", account_type="Accounts Payable")
    sn.add_gl_account("200000", "Accounts Payable")
    out.gl_lookup["Accounts Payable (A/P)"] = "200000"
    classes = {}
    for name, code in (("Operations", "CC-OPS"), ("Sales", "CC-SALES")):
        classes[name] = qbo.add_class(name)["Id"]
        sn.add_cost_center(name, code)
        out.cost_centers[name] = code
    vendor_ids = []
    for name in VENDORS:
        tax_id = f"{rng.randint(10, 99)}-{rng.randint(1000000, 9999999)}"
        email = f"ap@{name.split()[0].lower()}.example"
        vendor_ids.append(qbo.add_vendor(name, CompanyName=f"{name} LLC", TaxIdentifier=tax_id,
                                         PrimaryEmailAddr={"Address": email})["Id"])
    sn.add_supplier("Northwind Components")  # onboarded by hand before the sync
    made = []
    for i in range(bills):
        account = "Travel" if i % 10 == 9 else rng.choice(list(ACCOUNTS))
        lines = [{"amount": str(Decimal(rng.randint(2000, 90000)) / 100),
                  "account_id": accounts[account], "description": f"{account.lower()} item {n}",
                  "class_id": classes[rng.choice(list(classes))]}
                 for n in range(rng.randint(1, 3))]
        made.append(qbo.add_bill(rng.choice(vendor_ids), lines, doc_number=f"V-{1000 + i}",
                                 txn_date=f"2026-03-{1 + i % 28:02d}"))
    payable = [b for b in made if b["VendorRef"]["value"] == made[0]["VendorRef"]["value"]][:2]
    qbo.add_bill_payment(payable[0]["VendorRef"]["value"],
                         [(b["Id"], str(b["TotalAmt"])) for b in payable])
    qbo.add_journal_entry([
        {"amount": "310.00", "posting_type": "Debit", "account_id": accounts["Freight"],
         "description": "Accrue March freight"},
        {"amount": "310.00", "posting_type": "Credit", "account_id": ap["Id"],
         "vendor_id": vendor_ids[3], "description": "Accrue March freight"}],
        doc_number="JE-0042")
    return out
