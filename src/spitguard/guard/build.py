"""Build a `Guard` from the settings and the edge's live state."""

from __future__ import annotations

from ..config import GroupBudgetSettings, Settings
from ..proxy.directory import Directory
from ..proxy.location import Location
from ..transport.flow import Flow
from .bans import BanList, BanPolicy
from .core import BanHook, Guard, GuardPolicy, TrustedLookup
from .enumeration import EnumerationDetector, EnumerationPolicy
from .events import EventAggregator
from .fingerprints import Fingerprints
from .ratelimit import Budget, GroupBudgets, RateLimiter


def _budgets(g: GroupBudgetSettings) -> GroupBudgets:
    return GroupBudgets(
        Budget(g.registrations.limit, g.registrations.window),
        Budget(g.keepalives.limit, g.keepalives.window),
        Budget(g.other.limit, g.other.window),
    )


def guard_policy(settings: Settings) -> GuardPolicy:
    g = settings.guard
    return GuardPolicy(
        invite_policy=g.invite_policy,
        max_message_size=g.max_message_size,
        max_ruri_length=g.max_ruri_length,
        reject_code=g.reject_code,
        reject_reasons=frozenset(g.reject_reasons),
    )


def build_guard(
    settings: Settings,
    *,
    trusted: TrustedLookup,
    location: Location,
    directory: Directory,
    on_ban: BanHook | None = None,
    fingerprints: Fingerprints | None = None,
) -> Guard:
    g = settings.guard

    def registered_flow(flow: Flow) -> bool:
        return location.has_flow_from(flow.transport, flow.remote_host, flow.remote_port)

    return Guard(
        trusted=trusted,
        registered_flow=registered_flow,
        registered_host=location.has_source_host,
        local_domain=directory.is_local_domain,
        fingerprints=fingerprints or Fingerprints.load(),
        policy=guard_policy(settings),
        rates=RateLimiter({name: _budgets(b) for name, b in g.rates.items()}),
        bans=BanList(BanPolicy(g.ban_first, g.ban_factor, g.ban_max, g.ban_memory)),
        enumeration=EnumerationDetector(
            EnumerationPolicy(
                g.enum_distinct_users,
                g.enum_users_window,
                g.enum_auth_failures,
                g.enum_failures_window,
            )
        ),
        events=EventAggregator(max_pending=g.events_max_pending),
        on_ban=on_ban,
    )
