"""Host names as Prism compares them: lower case, no trailing dot, an IP in canonical form.

Used by the settings (``--api-hostname``) and by the control plane's trust boundary, so it lives
below both.
"""

from __future__ import annotations

import ipaddress
import re

_DNS_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def host_name(text: str) -> str | None:
    """``text`` as a comparable host name: lower case, no trailing dot, an IP in its canonical
    form (IPv6 without brackets); None if it is neither a DNS name nor an IP address."""
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name = name.removesuffix(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    return name if len(name) <= 253 and _DNS_NAME.fullmatch(name) else None
