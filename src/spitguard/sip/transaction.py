"""RFC 3261 §17 transactions (with the RFC 6026 corrections) as sans-I/O state machines.

Nothing here touches a socket or reads a clock. Every entry point takes `now` (seconds,
from whatever monotonic clock the adapter uses) and returns a list of events for the
adapter to carry out, in order:

- `Send(message)`: write it on the transaction's transport (client: to the next hop the
  adapter chose; server: to the response address of RFC 3261 §18.2.2).
- `Deliver(message)`: hand it to the transaction user (the proxy core).
- `Timeout(timer)`: Timer B, F or H fired; the TU treats it like a 408.
- `TransportError()`: echoed after `on_transport_error`, for the TU.
- `Terminated()`: the transaction is over; drop it (the table does this itself).

Timers are deadlines, not callbacks: each machine exposes `next_deadline()` and the adapter
calls `on_timer(now)` once `now >= next_deadline()`. The adapter never schedules per-timer
work; with `TransactionTable` it keeps a single wake-up for all transactions. Timers are
re-armed relative to the `now` they fire at, so a late wake-up never causes a burst of
retransmissions. Zero-length timers (D, I, J, K over reliable transports) are not armed:
the machine terminates within the same call.

The INVITE machines follow RFC 6026: a 2xx moves them to "Accepted" (Timer M client side,
Timer L server side) instead of Terminated, so that 2xx retransmissions and forked 2xx
keep reaching the proxy core and retransmitted INVITEs are absorbed rather than being
mistaken for new requests.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SipParseError
from .headers import BRANCH_COOKIE
from .message import Message, Request, Response

__all__ = [
    "DEFAULT_TIMERS",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Deliver",
    "Send",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "Terminated",
    "Timeout",
    "Timers",
    "Transaction",
    "TransactionKey",
    "TransactionTable",
    "TransportError",
    "TxEvent",
    "build_ack",
    "build_cancel",
    "cancel_target_key",
    "client_key",
    "is_reliable_transport",
    "new_client_transaction",
    "new_server_transaction",
    "server_key",
]


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17 / Table 4 timer constants, in seconds."""

    t1: float = 0.5  # RTT estimate: first retransmission interval
    t2: float = 4.0  # cap on non-INVITE request and INVITE final response retransmissions
    t4: float = 5.0  # how long a message may linger in the network (Timers I and K)
    d: float = 32.0  # Timer D over unreliable transports ("at least 32 seconds")

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0 and self.d >= 0):
            raise ValueError("timers need t1 > 0, t2 >= t1, t4 > 0 and d >= 0")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L and M."""
        return 64 * self.t1


DEFAULT_TIMERS = Timers()

_RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable_transport(transport: str) -> bool:
    """Whether a Via transport token names a reliable transport (no retransmissions)."""
    return transport.upper() in _RELIABLE_TRANSPORTS


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: Request | Response
    retransmit: bool = False  # a copy of something already sent (for counters and logs)


@dataclass(frozen=True, slots=True)
class Deliver:
    message: Request | Response


@dataclass(frozen=True, slots=True)
class Timeout:
    timer: str  # "B", "F" or "H"


@dataclass(frozen=True, slots=True)
class TransportError:
    pass


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


TxEvent = Send | Deliver | Timeout | TransportError | Terminated


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


# --- matching keys (RFC 3261 §17.1.3, §17.2.3) --------------------------------------------

TransactionKey = tuple[str | int | None, ...]


def _is_3261_branch(branch: str | None) -> bool:
    # A bare cookie is not unique either: treat it like an RFC 2543 branch.
    return branch is not None and branch.startswith(BRANCH_COOKIE) and branch != BRANCH_COOKIE


def client_key(message: Request | Response) -> TransactionKey:
    """Key of the client transaction a response belongs to (or a request creates):
    top Via branch plus the CSeq method (so a CANCEL's responses stay apart).
    Raises `SipParseError` when the message lacks a Via or CSeq."""
    method = message.method if isinstance(message, Request) else message.cseq.method
    return ("client", message.via.branch or "", method)


def server_key(request: Request) -> TransactionKey:
    """Key of the server transaction a request belongs to; an ACK maps to its INVITE.

    RFC 3261 branches: branch, sent-by and method. Without the magic cookie (RFC 2543
    phones) the key is built from the Request-URI, From tag, Call-ID, CSeq number and top
    Via, plus the To tag for non-INVITE requests. The To tag is left out for INVITE and ACK
    because the ACK carries the tag of our response while the INVITE usually has none.
    Raises `SipParseError` when a header the key needs is missing.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    return _server_key(request, method)


def cancel_target_key(cancel: Request) -> TransactionKey:
    """Key of the INVITE server transaction a CANCEL refers to (RFC 3261 §9.2)."""
    if cancel.method != "CANCEL":
        raise ValueError(f"not a CANCEL: {cancel.method}")
    return _server_key(cancel, "INVITE")


def _server_key(request: Request, method: str) -> TransactionKey:
    via = request.via
    branch = via.branch
    if _is_3261_branch(branch):
        return ("server", branch, via.host.lower(), via.port, method)
    to_tag = None if method == "INVITE" else request.to.tag
    return (
        "server-2543",
        str(request.uri),
        to_tag,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        # Via parts rather than the whole value: a received/rport added on the way in
        # must not change the key.
        via.transport,
        via.host.lower(),
        via.port,
        branch,
        method,
    )


# --- building ACK and CANCEL ------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        raise SipParseError("missing_header", name)
    return value


def _top_via_text(request: Request) -> str:
    line = _header(request, "via")
    # Keep the top Via byte-exact when it has a line of its own; split a joined line.
    return line if "," not in line else str(request.vias[0])


def _copied_headers(request: Request, method: str, to: str) -> list[tuple[str, str]]:
    fields = [("Via", _top_via_text(request))]
    fields.extend(("Route", r) for r in request.get_all("route"))
    fields.append(("Max-Forwards", "70"))
    fields.append(("From", _header(request, "from")))
    fields.append(("To", to))
    fields.append(("Call-ID", request.call_id))
    fields.append(("CSeq", f"{request.cseq.number} {method}"))
    return fields


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same Request-URI,
    Call-ID, From and CSeq number, To from the response, the INVITE's top Via only, its
    Route set, no body."""
    return Request("ACK", invite.uri, _copied_headers(invite, "ACK", _header(response, "to")))


def build_cancel(invite: Request) -> Request:
    """A CANCEL for a pending INVITE (RFC 3261 §9.1). Send it on a new client transaction
    (its key differs from the INVITE's by method) once the INVITE got a provisional."""
    if invite.method != "INVITE":
        raise ValueError(f"only INVITE can be cancelled here, not {invite.method}")
    return Request("CANCEL", invite.uri, _copied_headers(invite, "CANCEL", _header(invite, "to")))


# --- machines ---------------------------------------------------------------------------


class Transaction:
    """What the four machines share: state, named timer deadlines, termination."""

    __slots__ = ("_deadlines", "_started", "key", "reliable", "request", "state", "timers")

    key: TransactionKey

    def __init__(self, request: Request, state: State, reliable: bool, timers: Timers) -> None:
        self.request = request
        self.state = state
        self.reliable = reliable
        self.timers = timers
        self._deadlines: dict[str, float] = {}
        self._started = False

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def pending_timers(self) -> dict[str, float]:
        """Armed timers by RFC letter -> deadline (a copy; for tests and debugging)."""
        return dict(self._deadlines)

    def next_deadline(self) -> float | None:
        """When `on_timer` must next be called; None when no timer is armed."""
        return min(self._deadlines.values()) if self._deadlines else None

    def on_timer(self, now: float) -> list[TxEvent]:
        """Fire every timer due at `now`, earliest first."""
        out: list[TxEvent] = []
        deadlines = self._deadlines
        while deadlines and self.state is not State.TERMINATED:
            name = min(deadlines, key=deadlines.__getitem__)
            if deadlines[name] > now:
                break
            del deadlines[name]
            self._fire(name, now, out)
        return out

    def on_transport_error(self, now: float) -> list[TxEvent]:
        """The transport failed to send this transaction's last message."""
        if self.terminated:
            return []
        out: list[TxEvent] = [TransportError()]
        self._terminate(out)
        return out

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("transaction already started")
        self._started = True

    def _fire(self, name: str, now: float, out: list[TxEvent]) -> None:
        raise NotImplementedError

    def _arm(self, name: str, at: float) -> None:
        self._deadlines[name] = at

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def _linger(self, name: str, duration: float, now: float, out: list[TxEvent]) -> None:
        """Arm a wait-for-stragglers timer; a zero wait (reliable transport) ends it now."""
        if duration <= 0:
            self._terminate(out)
        else:
            self._arm(name, now + duration)

    def _terminate(self, out: list[TxEvent]) -> None:
        self.state = State.TERMINATED
        self._deadlines.clear()
        out.append(Terminated())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value}>"


class ClientTransaction(Transaction):
    __slots__ = ("_interval",)

    def __init__(self, request: Request, state: State, reliable: bool, timers: Timers) -> None:
        super().__init__(request, state, reliable, timers)
        self.key = client_key(request)
        self._interval = timers.t1

    def start(self, now: float) -> list[TxEvent]:
        """Send the request and arm the retransmission and timeout timers."""
        raise NotImplementedError

    def on_response(self, response: Response, now: float) -> list[TxEvent]:
        """A response matched to this transaction by `client_key`."""
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """RFC 3261 Figure 5, with the RFC 6026 Accepted state."""

    __slots__ = ("_ack",)

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method != "INVITE":
            raise ValueError(f"not an INVITE: {request.method}")
        super().__init__(request, State.CALLING, reliable, timers)
        self._ack: Request | None = None

    @property
    def ack(self) -> Request | None:
        """The ACK this transaction generated for a non-2xx final response, if any."""
        return self._ack

    def start(self, now: float) -> list[TxEvent]:
        self._begin()
        if not self.reliable:
            self._arm("A", now + self._interval)
        self._arm("B", now + self.timers.timeout)
        return [Send(self.request)]

    def on_response(self, response: Response, now: float) -> list[TxEvent]:
        state = self.state
        status = response.status
        if state is State.CALLING or state is State.PROCEEDING:
            # Any response proves the INVITE arrived: stop retransmitting, and Timer B
            # only guards Calling (the proxy's Timer C covers a long Proceeding).
            self._cancel("A", "B")
            if status < 200:
                self.state = State.PROCEEDING
                return [Deliver(response)]
            if status < 300:
                self.state = State.ACCEPTED
                self._arm("M", now + self.timers.timeout)
                return [Deliver(response)]
            self.state = State.COMPLETED
            self._ack = ack = build_ack(self.request, response)
            out: list[TxEvent] = [Deliver(response), Send(ack)]
            self._linger("D", 0.0 if self.reliable else self.timers.d, now, out)
            return out
        if state is State.COMPLETED and status >= 300 and self._ack is not None:
            # The final response was retransmitted: our ACK was lost. Same ACK again.
            return [Send(self._ack, retransmit=True)]
        if state is State.ACCEPTED and 200 <= status < 300:
            # 2xx retransmissions and 2xx from other forks: the proxy forwards them all.
            return [Deliver(response)]
        return []

    def _fire(self, name: str, now: float, out: list[TxEvent]) -> None:
        if name == "A":
            # No cap: Timer B (64*T1) ends the doubling.
            self._interval *= 2
            self._arm("A", now + self._interval)
            out.append(Send(self.request, retransmit=True))
        elif name == "B":
            out.append(Timeout("B"))
            self._terminate(out)
        else:  # D, M
            self._terminate(out)


class ClientNonInviteTransaction(ClientTransaction):
    """RFC 3261 Figure 6."""

    __slots__ = ()

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"{request.method} does not use a non-INVITE transaction")
        super().__init__(request, State.TRYING, reliable, timers)

    def start(self, now: float) -> list[TxEvent]:
        self._begin()
        if not self.reliable:
            self._arm("E", now + self._interval)
        self._arm("F", now + self.timers.timeout)
        return [Send(self.request)]

    def on_response(self, response: Response, now: float) -> list[TxEvent]:
        if self.state is not State.TRYING and self.state is not State.PROCEEDING:
            return []  # Completed absorbs retransmitted finals
        if response.status < 200:
            # Timer E keeps running; from its next firing it uses T2 (RFC 3261 §17.1.2.2).
            self.state = State.PROCEEDING
            return [Deliver(response)]
        self.state = State.COMPLETED
        self._cancel("E", "F")
        out: list[TxEvent] = [Deliver(response)]
        self._linger("K", 0.0 if self.reliable else self.timers.t4, now, out)
        return out

    def _fire(self, name: str, now: float, out: list[TxEvent]) -> None:
        if name == "E":
            t2 = self.timers.t2
            self._interval = t2 if self.state is State.PROCEEDING else min(2 * self._interval, t2)
            self._arm("E", now + self._interval)
            out.append(Send(self.request, retransmit=True))
        elif name == "F":
            out.append(Timeout("F"))
            self._terminate(out)
        else:  # K
            self._terminate(out)


