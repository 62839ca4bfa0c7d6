"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760), sans-I/O.

Nothing here reads a clock, opens a socket or touches storage: time arrives as ``now``
arguments and user data through a lookup callable, so the same code serves the proxy, tests
and offline tools.  Only ``qop=auth`` is implemented; ``auth-int`` would need the message body
and phones do not use it.

Server nonces are stateless: a nonce carries its issue time, randomness and an HMAC over both
(plus the realm and an optional binding such as the client's source address).  A scanner can
request millions of challenges without the server storing anything; state is created only for
nonces that have been answered with a correct response, i.e. by someone who knows a password.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import hmac
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from spitguard.sip.auth import AuthChallenge, AuthCredentials

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "DigestClient",
    "DigestResult",
    "DigestServer",
    "HA1Lookup",
    "PasswordLookup",
    "compute_ha1",
    "compute_response",
    "ha1_from_passwords",
    "response_matches",
    "select_challenge",
]

HA1Lookup = Callable[[str, str, str], str | None]
"""``(username, realm, algorithm) -> hex HA1 = H(username:realm:password)`` or None if unknown.

``algorithm`` is the base algorithm name ("MD5" or "SHA-256", never "-sess"), so a store can
keep one HA1 per hash function instead of plaintext passwords."""

PasswordLookup = Callable[[str, str], str | None]
"""``(username, realm) -> plaintext password`` or None if unknown."""


def _md5(data: bytes) -> str:
    # MD5 is mandated by RFC 3261 for interoperability, not chosen for its strength.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str  # canonical spelling as sent on the wire
    base: str  # name without "-sess"; the HA1 store is keyed by this
    hash: Callable[[bytes], str]
    sess: bool
    hex_len: int


_ALGORITHMS: dict[str, _Algorithm] = {
    a.name.lower(): a
    for a in (
        _Algorithm("SHA-256", "SHA-256", _sha256, False, 64),
        _Algorithm("SHA-256-sess", "SHA-256", _sha256, True, 64),
        _Algorithm("MD5", "MD5", _md5, False, 32),
        _Algorithm("MD5-sess", "MD5", _md5, True, 32),
    )
}
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(a.name for a in _ALGORITHMS.values())
# Client preference: strongest hash first (RFC 8760), plain before -sess for simplicity.
_PREFERENCE = {name.lower(): rank for rank, name in enumerate(SUPPORTED_ALGORITHMS)}

_HEX = frozenset("0123456789abcdefABCDEF")


def _algorithm(name: str | None) -> _Algorithm | None:
    return _ALGORITHMS.get((name or "MD5").lower())


def _h(alg: _Algorithm, *parts: str) -> str:
    return alg.hash(":".join(parts).encode("utf-8"))


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """Base HA1 = H(username:realm:password); what an HA1 store should keep per algorithm.

    For ``-sess`` algorithms this is still the base value; `compute_response` derives the
    session key from it, which is why a single stored HA1 serves both variants.
    """
    alg = _algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(alg, username, realm, password)


