"""CSRF protection for the HTML form: OWASP's "signed double-submit cookie".

https://cheatsheetseries.owasp.org/cheatsheets/Cross-Site_Request_Forgery_Prevention_Cheat_Sheet.html
(section "Signed Double-Submit Cookie"). The browser gets a random value in a cookie; the form carries
HMAC(secret, cookie value + issue time). Another site can make a browser POST the form, but it can
neither read our cookie nor compute the HMAC, so it cannot put a matching token in the body. Nothing is
kept on the server, so every worker and instance that shares the secret accepts every other's tokens.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

COOKIE_NAME = "recipes_csrf"
MAX_AGE_S = 12 * 3600  # a form left open longer gets a clear "please submit again", with input kept
CLOCK_SKEW_S = 300  # instances' clocks may differ a little


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_cookie_value() -> str:
    return secrets.token_urlsafe(32)


def looks_like_cookie_value(value: str | None) -> bool:
    """A value this module could have issued (43 URL-safe characters); anything else is replaced."""
    return bool(value) and len(value) == 43 and all(c.isalnum() or c in "-_" for c in value)


class CsrfSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the CSRF secret must be at least 16 bytes")
        self._secret = secret

    def _sig(self, cookie_value: str, issued: int) -> str:
        msg = f"recipes-csrf-v1|{cookie_value}|{issued}".encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def token(self, cookie_value: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._sig(cookie_value, issued)}"

    def check(self, cookie_value: str | None, token: str | None, now: float | None = None) -> str | None:
        """None when the token is valid for the cookie; otherwise why not (for the log and the page)."""
        if not cookie_value:
            return "missing_cookie"
        if not token:
            return "missing_token"
        issued_text, _, sig = token.partition(".")
        if not (issued_text.isascii() and issued_text.isdigit()) or not sig:  # int() refuses "²"
            return "malformed_token"
        issued = int(issued_text)
        if not hmac.compare_digest(sig, self._sig(cookie_value, issued)):
            return "bad_signature"
        age = (time.time() if now is None else now) - issued
        if age > MAX_AGE_S or age < -CLOCK_SKEW_S:
            return "expired"
        return None


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, created once (mode 0600) when it does not exist yet.

    Several gunicorn workers, or several processes started at once, may race here: the secret is
    written to a private temporary file and hard-linked into place, which fails if another process
    got there first; the loser then reads the winner's complete file. All of them end up agreeing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes().strip()
        if data:
            return data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_hex(32).encode())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    data = path.read_bytes().strip()
    if not data:
        raise RuntimeError(
            f"{path} exists but is empty: delete it (a new secret is made) or set RECIPES_SECRET"
        )
    return data
