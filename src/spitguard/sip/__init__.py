"""Sans-I/O SIP: bytes and times in, objects and events out. No sockets, clocks or DB."""

from .errors import SipParseError
from .headers import (
    STAR,
    ContactStar,
    CSeq,
    Event,
    MediaType,
    NameAddr,
    Via,
    parse_name_addr,
    parse_via,
)
from .message import (
    DEFAULT_LIMITS,
    Limits,
    Message,
    Request,
    Response,
    make_response,
    parse,
)
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "STAR",
    "AbsoluteUri",
    "CSeq",
    "ContactStar",
    "Event",
    "Limits",
    "MediaType",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "TelUri",
    "Uri",
    "Via",
    "make_response",
    "parse",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
