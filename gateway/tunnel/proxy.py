"""Outbound HTTP CONNECT proxy settings: credentials move from the URL into a BasicAuth header."""

from __future__ import annotations

import aiohttp
from yarl import URL

from gwcore.enrol import proxy_credentials


def proxy_settings(proxy_url: URL | None) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy URL without userinfo, and basic auth built from it (None when absent)."""
    if proxy_url is None:
        return None, None
    split = proxy_credentials(str(proxy_url))
    auth = aiohttp.BasicAuth(split.user, split.password) if split.user is not None else None
    return URL(split.url), auth


def redact(proxy_url: URL | None) -> str:
    """The proxy URL for logs, password hidden."""
    if proxy_url is None:
        return "none"
    if proxy_url.password is not None:
        return str(proxy_url.with_password("***"))
    return str(proxy_url)