def compute_response(
    *,
    algorithm: str | None,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """Request-digest for qop=auth, or the RFC 2069 form when ``qop`` is None.

    ``ha1`` is the base HA1 from `compute_ha1`; ``algorithm`` None means MD5.
    """
    alg = _algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    if qop is not None and qop.lower() != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    if (qop is not None or alg.sess) and (nc is None or cnonce is None):
        raise ValueError("qop and -sess algorithms need nc and cnonce")
    key = ha1.lower()
    if alg.sess:
        key = _h(alg, key, nonce, cnonce or "")
    ha2 = _h(alg, method, uri)
    if qop is None:
        return _h(alg, key, nonce, ha2)
    return _h(alg, key, nonce, nc or "", cnonce or "", qop, ha2)


def response_matches(credentials: AuthCredentials, *, method: str, ha1: str) -> bool:
    """Constant-time check of the credentials' response against a known base HA1.

    Checks only the arithmetic: it does not authenticate the nonce, realm or nonce-count,
    so on its own it is *not* an authentication decision (use `DigestServer.verify`).
    """
    p = credentials.params
    alg = _algorithm(p.get("algorithm"))
    given = p.get("response")
    nonce, uri = p.get("nonce"), p.get("uri")
    if alg is None or given is None or nonce is None or uri is None:
        return False
    try:
        expected = compute_response(
            algorithm=alg.name,
            ha1=ha1,
            nonce=nonce,
            method=method,
            uri=uri,
            qop=p.get("qop"),
            nc=p.get("nc"),
            cnonce=p.get("cnonce"),
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8"))


def ha1_from_passwords(lookup: PasswordLookup) -> HA1Lookup:
    """Adapt a plaintext-password lookup ``(username, realm) -> password`` to `HA1Lookup`."""

    def ha1(username: str, realm: str, algorithm: str) -> str | None:
        password = lookup(username, realm)
        return None if password is None else compute_ha1(algorithm, username, realm, password)

    return ha1


# --------------------------------------------------------------------------- server


class DigestResult(enum.Enum):
    """Outcome of `DigestServer.verify`.

    BAD deliberately covers both "wrong password" and "unknown user" so that responses (and,
    as far as practical, timing) do not reveal which extensions exist.
    """

    OK = "ok"
    STALE = "stale"  # authentic nonce past its TTL and a correct response: re-challenge, stale=true
    BAD = "bad"  # wrong response or unknown user
    INVALID = "invalid"  # malformed, foreign/tampered nonce, wrong realm/algorithm, replay


_NONCE_VERSION = b"spitguard-digest-nonce-v1"
_TS = struct.Struct(">Q")  # issue time, integer milliseconds
_RAND_LEN = 12
_MAC_LEN = 32
_NONCE_RAW_LEN = _TS.size + _RAND_LEN + _MAC_LEN
_NONCE_TEXT_LEN = (_NONCE_RAW_LEN * 4 + 2) // 3  # unpadded base64url


@dataclass(slots=True)
class _NcWindow:
    expires_ms: int
    highest: int = 0
    seen: int = 0  # bit k set <=> nc (highest - k) was accepted


class DigestServer:
    """Stateless-nonce digest verifier for one realm.

    Not thread-safe: the nonce-count table is mutated by `verify`; use one instance per event
    loop or guard it with a lock.
    """

    __slots__ = (
        "_algorithms",
        "_allow_no_qop",
        "_dummy",
        "_evicted_floor_ms",
        "_expiry_heap",
        "_max_skew_ms",
        "_max_tracked",
        "_nc",
        "_nc_window",
        "_rng",
        "_secret",
        "_ttl_ms",
        "realm",
    )

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nc_window: int = 64,
        allow_no_qop: bool = False,
        max_tracked_nonces: int = 100_000,
        max_clock_skew: float = 5.0,
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        """``allow_no_qop`` admits RFC 2069-style responses (no qop, nc, cnonce) from old phones;
        those have no nonce-count, so a captured response can be replayed until the nonce
        expires — keep it off unless such phones exist.  ``rng`` is injectable for tests."""
        if len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        if not realm or any(ord(c) < 0x20 or ord(c) == 0x7F for c in realm):
            raise ValueError("realm must be non-empty printable text")
        if nonce_ttl <= 0 or max_clock_skew < 0:
            raise ValueError("nonce_ttl must be > 0 and max_clock_skew >= 0")
        if not 1 <= nc_window <= 4096:
            raise ValueError("nc_window must be in 1..4096")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be >= 1")
        algs: list[_Algorithm] = []
        for name in algorithms:
            alg = _algorithm(name)
            if alg is None or not name:
                raise ValueError(f"unsupported digest algorithm {name!r}")
            if alg not in algs:
                algs.append(alg)
        if not algs:
            raise ValueError("at least one algorithm is required")
        # RFC 8760 §2.4: challenges go out in the caller's order of preference. Many desk
        # phones read only the first challenge and know only MD5, so the order is policy.
        self._secret = secret
        self.realm = realm
        self._ttl_ms = int(nonce_ttl * 1000)
        self._max_skew_ms = int(max_clock_skew * 1000)
        self._algorithms = tuple(algs)
        self._nc_window = nc_window
        self._allow_no_qop = allow_no_qop
        self._max_tracked = max_tracked_nonces
        self._rng = rng
        # Unknown users are checked against this so their cost matches a real user's.
        self._dummy = hmac.new(secret, b"spitguard-digest-dummy", hashlib.sha256).hexdigest()
        self._nc: OrderedDict[str, _NcWindow] = OrderedDict()
        self._expiry_heap: list[tuple[int, str]] = []
        # Nonces issued at or before this time may have lost their replay state to eviction.
        self._evicted_floor_ms = -1

    def __repr__(self) -> str:
        return f"DigestServer(realm={self.realm!r}, tracked_nonces={len(self._nc)})"

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(a.name for a in self._algorithms)

    # ---- nonces

    def _mac(self, head: bytes, binding: str) -> bytes:
        realm = self.realm.encode("utf-8")
        bind = binding.encode("utf-8")
        # Length prefixes keep (realm, binding) pairs from colliding via concatenation.
        msg = b"".join(
            (_NONCE_VERSION, head, _TS.pack(len(realm)), realm, _TS.pack(len(bind)), bind)
        )
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def make_nonce(self, now: float, *, binding: str = "") -> str:
        if now < 0:
            raise ValueError("now must be a non-negative timestamp")
        head = _TS.pack(int(now * 1000)) + self._rng(_RAND_LEN)
        if len(head) != _TS.size + _RAND_LEN:
            raise ValueError("rng returned the wrong number of bytes")
        raw = head + self._mac(head, binding)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _nonce_time(self, nonce: str, binding: str) -> int | None:
        """Issue time (ms) of an authentic nonce issued by this server, else None."""
        if len(nonce) != _NONCE_TEXT_LEN or not nonce.isascii():
            return None
        try:
            raw = base64.b64decode(nonce + "=" * (-len(nonce) % 4), altchars=b"-_", validate=True)
        except ValueError:
            return None
        if len(raw) != _NONCE_RAW_LEN:
            return None
        # Only the canonical spelling is accepted, so one nonce has exactly one nc window.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return None
        head, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(head, binding)):
            return None
        issued_ms: int = _TS.unpack_from(head)[0]
        return issued_ms

    def challenge(
        self, now: float, *, stale: bool = False, binding: str = ""
    ) -> list[AuthChallenge]:
        """One Digest challenge per configured algorithm, strongest first, sharing one nonce.

        ``binding`` (e.g. the source address) must be passed again to `verify`; a nonce bound
        to one address is useless from another.
        """
        nonce = self.make_nonce(now, binding=binding)
        out = []
        for alg in self._algorithms:
            params = {"realm": self.realm, "nonce": nonce, "algorithm": alg.name, "qop": "auth"}
            if stale:
                params["stale"] = "true"
            out.append(AuthChallenge("Digest", params))
        return out

    # ---- verification

    def verify(
        self,
        credentials: AuthCredentials,
        *,
        method: str,
        ha1: HA1Lookup,
        now: float,
        binding: str = "",
    ) -> DigestResult:
        """Check Digest credentials for a request with ``method``.

        ``ha1(username, realm, algorithm)`` returns the stored base HA1 hex (see `HA1Lookup`);
        wrap a plaintext password store with `ha1_from_passwords`.  The caller should compare
        ``credentials.uri`` with the Request-URI if its policy requires it.
        """
        p = credentials.params
        if not credentials.is_digest:
            return DigestResult.INVALID
        username, realm, nonce = p.get("username"), p.get("realm"), p.get("nonce")
        uri, response = p.get("uri"), p.get("response")
        if username is None or realm is None or nonce is None or not uri or response is None:
            return DigestResult.INVALID
        if realm != self.realm or credentials.userhash:
            return DigestResult.INVALID  # userhash is never offered, so never valid
        alg = _algorithm(p.get("algorithm"))
        if alg is None or alg not in self._algorithms:
            return DigestResult.INVALID
        if len(response) != alg.hex_len or not all(c in _HEX for c in response):
            return DigestResult.INVALID
        qop, nc_text, cnonce = p.get("qop"), p.get("nc"), p.get("cnonce")
        nc = 0
        if qop is None:
            if not self._allow_no_qop or alg.sess or nc_text is not None or cnonce is not None:
                return DigestResult.INVALID
        else:
            if qop.lower() != "auth" or not cnonce or nc_text is None:
                return DigestResult.INVALID
            if len(nc_text) != 8 or not all(c in _HEX for c in nc_text):
                return DigestResult.INVALID
            nc = int(nc_text, 16)
            if nc == 0:
                return DigestResult.INVALID
        issued_ms = self._nonce_time(nonce, binding)
        now_ms = int(now * 1000)
        if issued_ms is None or issued_ms > now_ms + self._max_skew_ms:
            return DigestResult.INVALID

        stored = ha1(username, self.realm, alg.base)
        known = stored is not None and len(stored) == alg.hex_len
        key = stored if stored is not None and known else _h(alg, username, realm, self._dummy)
        matches = response_matches(credentials, method=method, ha1=key)
        if not (matches and known):
            return DigestResult.BAD

        if now_ms - issued_ms > self._ttl_ms:
            return DigestResult.STALE
        if qop is None:
            return DigestResult.OK  # RFC 2069 has no nonce-count to track
        return self._check_nc(nonce, issued_ms, nc, now_ms)

    def _check_nc(self, nonce: str, issued_ms: int, nc: int, now_ms: int) -> DigestResult:
        self._expire(now_ms)
        win = self._nc.get(nonce)
        if win is None:
            if issued_ms <= self._evicted_floor_ms:
                # Its history may have been evicted; a fresh nonce is cheaper than a replay risk.
                return DigestResult.STALE
            win = self._track(nonce, issued_ms + self._ttl_ms)
        else:
            self._nc.move_to_end(nonce)
        if nc > win.highest:
            shift = nc - win.highest
            win.seen = ((win.seen << shift) | 1) & ((1 << self._nc_window) - 1)
            win.highest = nc
            return DigestResult.OK
        age = win.highest - nc
        if age >= self._nc_window or win.seen >> age & 1:
            return DigestResult.INVALID  # replayed, or too old to tell
        win.seen |= 1 << age
        return DigestResult.OK

    def _track(self, nonce: str, expires_ms: int) -> _NcWindow:
        while len(self._nc) >= self._max_tracked:
            # Expired entries went first in _expire; this one is live, so remember its age.
            _, old = self._nc.popitem(last=False)
            self._evicted_floor_ms = max(self._evicted_floor_ms, old.expires_ms - self._ttl_ms)
        win = _NcWindow(expires_ms)
        self._nc[nonce] = win
        heapq.heappush(self._expiry_heap, (expires_ms, nonce))
        if len(self._expiry_heap) > 2 * self._max_tracked:
            # Entries evicted by LRU linger in the heap; rebuild to keep memory bounded.
            self._expiry_heap = [(w.expires_ms, n) for n, w in self._nc.items()]
            heapq.heapify(self._expiry_heap)
        return win

    def _expire(self, now_ms: int) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] < now_ms:
            expires_ms, nonce = heapq.heappop(heap)
            win = self._nc.get(nonce)
            if win is not None and win.expires_ms == expires_ms:
                del self._nc[nonce]

    @property
    def tracked_nonces(self) -> int:
        return len(self._nc)


