"""Addresses for the servers we start: loopback by default, the URL a browser opens, and the warning a bind
beyond loopback earns. Below everything that serves (ui.py, review/, the CLI's `serve`)."""

from __future__ import annotations

import ipaddress
import socket
import sys

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})  # host names that always mean this machine


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (for tests; a race with other processes is possible but rare)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_for(host: str, port: int) -> str:
    """The URL a browser on this machine opens; a wildcard bind address is reached through loopback."""
    try:
        wildcard = not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        wildcard = False
    return f"http://{LOOPBACK if wildcard else host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps a server on this machine (a loopback address or `localhost`)."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, what: str) -> None:
    """On a non-loopback bind, say on stderr that `what` has no authentication and how to put it behind one."""
    if is_loopback(host):
        return
    print(f"WARNING: binding {what} to {host}: it has no authentication or TLS. Anyone who can reach this address "
          "can use it (Dagster and MLflow: launch and delete runs, read and overwrite models). Keep the default "
          "127.0.0.1 and reach it through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT this-host), or put it behind a "
          "reverse proxy that authenticates (nginx auth_basic or oauth2-proxy, with TLS).", file=sys.stderr,
          flush=True)
