"""The demo's small business, seeded into both emulators deterministically.

FreshBooks: bill vendors with fake names and addresses, eight expense categories and bills of
one to four lines. BILL: a chart of accounts with one account per category; three of the
FreshBooks vendors and four of their bills already keyed in by hand (same name and email,
same invoice number and lines), two of those bills already paid in BILL (one in full, one in
part), so that a first sync must match rather than duplicate, then write the payments back.
One category ("Travel") is deliberately left out of the GL lookup: its bills are held until
the demo adds it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .bill import BillSandbox
from .freshbooks import FreshBooksSandbox

# category -> (GL account number in BILL, line descriptions, unit cost range in dollars)
CATEGORIES: dict[str, tuple[str, list[str], tuple[int, int]]] = {
    "Software": ("6110", ["Annual license renewal", "SaaS subscription, monthly",
                          "Additional seats", "Cloud hosting"], (19, 900)),
    "Advertising": ("6010", ["Search ads, campaign spend", "Trade magazine half page",
                             "Social media promotion", "Printed flyers"], (75, 2400)),
    "Office Expenses & Postage": ("6210", ["Toner cartridges", "Copy paper, 10 reams",
                                           "Postage and courier", "Desk supplies"], (8, 260)),
    "Contractors": ("6310", ["Bookkeeping, monthly", "Web development hours",
                             "Graphic design", "IT support call-out"], (60, 1800)),
    "Rent": ("6410", ["Office rent", "Storage unit rent"], (450, 3800)),
    "Utilities": ("6510", ["Electricity", "Water and sewer", "Internet service",
                           "Phone lines"], (40, 620)),
    "Equipment": ("6610", ["Laptop", "Monitor 27in", "Label printer", "Office chair"],
                  (90, 2200)),
}
UNMAPPED = {"Travel": ("6710", ["Flights", "Hotel, two nights", "Car rental"], (85, 950))}

VENDORS = [  # (name, main category)
    ("Northwind Office Supply", "Office Expenses & Postage"),
    ("Contoso Cloud Services", "Software"),
    ("Fabrikam Print & Signs", "Advertising"),
    ("Tailspin Utilities Co-op", "Utilities"),
    ("Harbor View Properties", "Rent"),
    ("Blue Yonder Consulting", "Contractors"),
    ("Litware Software Inc.", "Software"),
    ("Adventure Works Equipment", "Equipment"),
    ("Proseware Marketing Group", "Advertising"),
    ("Wide World Freight", "Office Expenses & Postage"),
    ("Alpine Ski House Catering", "Office Expenses & Postage"),
    ("Coho Winery Events", "Advertising"),
    ("Lucerne Publishing", "Advertising"),
    ("Margie's Bookkeeping", "Contractors"),
    ("Fourth Coffee Roasters", "Office Expenses & Postage"),
    ("Trey Research Labs", "Contractors"),
    ("Woodgrove Power & Light", "Utilities"),
    ("Graphic Design Institute", "Contractors"),
    ("Relecloud Hosting", "Software"),
    ("Humongous Insurance Agency", "Contractors"),
    ("Southridge Video", "Advertising"),
    ("City Power & Light", "Utilities"),
    ("Consolidated Messenger", "Office Expenses & Postage"),
    ("VanArsdel Furniture", "Equipment"),
    ("Wingtip Toys Promotions", "Advertising"),
    ("Datum Networks", "Software"),
]
FIRST = ["Dana", "Priya", "Marcus", "Elena", "Tom", "Aiko", "Luis", "Grace", "Omar", "Hanna"]
LAST = ["Okafor", "Raman", "Chen", "Novak", "Walsh", "Tanaka", "Ortega", "Kim", "Haddad", "Berg"]
CITIES = [("Oakland", "California", "94607"), ("Portland", "Oregon", "97205"),
          ("Austin", "Texas", "78701"), ("Denver", "Colorado", "80202"),
          ("Columbus", "Ohio", "43215"), ("Raleigh", "North Carolina", "27601")]
STATES = {"California": "CA", "Oregon": "OR", "Texas": "TX", "Colorado": "CO", "Ohio": "OH",
          "North Carolina": "NC"}


@dataclass
class DemoSeed:
    gl_lookup: dict[str, str]  # FreshBooks category name -> BILL chart-of-account id (mapped)
    unmapped: dict[str, str]   # category name -> BILL account id the demo adds to the lookup later
    vendors: int
    bills: int


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())[:18]


def _vendor_fields(rng: random.Random, name: str, main: str, n: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, province, postal = rng.choice(CITIES)
    return {"primary_contact_email": f"ap@{_slug(name)}.example",
            "primary_contact_first_name": first, "primary_contact_last_name": last,
            "phone": f"555{rng.randrange(1000000, 9999999)}", "website": f"{_slug(name)}.example",
            "account_number": f"AC-{1000 + n}", "street": f"{rng.randrange(10, 999)} Market St",
            "city": city, "province": province, "postal_code": postal,
            "country": "United States", "is_1099": main == "Contractors"}


def _line(rng: random.Random, category: str, categoryid: int) -> dict[str, Any]:
    _, descriptions, (low, high) = (CATEGORIES | UNMAPPED)[category]
    quantity = rng.choice([1, 1, 1, 2, 3, 5]) if high < 1000 else 1
    cents = rng.randrange(low * 100, high * 100)
    return {"categoryid": categoryid, "description": rng.choice(descriptions),
            "quantity": quantity, "unit_cost": f"{Decimal(cents) / 100:.2f}"}


def seed_demo(fb: FreshBooksSandbox, bill: BillSandbox, *, vendors: int = 24, bills: int = 120,
              seed: int = 7) -> DemoSeed:
    rng = random.Random(seed)
    names = [VENDORS[i % len(VENDORS)] for i in range(vendors)]
    names = [(f"{n} {i // len(VENDORS) + 1}" if i >= len(VENDORS) else n, c)
             for i, (n, c) in enumerate(names)]

    # the chart of accounts in BILL, and the categories in FreshBooks
    cat_ids: dict[str, int] = {}
    accounts: dict[str, str] = {}
    for name, (number, _, _) in (CATEGORIES | UNMAPPED).items():
        cat_ids[name] = fb.add_category(name)["categoryid"]
        accounts[name] = bill.add_chart_of_account(name, number)["id"]

    fb_vendors = []
    for n, (name, main) in enumerate(names):
        fields = _vendor_fields(rng, name, main, n)
        fb_vendors.append((fb.add_vendor(name, **fields), main))

    # bills: mostly the vendor's main category, sometimes a second one; a few with Travel
    travel_bills = set(rng.sample(range(bills), min(4, bills)))
    start = date(2025, 10, 1)
    made: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for n in range(bills):
        vendor, main = fb_vendors[n % len(fb_vendors)] if n < len(fb_vendors) else \
            rng.choice(fb_vendors)
        count = rng.choice([1, 1, 2, 2, 3, 4]) - (n in travel_bills)
        lines = []
        for k in range(count):  # a Travel bill keeps one slot for its Travel line
            category = main if k == 0 or rng.random() < 0.6 else rng.choice(list(CATEGORIES))
            lines.append(_line(rng, category, cat_ids[category]))
        if n in travel_bills:
            lines.append(_line(rng, "Travel", cat_ids["Travel"]))
        issued = start + timedelta(days=rng.randrange(0, 105))
        number = rng.choice(["INV-{:05d}", "{:06d}", "B{:04d}"]).format(1000 + n * 7)
        made.append((fb.add_bill(vendor["vendorid"], lines, bill_number=number,
                                 issue_date=issued.isoformat(),
                                 due_offset_days=rng.choice([15, 30, 30, 45, 60])), vendor))

    # what the AP clerk had already keyed into BILL: 3 vendors, 4 of their bills, 2 paid
    by_vendor: dict[int, list[dict[str, Any]]] = {}
    for fb_bill, vendor in made:
        if all(li["category"]["category"] in CATEGORIES for li in fb_bill["lines"]):
            by_vendor.setdefault(vendor["vendorid"], []).append(fb_bill)
    chosen = sorted(by_vendor, key=lambda v: (-len(by_vendor[v]), v))[:3]
    picks = [b for v, k in zip(chosen, (2, 1, 1), strict=False) for b in by_vendor[v][:k]]
    known = {}
    for vid in chosen:
        v = fb.vendors[vid]
        known[vid] = bill.add_vendor(
            v["vendor_name"], email=v["primary_contact_email"], accountType="BUSINESS",
            phone=v["phone"], address={"line1": v["street"], "city": v["city"],
                                       "stateOrProvince": STATES.get(v["province"]),
                                       "zipOrPostalCode": v["postal_code"], "country": "US"},
            paymentInformation={"payeeName": v["vendor_name"]})["id"]
    existing = []
    for fb_bill in picks:
        existing.append(bill.add_bill(
            known[fb_bill["vendorid"]], fb_bill["bill_number"], fb_bill["issue_date"],
            fb_bill["due_date"], lines=[
                {"amount": li["amount"]["amount"], "description": li["description"],
                 "chartOfAccountId": accounts[li["category"]["category"]]}
                for li in fb_bill["lines"]]))
    if existing:
        bill.pay_bill(existing[0]["id"], existing[0]["amount"], process_date="2026-01-20")
    if len(existing) > 1:
        part = (existing[1]["amount"] * Decimal("0.4")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        bill.pay_bill(existing[1]["id"], part, process_date="2026-01-22",
                      disbursement_type="CHECK")

    return DemoSeed(gl_lookup={k: accounts[k] for k in CATEGORIES},
                    unmapped={k: accounts[k] for k in UNMAPPED},
                    vendors=len(fb_vendors), bills=len(made))