# --------------------------------------------------------------------------- client


def _usable(ch: AuthChallenge) -> _Algorithm | None:
    if not ch.is_digest or not ch.realm or not ch.nonce:
        return None
    alg = _algorithm(ch.algorithm)
    if alg is None:
        return None
    opts = ch.qop_options
    if opts and "auth" not in opts:
        return None
    if alg.sess and not opts:
        return None
    return alg


def select_challenge(challenges: Iterable[AuthChallenge]) -> AuthChallenge | None:
    """Best Digest challenge we can answer: SHA-256 over MD5, first offered on ties."""
    best: tuple[int, AuthChallenge] | None = None
    for ch in challenges:
        alg = _usable(ch)
        if alg is None:
            continue
        rank = _PREFERENCE[alg.name.lower()]
        if best is None or rank < best[0]:
            best = (rank, ch)
    return None if best is None else best[1]


class DigestClient:
    """Answers Digest challenges for one account (used for trunks and tests).

    Keeps a nonce-count per nonce so repeated requests on one nonce stay fresh; only the most
    recent nonces are remembered because servers rotate them.
    """

    __slots__ = ("_counts", "_password", "username")
    _MAX_NONCES = 32

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __repr__(self) -> str:
        return f"DigestClient(username={self.username!r}, password=<redacted>)"

    def authorize(
        self,
        challenge: AuthChallenge,
        *,
        method: str,
        uri: str,
        cnonce: str | None = None,
    ) -> AuthCredentials:
        """Credentials answering ``challenge``; qop=auth when offered, else RFC 2069 form.

        Raises ValueError if the challenge cannot be answered (not Digest, unknown algorithm,
        only qop=auth-int offered).
        """
        alg = _usable(challenge)
        if alg is None:
            raise ValueError("challenge cannot be answered by this client")
        realm, nonce = challenge.realm or "", challenge.nonce or ""
        username = self.username
        if challenge.userhash:
            username = _h(alg, self.username, realm)  # RFC 7616 §3.4.4
        params: dict[str, str] = {"username": username, "realm": realm, "nonce": nonce, "uri": uri}
        ha1 = compute_ha1(alg.name, self.username, realm, self._password)
        if challenge.qop_options:
            key = (realm, nonce)
            count = self._counts.pop(key, 0) + 1
            self._counts[key] = count
            while len(self._counts) > self._MAX_NONCES:
                self._counts.popitem(last=False)
            nc = f"{count:08x}"
            cn = cnonce if cnonce is not None else secrets.token_hex(16)
            params["response"] = compute_response(
                algorithm=alg.name,
                ha1=ha1,
                nonce=nonce,
                method=method,
                uri=uri,
                qop="auth",
                nc=nc,
                cnonce=cn,
            )
            params.update(algorithm=alg.name, cnonce=cn, qop="auth", nc=nc)
        else:
            params["response"] = compute_response(
                algorithm=alg.name,
                ha1=ha1,
                nonce=nonce,
                method=method,
                uri=uri,
            )
            params["algorithm"] = alg.name
        if challenge.opaque is not None:
            params["opaque"] = challenge.opaque
        if challenge.userhash:
            params["userhash"] = "true"
        return AuthCredentials("Digest", params)
