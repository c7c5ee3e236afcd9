"""Small URL facts shared by the config checks and the HTTP layer."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also as an IPv4-mapped IPv6 address): the only
    hosts where plain http is accepted (the sandbox and tests)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
