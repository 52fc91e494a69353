"""Outbound HTTP CONNECT proxy settings: credentials move from the URL into a BasicAuth header."""

from __future__ import annotations

import aiohttp
from yarl import URL


def proxy_settings(proxy_url: URL | None) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy URL without userinfo, and basic auth built from it (None when absent)."""
    if proxy_url is None:
        return None, None
    auth = None
    if proxy_url.user is not None:
        auth = aiohttp.BasicAuth(proxy_url.user, proxy_url.password or "")
    return proxy_url.with_user(None).with_password(None), auth


def redact(proxy_url: URL | None) -> str:
    """The proxy URL for logs, password hidden."""
    if proxy_url is None:
        return "none"
    if proxy_url.password is not None:
        return str(proxy_url.with_password("***"))
    return str(proxy_url)
