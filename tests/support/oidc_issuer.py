"""A stand-in OpenID Connect issuer for tests: a real HTTP server on 127.0.0.1 with discovery,
a JWKS, an authorization endpoint and a token endpoint that issues really signed ID tokens.

It is strict where a real issuer is (client id and secret, redirect URI, single-use codes,
the PKCE verifier against the challenge), so a test passes only if the server under test
does its part of the protocol; and it misbehaves on demand (:class:`Misbehaviour`), so a
test can check the server refuses what a broken or hostile issuer would send.

A test plays the browser with :meth:`StandInIssuer.sign_in`: it opens the authorization URL
the server answered, as the user it names, and gets back the ``code`` and ``state`` the
issuer redirected with.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

KeyAlgorithm = Literal["RS256", "ES256"]
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
CODE_TTL_S = 60


@dataclass(frozen=True, slots=True)
class User:
    """Who signs in at the issuer."""

    sub: str
    email: str | None = None
    email_verified: bool = False


class Misbehaviour(enum.StrEnum):
    """What is wrong with the ID tokens the issuer answers while :attr:`misbehave` is set."""

    FOREIGN_KEY = "foreign_key"  # signed by an unpublished key under the published kid
    UNKNOWN_KID = "unknown_kid"  # signed by an unpublished key named by an unknown kid
    ALG_NONE = "alg_none"  # not signed at all
    HS256 = "hs256"  # HMAC keyed with the issuer's public key (algorithm confusion)
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_NONCE = "wrong_nonce"
    EXPIRED = "expired"


@dataclass(slots=True)
class _Grant:
    """An authorization code and what it was issued for."""

    user: User
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    issued_at: float
    used: bool = False


@dataclass(slots=True)
class _Key:
    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    alg: KeyAlgorithm

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            public: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(
                self.private.public_key(), as_dict=True
            )
        else:
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_key(alg: KeyAlgorithm) -> _Key:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return _Key(secrets.token_hex(8), private, alg)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _s256(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass
class _Log:
    """What the issuer saw, for tests to assert on."""

    hits: dict[str, int] = field(default_factory=dict)  # "GET /jwks" -> count
    authorizations: list[dict[str, str]] = field(default_factory=list)  # query of each
    token_errors: list[str] = field(default_factory=list)  # why the token endpoint refused


class StandInIssuer:
    """Start with ``with StandInIssuer() as issuer:``; :attr:`url` is its issuer id."""

    def __init__(
        self,
        *,
        client_id: str = "gearhall-test-client",
        client_secret: str | None = None,
        alg: KeyAlgorithm = "RS256",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.alg = alg
        self.misbehave: Misbehaviour | None = None
        self.advertised_issuer: str | None = None
        """Set: the discovery document names this issuer instead of its own."""
        self.log = _Log()
        self._keys = [_new_key(alg)]  # published; the first one signs
        self._users: dict[str, User] = {}
        self._codes: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        issuer = self

        class Handler(_Handler):
            stand_in = issuer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="oidc-stand-in", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StandInIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- test controls -----------------------------------------------------------------------

    def rotate_key(self) -> None:
        """Sign with a new key from now on, publishing it next to the old one."""
        with self._lock:
            self._keys.insert(0, _new_key(self.alg))

    def hits(self, route: str) -> int:
        """How often ``route`` ("GET /jwks", "POST /token"...) was requested."""
        with self._lock:
            return self.log.hits.get(route, 0)

    def sign_in_blocking(self, authorization_url: str, user: User) -> tuple[str, str]:
        """Be the browser: open ``authorization_url`` signed in as ``user`` and follow the
        issuer's answer no further than its redirect. Returns (code, state).

        Raises:
            AssertionError: the issuer refused the request (its reason in the message).
        """
        with self._lock:
            self._users[user.sub] = user
        sep = "&" if "?" in authorization_url else "?"
        url = f"{authorization_url}{sep}{urlencode({'login_hint': user.sub})}"
        opener = urllib.request.build_opener(_NoFollow, urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=5) as resp:
                raise AssertionError(f"issuer answered {resp.status}, not a redirect")
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code != HTTPStatus.FOUND:
                    body = exc.read().decode(errors="replace")
                    raise AssertionError(f"issuer refused: {exc.code} {body}") from None
                location = exc.headers["Location"]
        query = parse_qs(urlsplit(location).query)
        return query["code"][0], query["state"][0]

    async def sign_in(self, authorization_url: str, user: User) -> tuple[str, str]:
        """:meth:`sign_in_blocking` off the event loop (the server shares the loop)."""
        return await asyncio.to_thread(self.sign_in_blocking, authorization_url, user)

    # --- the endpoints (run in the server's threads) --------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.advertised_issuer or self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.alg],
            "scopes_supported": ["openid", "email", "profile"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self._keys]}

    def authorize(self, query: dict[str, str]) -> tuple[HTTPStatus, str]:
        """(302, Location) for a valid request, else (400, why)."""
        with self._lock:
            self.log.authorizations.append(query)
            user = self._users.get(query.get("login_hint", ""))
        problems = [
            why
            for why, bad in (
                ("response_type must be code", query.get("response_type") != "code"),
                ("unknown client_id", query.get("client_id") != self.client_id),
                ("no redirect_uri", not query.get("redirect_uri")),
                ("scope must include openid", "openid" not in query.get("scope", "").split()),
                ("no state", not query.get("state")),
                ("no nonce", not query.get("nonce")),
                (
                    "code_challenge_method must be S256",
                    query.get("code_challenge_method") != "S256",
                ),
                ("malformed code_challenge", len(query.get("code_challenge", "")) != 43),
                ("nobody is signed in", user is None),
            )
            if bad
        ]
        if problems:
            return HTTPStatus.BAD_REQUEST, "; ".join(problems)
        assert user is not None
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Grant(
                user=user,
                client_id=query["client_id"],
                redirect_uri=query["redirect_uri"],
                code_challenge=query["code_challenge"],
                nonce=query["nonce"],
                issued_at=time.time(),
            )
        back = urlencode({"code": code, "state": query["state"]})
        sep = "&" if "?" in query["redirect_uri"] else "?"
        return HTTPStatus.FOUND, f"{query['redirect_uri']}{sep}{back}"

    def token(self, form: dict[str, str]) -> tuple[HTTPStatus, dict[str, Any]]:
        """Redeem a code: (200, tokens) or (400/401, an OAuth error), the reason logged."""

        def refuse(status: HTTPStatus, error: str, why: str) -> tuple[HTTPStatus, dict[str, Any]]:
            with self._lock:
                self.log.token_errors.append(why)
            return status, {"error": error, "error_description": why}

        if form.get("grant_type") != "authorization_code":
            return refuse(HTTPStatus.BAD_REQUEST, "unsupported_grant_type", "grant_type")
        secret = form.get("client_secret", "")
        if form.get("client_id") != self.client_id or not hmac.compare_digest(
            secret.encode(), self.client_secret.encode()
        ):
            return refuse(HTTPStatus.UNAUTHORIZED, "invalid_client", "client")
        with self._lock:
            grant = self._codes.get(form.get("code", ""))
            fresh = grant is not None and not grant.used
            if grant is not None:
                grant.used = True  # a code is redeemed at most once, whatever happens next
        if grant is None or not fresh or time.time() - grant.issued_at > CODE_TTL_S:
            return refuse(HTTPStatus.BAD_REQUEST, "invalid_grant", "code")
        if form.get("redirect_uri") != grant.redirect_uri:
            return refuse(HTTPStatus.BAD_REQUEST, "invalid_grant", "redirect_uri")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.match(verifier) or not hmac.compare_digest(
            _s256(verifier), grant.code_challenge
        ):
            return refuse(HTTPStatus.BAD_REQUEST, "invalid_grant", "code_verifier")
        return HTTPStatus.OK, {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 3600,
            "id_token": self.id_token(grant),
        }

    def id_token(self, grant: _Grant) -> str:
        """A signed ID token for ``grant``, spoiled as :attr:`misbehave` says."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": grant.user.sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "nonce": grant.nonce,
        }
        if grant.user.email is not None:
            claims["email"] = grant.user.email
            claims["email_verified"] = grant.user.email_verified
        with self._lock:
            key = self._keys[0]
        bad = self.misbehave
        if bad is Misbehaviour.WRONG_AUDIENCE:
            claims["aud"] = "someone-elses-client"
        elif bad is Misbehaviour.WRONG_ISSUER:
            claims["iss"] = "https://issuer.invalid"
        elif bad is Misbehaviour.WRONG_NONCE:
            claims["nonce"] = secrets.token_urlsafe(32)
        elif bad is Misbehaviour.EXPIRED:
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif bad is Misbehaviour.FOREIGN_KEY:
            key = _Key(key.kid, _new_key(self.alg).private, self.alg)
        elif bad is Misbehaviour.UNKNOWN_KID:
            key = _new_key(self.alg)
        elif bad is Misbehaviour.ALG_NONE:
            return self._unsigned(claims, {"alg": "none", "typ": "JWT", "kid": key.kid}, b"")
        elif bad is Misbehaviour.HS256:
            header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
            return self._unsigned(claims, header, key.public_pem())
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})

    @staticmethod
    def _unsigned(claims: dict[str, Any], header: dict[str, Any], hmac_key: bytes) -> str:
        """A token PyJWT refuses to make: ``alg: none`` (no signature), or HS256 keyed with
        a PEM public key (which PyJWT rightly will not use as an HMAC secret)."""
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        if not hmac_key:
            return signing_input + "."
        mac = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"


