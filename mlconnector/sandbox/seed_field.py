"""The demo's field-service business on ServiceTitan (a plumbing company): customers with
email contacts, a small pricebook, invoices with their items, payments (one partial),
two suppliers and their purchase orders (sent). FreshBooks is where its books are kept;
Salesforce is where its sales team follows the invoices."""

from __future__ import annotations

from dataclasses import dataclass

from .servicetitan import ServiceTitanSandbox

CUSTOMERS = [("Harbor Cafe", "office@harbor.example"), ("Cedar Dental", "ap@cedar.example"),
             ("Summit Office Park", "facilities@summit.example"),
             ("Blue Door Bakery", "owner@bluedoor.example")]


@dataclass
class FieldSeed:
    customers: int
    invoices: int
    purchase_orders: int


def seed_field(st: ServiceTitanSandbox) -> FieldSeed:
    customers = [st.add_customer(name, email=email)["id"] for name, email in CUSTOMERS]
    pipe = st.add_material("MAT-100", "Copper pipe 1in (per ft)", price="4.25", cost="2.10")
    valve = st.add_material("MAT-200", "Ball valve 3/4in", price="18.00", cost="9.50")
    heater = st.add_equipment("EQP-50", "Water heater 50 gal", price="1150.00")
    call = st.add_service("SVC-10", "Service call", price="89.00")
    labor = st.add_service("SVC-20", "Labor (per hour)", price="115.00")
    items = {"pipe": (pipe, "Material"), "valve": (valve, "Material"),
             "heater": (heater, "Equipment"), "call": (call, "Service"),
             "labor": (labor, "Service")}
    jobs = [("call", "1", "pipe", "12"), ("call", "1", "valve", "2"), ("heater", "1", "labor", "3"),
            ("call", "1", "labor", "2"), ("pipe", "30", "labor", "4"), ("call", "1", "valve", "1")]
    invoices = []
    for i, (a, qa, b, qb) in enumerate(jobs):
        lines = []
        for key, qty in ((a, qa), (b, qb)):
            sku, kind = items[key]
            lines.append({"sku_id": sku["id"], "code": sku["code"], "description": sku["name"]
                          if "name" in sku else sku.get("displayName"), "quantity": qty,
                          "unit_price": str(sku["price"]), "type": kind})
        invoices.append(st.add_invoice(customers[i % len(customers)], lines,
                                       number=f"ST-{5001 + i}",
                                       invoice_date=f"2026-03-{2 + i:02d}"))
    st.add_payment([(invoices[0]["id"], invoices[0]["total"])], type_name="Check")
    st.add_payment([(invoices[1]["id"], invoices[1]["total"])], type_name="Credit Card")
    st.add_payment([(invoices[2]["id"], "500.00")], type_name="Check")  # part payment
    supply = st.add_vendor("Ferguson Supply", email="orders@ferguson.example")
    tanks = st.add_vendor("Rheem Distribution", email="sales@rheem-dist.example")
    st.add_purchase_order(supply["id"], [
        {"sku_id": pipe["id"], "code": "MAT-100", "description": "Copper pipe", "quantity": "100",
         "cost": "2.10"},
        {"sku_id": valve["id"], "code": "MAT-200", "description": "Ball valves",
         "quantity": "10", "cost": "9.50"}], number="PO-3001", status="Sent")
    st.add_purchase_order(tanks["id"], [
        {"sku_id": heater["id"], "code": "EQP-50", "description": "Water heater",
         "quantity": "1", "cost": "780.00"}], number="PO-3002", status="Received")
    return FieldSeed(customers=len(customers), invoices=len(invoices), purchase_orders=2)
