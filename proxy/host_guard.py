"""Which requests a web page in the user's browser may not make: the Host and Origin rules.

llmtap on loopback trusts whoever reaches its port, and a browser reaches it for any web page:
a page on `evil.example` whose name the attacker's DNS then points at 127.0.0.1 (DNS
rebinding) is same-origin with llmtap in the browser's eyes, and could read `/api/traces` and
drive `/v1`. Its requests carry `Host: evil.example`, so llmtap on loopback answers only the
names that mean this machine (127.0.0.1, localhost, [::1], any port), the `--host` it was
given and the names in `allowed_hosts` (`*`: any).

Listening beyond loopback (`--host 0.0.0.0` in a container), the machine is reached by
addresses and names llmtap cannot know (a LAN address, a compose service's name): Host is
checked only when `allowed_hosts` is set.

A page on another origin can send a POST that needs no preflight (`fetch(url, {mode:
"no-cors", method: "POST"})` with a text/plain body, a form): llmtap would forward it, with
the credentials of its upstream URL, and record it. The browser names the page's origin in
`Origin`, which SDKs never send: a request whose Origin is another site (not the authority
the request was sent to, a loopback name, or a name listed in `allowed_hosts`) gets a 403 too.
A page this machine serves (`http://localhost:5173`, a web app in development) is let through,
as Ollama lets it through by default: whoever serves pages here can reach the port anyway.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from llmtap.proxy.config import Settings
from llmtap.proxy.errors import CrossOriginRequest, HostNotAllowed, LlmtapError

log = logging.getLogger("llmtap")

RawHeaders = list[tuple[bytes, bytes]]

LOOPBACK_NAMES = (b"127.0.0.1", b"localhost", b"[::1]", b"0.0.0.0")
"""Names that mean this machine; 0.0.0.0 too, which reaches loopback here (uvicorn prints it,
so people use it): a page on another site sending to it is caught by its Origin."""
_VERDICTS_KEPT = 1024
"""Host values whose verdict is remembered; a client inventing more costs no memory."""


def listens_on_loopback(host: str) -> bool:
    """Whether `--host` is a loopback address (or a name for one, resolved as bind() does)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:
        return False


def host_name(authority: bytes) -> bytes:
    """`localhost` of `localhost:8787`, `[::1]` of `[::1]:8787`: the name without its port."""
    if authority.startswith(b"["):
        return authority.partition(b"]")[0] + b"]"
    return authority.partition(b":")[0]


def _as_in_host(name: str) -> str:
    """An IPv6 address in brackets, as a Host header has it (`fd00::5` is `[fd00::5]`)."""
    if name.startswith("[") or name.count(":") < 2:
        return name
    return f"[{name}]"


def is_loopback_name(name: str) -> bool:
    """Whether a host name or address is this machine: `localhost`, or any loopback address,
    in any form (`127.1`, `[::ffff:127.0.0.1]`)."""
    lowered = name.lower().rstrip(".")
    return lowered in ("localhost", "localhost6") or _is_loopback(lowered.encode("latin-1"))


def _is_loopback(name: bytes) -> bool:
    text = name.decode("latin-1").strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        try:  # the shorthand forms inet_aton reads (`127.1`), which browsers and curl send as is
            address = ipaddress.ip_address(socket.inet_aton(text))
        except OSError:
            return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class HostGuard:
    """`refusal(headers)`: the error to answer a request with, or None to serve it."""

    def __init__(self, settings: Settings) -> None:
        listed = settings.allowed_host_names
        own = _as_in_host(settings.host.lower())
        # as a Host is compared: without its port (`proxy.example.org:8443` never matched)
        self.listed = frozenset(host_name(_as_in_host(name).encode()) for name in listed)
        self.names = self.listed | {*LOOPBACK_NAMES, own.encode()}
        self.checks_host = "*" not in listed and (
            bool(listed) or listens_on_loopback(settings.host)
        )
        self._verdicts: dict[bytes, bool] = {}

    def refusal(self, headers: RawHeaders) -> LlmtapError | None:
        host = origin = None
        for name, value in headers:  # (lower-cased by the server, as ASGI wants)
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        # no Host (HTTP/1.0) is no browser's request
        if host is not None and self.checks_host:
            allowed = self._verdicts.get(host)  # one lookup per request: a client's Host repeats
            if allowed is None:
                allowed = self._learn(host)
            if not allowed:
                return HostNotAllowed(
                    f"llmtap does not answer to the host name {host.decode('latin-1')[:100]!r}: "
                    "a web page whose name was pointed at this machine sends it. If you reach "
                    "llmtap by that name, add it to allowed_hosts (--allowed-hosts, "
                    "LLMTAP_ALLOWED_HOSTS)"
                )
        if origin is not None and not self._is_own(origin, host):
            return CrossOriginRequest(
                f"llmtap refuses requests from web pages on other origins "
                f"({origin.decode('latin-1')[:100]}): such a page could spend the upstream's "
                "credentials or read the recordings. SDKs send no Origin header; a name in "
                "front of llmtap goes in allowed_hosts"
            )
        return None

    def _is_own(self, origin: bytes, host: bytes | None) -> bool:
        """Whether a page on `origin` may use llmtap: its own UI (served from the authority this
        request was sent to), a page this machine serves (a loopback name, any port: the
        user's own web app in development, as Ollama allows by default), or one on a name the
        user listed (behind a proxy that rewrites Host). Not a page on any other site."""
        _, sep, authority = origin.lower().partition(b"://")
        if not sep:  # `null`: a sandboxed frame, a file, a redirect across origins
            return False
        if host is not None and authority == host.lower():
            return True
        name = host_name(authority)
        return name in LOOPBACK_NAMES or name in self.listed

    def _learn(self, host: bytes) -> bool:
        if len(self._verdicts) >= _VERDICTS_KEPT:
            self._verdicts.clear()
        name = host_name(host.lower())
        # `localhost.` is `localhost`; any literal loopback address (`127.1`, `[::ffff:
        # 127.0.0.1]`) is this machine too: a rebound page's Host is a name, never an address
        allowed = name in self.names or name.rstrip(b".") in self.names or _is_loopback(name)
        self._verdicts[host] = allowed
        if not allowed:
            log.warning("refused a request for host %r (not in allowed_hosts)", host)
        return allowed
