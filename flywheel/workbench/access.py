"""Who may do what in the workbench.

Roles, each including the one before: ``viewer`` (read), ``editor`` (drafts and impact previews), ``publisher``
(publish and roll back). Identity comes from an access file (``--access``, format in
``docker/workbench/access.example.yaml``):

- ``identity: token`` — each user has a secret token; the file holds only its sha256. Clients send
  ``Authorization: Bearer <token>``; a browser signs in once and keeps it in an HttpOnly cookie.
- ``identity: header`` — a proxy in front of the workbench (oauth2-proxy, an ingress with SSO) authenticates
  people and sets a header (``X-Forwarded-User`` by default) to the user's name. Only use this when nothing
  but the proxy can reach the workbench: the header is trusted as sent.

Someone not listed is refused (token mode) or a viewer (header mode). Without an access file the workbench is
for one person on this machine: it listens on loopback only, and that person is a publisher.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROLES = ("viewer", "editor", "publisher")
Role = Literal["viewer", "editor", "publisher"]


class User(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)   # a pasted raw token never reaches a log
    name: str = Field(min_length=1)
    role: Role
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    def can(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Access(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    identity: Literal["token", "header", "local"] = "token"
    header: str = "X-Forwarded-User"
    users: list[User] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tokens(self) -> "Access":
        if self.identity == "token":
            missing = [u.name for u in self.users if not u.token_sha256]
            if missing:
                raise ValueError(f"identity: token needs token_sha256 for every user; missing for {missing}")
        names = [u.name for u in self.users]
        if len(names) != len(set(names)):
            raise ValueError("each user name may appear once")
        return self

    def identify(self, headers, cookies) -> User | None:
        """The user a request comes from, or None (not signed in / unknown token)."""
        if self.identity == "local":
            return self.users[0]
        if self.identity == "header":
            name = (headers.get(self.header) or "").strip()
            if not name:
                return None
            return next((u for u in self.users if u.name == name), User(name=name, role="viewer"))
        auth = headers.get("authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else cookies.get("workbench_token", "")
        return self.by_token(token) if token else None

    def by_token(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return next((u for u in self.users if u.token_sha256 and hmac.compare_digest(u.token_sha256, digest)), None)


def local_access() -> Access:
    return Access(identity="local", users=[User(name=getpass.getuser(), role="publisher")])


def load_access(path: str | Path | None) -> Access:
    if path is None:
        return local_access()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no access file at {p}: copy docker/workbench/access.example.yaml and list your "
                                f"users")
    try:
        data = yaml.safe_load(p.read_text()) or {}
        if isinstance(data, dict) and data.get("identity") == "local":
            raise ValueError("identity: local is the workbench without an access file (one person, loopback); "
                             "an access file says token or header")
        return Access.model_validate(data)
    except (ValidationError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{p}: not a valid access file — {exc}") from None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
