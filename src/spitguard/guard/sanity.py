"""The sanity gate: what parses but must still be refused, before any routing work.

The equivalent of the stock kamailio.cfg REQINIT size caps plus `sanity_check("17895", "7")`
(sip-security.md §1.1, §1.5). Most of those checks are already enforced by `sip.parse`,
which raises on anything malformed; the ones left are the RFC 3261 defects it records in
`msg.defects` for the edge to decide on. Checks, top to bottom (Kamailio check bit):

  message size > max_size                         sanity:too_large       (65536, cfg cap)
  Request-URI longer than max_ruri                sanity:ruri_too_long   (cfg cap)
  Request-URI scheme not sip/sips/tel             sanity:ruri_scheme     (2)
  To/From/CSeq/Call-ID/Via missing                sanity:missing:<name>  (4)
  a single-valued header repeated                 sanity:duplicate:<name> (CVE-2018-14767)
  top Via branch is the bare magic cookie         sanity:empty_branch    (16384/32768)
  top Via branch missing or without the cookie    sanity:no_branch_cookie  (soft, see below)

Enforced by `parse` (a message failing them never gets here): SIP version (1), CSeq
method equals the request method (32), CSeq number a valid integer (64), Content-Length
consistent with the body (128), Expires an integer (256), R-URI/From/To parseable (1024),
first Via present and parseable (16384). The gate only sees what `parse` returned: its
`defects` are the source of truth, so messages built in code are not gate-checked.

Decisions:
- Max-Forwards is NOT required. RFC 2543 phones and some proxies omit it (three of the
  legit corpus messages do); RFC 3261 §16.6 step 3 has the proxy add `Max-Forwards: 70`,
  as Kamailio's `mf_process_maxfwd_header` does. Max-Forwards 0 is the proxy's 483.
- A top Via without an RFC 3261 branch (none, or no `z9hG4bK` cookie) is legal RFC 2543
  and the transaction layer matches it the old way, so it is not malformed. It is,
  however, what Nmap's probe and hand-made tools send and what no current phone does.
  It returns the *soft* reason `sanity:no_branch_cookie` (listed in `SOFT_REASONS`) and
  only after every hard check passed: the caller weighs it by source (accept from trusted
  peers and registered flows; suspicious from strangers).
- A branch that is exactly `z9hG4bK` has a cookie but no identifier: every such request
  would share one transaction key. No real stack emits it; RFC 4475 §3.2.1 allows 400.
- A body without a Content-Type is not checked: Kamailio does not, and the proxy relays
  bodies opaquely.
"""

from __future__ import annotations

from ..sip.message import Request, Response

TOO_LARGE = "sanity:too_large"
RURI_TOO_LONG = "sanity:ruri_too_long"
RURI_SCHEME = "sanity:ruri_scheme"
EMPTY_BRANCH = "sanity:empty_branch"
NO_BRANCH_COOKIE = "sanity:no_branch_cookie"

# Reasons that do not make a message malformed; the caller decides by source.
SOFT_REASONS = frozenset({NO_BRANCH_COOKIE})

# RFC 3261 §8.1.1: every request carries these; responses copy them (§8.2.6.2).
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
# Headers that may appear once; `parse` records a repeat as `multiple:<name>`.
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-type", "expires")


def sanity_check(
    msg: Request | Response, *, max_size: int, max_ruri: int = 512, size: int
) -> str | None:
    """None when `msg` may go on; else a short machine-readable reason (`sanity:<what>`).

    `size` is the length of the datagram or stream frame as received. A reason in
    `SOFT_REASONS` means "legal but unusual"; every other reason means refuse.
    """
    if size > max_size:
        return TOO_LARGE
    # The URI is in the start line, so a message no longer than the cap cannot exceed it.
    if isinstance(msg, Request) and size > max_ruri and len(str(msg.uri)) > max_ruri:
        return RURI_TOO_LONG

    defects = msg.defects
    if not defects:  # the common case: nothing else to look at
        return None
    if "uri:scheme" in defects:
        return RURI_SCHEME
    for name in _REQUIRED:
        if "missing:" + name in defects:
            return "sanity:missing:" + name
    for name in _SINGLE:
        if "multiple:" + name in defects:
            return "sanity:duplicate:" + name
    if "branch:empty" in defects:
        return EMPTY_BRANCH
    if "branch:missing" in defects or "branch:rfc2543" in defects:
        return NO_BRANCH_COOKIE
    return None  # `missing:max-forwards`, see the module docstring
