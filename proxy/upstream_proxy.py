"""An HTTP proxy between llmtap and its upstream, taken from the environment as the SDK takes it.

Behind a corporate proxy a direct SDK call works (httpx reads `HTTPS_PROXY`, `HTTP_PROXY` and
`NO_PROXY`), and llmtap, which connected directly, could not reach api.openai.com at all. The
upstream client now goes the same way: an `https://` upstream through a `CONNECT` tunnel (TLS
end to end, the proxy sees the host name only), an `http://` upstream through the proxy with
the request's absolute URL on its request line (RFC 9112 3.2.2). Credentials in the proxy's
URL go as `Proxy-Authorization: Basic`. `ALL_PROXY` stands in for a scheme's own, as in httpx.
`NO_PROXY` is read as urllib reads it (names, domain suffixes, `*`), and its networks
(`10.0.0.0/8`) as httpx reads them; an upstream on this machine (loopback) never goes through
a proxy.

Only `http://` proxies are supported: an `https://` proxy URL (TLS to the proxy itself) is
refused at start with a message, not ignored.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from llmtap.proxy.host_guard import is_loopback_name

MAX_CONNECT_HEAD = 64 * 1024
"""Bytes of a proxy's answer to CONNECT before its blank line, at most."""


class ProxyRefused(OSError):
    """The proxy answered CONNECT with something other than a 2xx (an OSError: a connect
    failure, said to the client as a 502 like any other)."""


@dataclass(frozen=True, slots=True)
class Via:
    """An HTTP proxy to reach the upstream through."""

    host: str
    port: int
    authorization: str | None
    """`Basic ...` from credentials in the proxy's URL."""
    shown: str
    """`host:port`, for messages (never the credentials)."""


def via_from_environment(scheme: str, host: str) -> Via | None:
    """The proxy the environment names for an upstream `scheme://host`, or None (none set, the
    host in NO_PROXY, or on this machine). ValueError for a proxy URL llmtap cannot use."""
    if is_loopback_name(host):
        return None
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")  # ALL_PROXY, as httpx takes it
    if not url or urllib.request.proxy_bypass(host) or _in_no_proxy_network(host):
        return None
    if "://" not in url:
        url = "http://" + url  # `HTTPS_PROXY=proxy:3128`, as curl and httpx take it
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise ValueError(f"{scheme}_proxy {parts.scheme}://{parts.hostname}: only http:// proxies")
    if not parts.hostname:
        raise ValueError(f"{scheme}_proxy names no host")
    port = parts.port or 80
    authorization = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = "Basic " + token
    shown_host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Via(parts.hostname, port, authorization, f"{shown_host}:{port}")


def _in_no_proxy_network(host: str) -> bool:
    """Whether `host`, an IP address, is in a network NO_PROXY lists (`10.0.0.0/8`), which
    httpx honours and urllib's `proxy_bypass` does not."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    listed = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in listed.split(","):
        try:
            if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


async def open_tunnel(sock: socket.socket, via: Via, host_header: str) -> None:
    """Ask the proxy `sock` is connected to for a tunnel to `host_header` (`host:port`), and
    wait for its 2xx; `ProxyRefused` for any other answer. The caller bounds the time."""
    loop = asyncio.get_running_loop()
    lines = [f"CONNECT {host_header} HTTP/1.1", f"Host: {host_header}"]
    if via.authorization is not None:
        lines.append("Proxy-Authorization: " + via.authorization)
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = b""
    while b"\r\n\r\n" not in head:
        piece = await loop.sock_recv(sock, 4096)
        if not piece:
            raise ProxyRefused(f"the proxy {via.shown} closed the connection during CONNECT")
        head += piece
        if len(head) > MAX_CONNECT_HEAD:
            raise ProxyRefused(f"the proxy {via.shown} sent no end to its answer to CONNECT")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
        raise ProxyRefused(f"the proxy {via.shown} refused the tunnel: {status_line[:200]}")
    if not head.endswith(b"\r\n\r\n"):  # bytes of the upstream's before its TLS: none can come
        raise ProxyRefused(f"the proxy {via.shown} sent bytes after its answer to CONNECT")