class ServerTransaction(Transaction):
    __slots__ = ("_last",)

    def __init__(self, request: Request, state: State, reliable: bool, timers: Timers) -> None:
        super().__init__(request, state, reliable, timers)
        self.key = server_key(request)
        self._last: Response | None = None

    @property
    def last_response(self) -> Response | None:
        return self._last

    def start(self, now: float) -> list[TxEvent]:
        """Pass the request that created the transaction to the TU."""
        self._begin()
        return [Deliver(self.request)]

    def on_request(self, request: Request, now: float) -> list[TxEvent]:
        """A request matched to this transaction by `server_key`: a retransmission, or
        (INVITE) the ACK."""
        raise NotImplementedError

    def send_response(self, response: Response, now: float) -> list[TxEvent]:
        """The TU responds. Responses the state does not allow are discarded (RFC 3261)."""
        raise NotImplementedError


class ServerInviteTransaction(ServerTransaction):
    """RFC 3261 Figure 7, with the RFC 6026 Accepted state. No automatic 100 Trying:
    the proxy sends it itself."""

    __slots__ = ("_interval",)

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method != "INVITE":
            raise ValueError(f"not an INVITE: {request.method}")
        super().__init__(request, State.PROCEEDING, reliable, timers)
        self._interval = timers.t1

    def send_response(self, response: Response, now: float) -> list[TxEvent]:
        state = self.state
        status = response.status
        if state is State.PROCEEDING:
            self._last = response
            if status >= 300:
                self.state = State.COMPLETED
                if not self.reliable:
                    self._arm("G", now + self._interval)
                self._arm("H", now + self.timers.timeout)
            elif status >= 200:
                self.state = State.ACCEPTED
                self._arm("L", now + self.timers.timeout)
            return [Send(response)]
        if state is State.ACCEPTED and 200 <= status < 300:
            # The proxy forwards downstream 2xx retransmissions (and forked 2xx) here.
            return [Send(response)]
        return []

    def on_request(self, request: Request, now: float) -> list[TxEvent]:
        state = self.state
        last = self._last
        if request.method == "INVITE":
            if state is State.PROCEEDING or state is State.COMPLETED:
                # Proceeding: the last provisional (if any); Completed: the final.
                return [] if last is None else [Send(last, retransmit=True)]
            return []  # Confirmed and Accepted absorb it
        if request.method != "ACK":
            return []
        if state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._cancel("G", "H")
            out: list[TxEvent] = []
            self._linger("I", 0.0 if self.reliable else self.timers.t4, now, out)
            return out
        if state is State.ACCEPTED:
            # ACKs for 2xx belong to the dialog, not to us: the proxy forwards them.
            return [Deliver(request)]
        return []

    def on_transport_error(self, now: float) -> list[TxEvent]:
        if self.state is State.ACCEPTED:
            # RFC 6026: inform the TU but stay, so INVITE retransmissions are still absorbed.
            return [TransportError()]
        return super().on_transport_error(now)

    def _fire(self, name: str, now: float, out: list[TxEvent]) -> None:
        if name == "G":
            self._interval = min(2 * self._interval, self.timers.t2)
            self._arm("G", now + self._interval)
            if self._last is not None:
                out.append(Send(self._last, retransmit=True))
        elif name == "H":
            out.append(Timeout("H"))  # the ACK never came
            self._terminate(out)
        else:  # I, L
            self._terminate(out)


