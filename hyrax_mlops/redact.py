"""Keep secrets out of what we print, tag and log: URLs with credentials are refused, and any
URL's userinfo or secret-looking query values are masked before a message leaves the process.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
_SCHEME = r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
# scheme://user:pass@host, scheme://token@host; a password holding '@' (unencoded) up to the
# last '@' of the authority
_USERINFO = re.compile(_SCHEME + r"(?P<userinfo>[^/\s'\"<>?#]*)@")
# scheme://user:pa/ss@host: an unencoded '/' in a password (not host:port/path@...)
_USERINFO_SLASH = re.compile(
    _SCHEME + r"(?P<userinfo>[^/\s'\"<>@:]*:(?!\d+(?:/|$))[^\s'\"<>@]*)@")
_NAMES = (r"token|access_token|refresh_token|id_token|session_token|auth|authorization|"
          r"password|passwd|pwd|pass|secret|client_secret|api_key|apikey|api-key|key|"
          r"access_key|secret_key|private_token|sig|signature|x-amz-signature|"
          r"x-amz-credential|x-amz-security-token|x-goog-signature|code")
# ?token=...&password=... (and #access_token=... ), case-insensitive names
_SECRET_QUERY = re.compile(rf"(?P<name>[?&;#](?:{_NAMES})=)(?P<value>[^&#\s'\"<>]+)",
                           re.IGNORECASE)
# libpq-style "host=db user=u password=secret", and "Authorization: Bearer abc"
_SECRET_WORD = re.compile(r"(?P<name>(?<![\w.-])(?:password|passwd|pwd|secret|token)\s*=\s*)"
                          r"(?P<value>(?!\*\*\*)[^\s&'\",;<>]+)", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?P<name>\b(?:Bearer|Basic|Token)\s+)(?P<value>[A-Za-z0-9._~+/=-]{6,})")


def redact(text: str) -> str:
    """`text` with every URL's userinfo and secret query values replaced by ***, as well as
    `password=...`-style pairs and `Bearer ...` credentials."""
    if not text:
        return text
    text = str(text)
    text = _USERINFO_SLASH.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['name']}{MASK}", text)
    text = _SECRET_WORD.sub(lambda m: f"{m['name']}{MASK}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['name']}{MASK}", text)


def has_userinfo(url: str) -> bool:
    """True when `url` carries a user name or password (`scheme://user:pass@host`)."""
    if not url or "://" not in url:
        return False
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return True  # unparsable: treat as unsafe rather than log it
    return bool(parts.username or parts.password or "@" in parts.netloc
                or redact(url) != url and _USERINFO_SLASH.search(url) is not None)


def refuse_userinfo(key: str, url: str, use_instead: str) -> str:
    """Return `url` unchanged, or raise ValueError (a config error naming `key`) when it holds
    credentials; `use_instead` says where they belong (an environment variable or a file)."""
    if has_userinfo(url):
        raise ValueError(f"{key} must not hold credentials (user:password@ would be logged "
                         f"with the run): give them through {use_instead}")
    return url