class _NoFollow(urllib.request.HTTPRedirectHandler):
    """The browser stops at the redirect back to the game: that is where the code is."""

    def redirect_request(  # noqa: PLR0917 (the stdlib's signature)
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


class _Handler(BaseHTTPRequestHandler):
    stand_in: StandInIssuer

    def log_message(self, fmt: str, *args: Any) -> None:
        return None

    def _count(self, route: str) -> None:
        issuer = self.stand_in
        with issuer._lock:
            issuer.log.hits[route] = issuer.log.hits.get(route, 0) + 1

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for header in headers:
            name, _, value = header.partition(": ")
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self._count(f"GET {parts.path}")
        if parts.path == "/.well-known/openid-configuration":
            self._json(HTTPStatus.OK, self.stand_in.discovery())
        elif parts.path == "/jwks":
            self._json(HTTPStatus.OK, self.stand_in.jwks())
        elif parts.path == "/authorize":
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            status, answer = self.stand_in.authorize(query)
            if status == HTTPStatus.FOUND:
                self._send(status, b"", "text/plain", f"Location: {answer}")
            else:
                self._send(status, answer.encode(), "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        self._count(f"POST {parts.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if parts.path != "/token":
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            self._json(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
            return
        form = {k: v[0] for k, v in parse_qs(body.decode("ascii")).items()}
        status, doc = self.stand_in.token(form)
        self._json(status, doc)
