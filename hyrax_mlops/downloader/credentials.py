"""Credentials for survey services, from the environment, a netrc or a credentials file.

They are never part of the config (only the *names* of the variables and the file's path
are), so they cannot reach MLflow params, tags or the logged config; `repr` masks them so a
stray log line cannot print them either. What a run records is where they came from.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import tomllib

from hyrax_mlops.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    origin: str = "none"  # e.g. "env HSC_SSP_CAS_USER/HSC_SSP_CAS_PASSWORD": safe to log

    def apply(self, session, url: str) -> None:
        """Give a `requests.Session` these credentials, sent only to `url`'s host (a link
        the service hands back to another host never receives them)."""
        session.auth = _HostAuth(urlparse(url).hostname or "", self)
        session.trust_env = False  # no proxy/netrc surprises: what we resolved is what is sent


class _HostAuth:
    """requests auth hook: basic auth or a bearer token, for one host only."""

    def __init__(self, host: str, creds: Credentials) -> None:
        self.host, self.creds = host, creds

    def __call__(self, r):
        from requests.auth import _basic_auth_str

        if (urlparse(r.url).hostname or "") != self.host:
            return r
        if self.creds.token:
            r.headers["Authorization"] = f"Bearer {self.creds.token}"
        elif self.creds.user is not None:
            r.headers["Authorization"] = _basic_auth_str(self.creds.user,
                                                         self.creds.password or "")
        return r

    def __repr__(self) -> str:
        return f"_HostAuth({self.host!r}, {self.creds.origin!r})"


def _from_file(path: str, section: str) -> dict[str, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config key 'download.credentials_file' points to '{path}', which "
                          "does not exist. Fix: create it or unset the key.")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"credentials file '{path}' is not valid TOML: {exc}") from None
    table = data.get(section)
    if not isinstance(table, dict):
        raise ConfigError(f"credentials file '{path}' has no [{section}] table. Fix: add "
                          f"[{section}] with the keys this source needs.")
    return {k: str(v) for k, v in table.items()}


def _netrc_entry(url: str) -> tuple[str, tuple | None]:
    """`url`'s host and its (login, account, password) in `$NETRC` or ~/.netrc, if any."""
    host = urlparse(url).hostname or ""
    try:
        return host, netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError):
        return host, None


def basic_auth(url: str, *, user_env: str, password_env: str, file: str = "",
               section: str = "hsc") -> Credentials:
    """User and password: environment first, then the credentials file, then netrc."""
    user, password = os.environ.get(user_env), os.environ.get(password_env)
    if user and password:
        return Credentials(user, password, origin=f"env {user_env}/{password_env}")
    if file:
        table = _from_file(file, section)
        if "user" in table and "password" in table:
            return Credentials(table["user"], table["password"], origin=f"file [{section}]")
        raise ConfigError(f"credentials file '{file}' [{section}] needs 'user' and 'password'.")
    host, entry = _netrc_entry(url)
    if entry and entry[2] is not None:
        return Credentials(entry[0], entry[2], origin=f"netrc {host}")
    raise ConfigError(
        f"no credentials for {host}. Fix: export {user_env} and {password_env}, or add "
        f"'machine {host} login USER password PASS' to ~/.netrc, or set "
        f"download.credentials_file to a TOML file with [{section}] user/password.")


def bearer_token(url: str, *, token_env: str, file: str = "",
                 section: str = "rubin") -> Credentials:
    """A bearer token: environment first, then the credentials file, then netrc's password."""
    token = os.environ.get(token_env)
    if token:
        return Credentials(token=token.strip(), origin=f"env {token_env}")
    if file:
        table = _from_file(file, section)
        if "token" in table:
            return Credentials(token=table["token"].strip(), origin=f"file [{section}]")
        raise ConfigError(f"credentials file '{file}' [{section}] needs 'token'.")
    host, entry = _netrc_entry(url)
    if entry and entry[2]:
        return Credentials(token=entry[2], origin=f"netrc {host}")
    raise ConfigError(
        f"no token for {host}. Fix: export {token_env}=<your RSP access token> (make one at "
        "the Rubin Science Platform's token page), or set download.credentials_file to a TOML "
        f"file with [{section}] token = \"...\".")