class ServerNonInviteTransaction(ServerTransaction):
    """RFC 3261 Figure 8."""

    __slots__ = ()

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"{request.method} does not use a non-INVITE transaction")
        super().__init__(request, State.TRYING, reliable, timers)

    def send_response(self, response: Response, now: float) -> list[TxEvent]:
        if self.state is not State.TRYING and self.state is not State.PROCEEDING:
            return []
        self._last = response
        out: list[TxEvent] = [Send(response)]
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._linger("J", 0.0 if self.reliable else self.timers.timeout, now, out)
        return out

    def on_request(self, request: Request, now: float) -> list[TxEvent]:
        # Trying has nothing to repeat yet; Proceeding and Completed repeat the last response.
        if self._last is None or self.terminated:
            return []
        return [Send(self._last, retransmit=True)]

    def _fire(self, name: str, now: float, out: list[TxEvent]) -> None:
        self._terminate(out)  # J


def new_client_transaction(
    request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
) -> ClientInviteTransaction | ClientNonInviteTransaction:
    if request.method == "INVITE":
        return ClientInviteTransaction(request, reliable=reliable, timers=timers)
    return ClientNonInviteTransaction(request, reliable=reliable, timers=timers)


def new_server_transaction(
    request: Request, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
) -> ServerInviteTransaction | ServerNonInviteTransaction:
    if request.method == "INVITE":
        return ServerInviteTransaction(request, reliable=reliable, timers=timers)
    return ServerNonInviteTransaction(request, reliable=reliable, timers=timers)


