"""Who may use the HTTP API: the listen host checked, the bearer token off loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING, Optional

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import HttpConfig


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127/8, ::1)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_listen_host(host: str) -> None:
    """A listen host that names no address of this machine's resolver is a ConfigError saying so
    (not, as it would otherwise seem, a missing token)."""
    if host in ("", "0.0.0.0", "::"):
        return
    try:
        ipaddress.ip_address(host.strip("[]"))
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ConfigError(
            f"listen: cannot resolve the host {host!r} ({exc.strerror or exc}); use an address such as 127.0.0.1"
        ) from None


def access_rules(http_cfg: HttpConfig, host: str) -> tuple[Optional[str], frozenset[str]]:
    """The token the API requires (None: open) and the paths answered without it.

    A token configured (``http.token``, or the variable ``http.token_env`` names) is always
    required. Without one the API is open on a loopback address and the daemon refuses to
    start on any other: results and frames are not for the whole network to read.
    """
    check_listen_host(host)
    token = http_cfg.token
    if token is None:
        token = os.environ.get(http_cfg.token_env) or None
        if token is not None and len(token) < 16:
            raise ConfigError(f"the API token in ${http_cfg.token_env} is too short: use at least 16 characters")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"listening on {host or '*'} (not loopback) needs an API token: set ${http_cfg.token_env} "
            "(or http.token in the configuration), or listen on 127.0.0.1"
        )
    return token, frozenset(http_cfg.open) | {"/"}