# --- the table --------------------------------------------------------------------------


class TransactionTable:
    """Live transactions by key, with one earliest deadline for the adapter to sleep on.

    Bounded: when the server (or client) share is full, `add` refuses the transaction and
    counts it; nothing live is ever evicted, because dropping a transaction mid-flight
    would turn its retransmissions into new requests, which is what a flood wants. The
    adapter answers a refused request with a stateless 503.

    After feeding any input to a transaction the adapter calls `update(tx)`, which
    re-reads its deadline and drops it once terminated. Deadlines live in a heap with lazy
    deletion: superseded entries stay until they reach the top (or a rebuild) and are
    skipped there, so updates cost O(log n) and no entry is ever searched for.
    """

    __slots__ = (
        "_clients",
        "_heap",
        "_scheduled",
        "_seq",
        "_servers",
        "_txs",
        "max_client",
        "max_server",
        "refused_client",
        "refused_server",
    )

    def __init__(self, max_server: int = 10_000, max_client: int = 10_000) -> None:
        if max_server < 1 or max_client < 1:
            raise ValueError("table bounds must be positive")
        self.max_server = max_server
        self.max_client = max_client
        self.refused_server = 0
        self.refused_client = 0
        self._txs: dict[TransactionKey, Transaction] = {}
        self._servers = 0
        self._clients = 0
        self._scheduled: dict[TransactionKey, float] = {}
        self._heap: list[tuple[float, int, TransactionKey, Transaction]] = []
        self._seq = 0

    # --- dict-like access ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, key: object) -> bool:
        return key in self._txs

    def __getitem__(self, key: TransactionKey) -> Transaction:
        return self._txs[key]

    def __iter__(self) -> Iterator[TransactionKey]:
        return iter(self._txs)

    def get(self, key: TransactionKey) -> Transaction | None:
        return self._txs.get(key)

    @property
    def server_count(self) -> int:
        return self._servers

    @property
    def client_count(self) -> int:
        return self._clients

    def server_full(self) -> bool:
        return self._servers >= self.max_server

    def client_full(self) -> bool:
        return self._clients >= self.max_client

    def match_request(self, request: Request) -> ServerTransaction | None:
        """The server transaction a request (retransmission or ACK) belongs to."""
        tx = self._txs.get(server_key(request))
        return tx if isinstance(tx, ServerTransaction) else None

    def match_response(self, response: Response) -> ClientTransaction | None:
        tx = self._txs.get(client_key(response))
        return tx if isinstance(tx, ClientTransaction) else None

    def match_cancel(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL refers to."""
        tx = self._txs.get(cancel_target_key(cancel))
        return tx if isinstance(tx, ServerInviteTransaction) else None

    # --- membership ---------------------------------------------------------------------
    def add(self, tx: Transaction) -> bool:
        """Insert a new transaction; False (and counted) when its share is full."""
        key = tx.key
        if key in self._txs:
            raise ValueError(f"duplicate transaction key {key!r}")
        if isinstance(tx, ServerTransaction):
            if self._servers >= self.max_server:
                self.refused_server += 1
                return False
            self._servers += 1
        else:
            if self._clients >= self.max_client:
                self.refused_client += 1
                return False
            self._clients += 1
        self._txs[key] = tx
        self.update(tx)
        return True

    def remove(self, key: TransactionKey) -> Transaction | None:
        tx = self._txs.pop(key, None)
        if tx is None:
            return None
        if isinstance(tx, ServerTransaction):
            self._servers -= 1
        else:
            self._clients -= 1
        self._scheduled.pop(key, None)  # its heap entries go stale
        return tx

    def update(self, tx: Transaction) -> None:
        """Re-read `tx`'s deadline after it consumed input; forget it once terminated."""
        key = tx.key
        if self._txs.get(key) is not tx:
            return
        if tx.terminated:
            self.remove(key)
            return
        deadline = tx.next_deadline()
        if deadline is None:
            self._scheduled.pop(key, None)
            return
        if self._scheduled.get(key) == deadline:
            return
        self._scheduled[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key, tx))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._rebuild()

    # --- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest deadline over all transactions: the adapter's one timer."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def on_timer(self, now: float) -> list[tuple[Transaction, list[TxEvent]]]:
        """Fire every transaction whose deadline is due; terminated ones are removed."""
        out: list[tuple[Transaction, list[TxEvent]]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            tx = entry[3]
            del self._scheduled[tx.key]
            events = tx.on_timer(now)
            self.update(tx)
            if events:
                out.append((tx, events))
        return out

    def _live(self, entry: tuple[float, int, TransactionKey, Transaction]) -> bool:
        deadline, _, key, tx = entry
        return self._txs.get(key) is tx and self._scheduled.get(key) == deadline

    def _rebuild(self) -> None:
        heap: list[tuple[float, int, TransactionKey, Transaction]] = []
        for key, deadline in self._scheduled.items():
            self._seq += 1
            heap.append((deadline, self._seq, key, self._txs[key]))
        heapq.heapify(heap)
        self._heap = heap
