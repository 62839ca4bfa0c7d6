"""Security events (blocked traffic), their traces and aggregates, and bans: operators
only, since blocked traffic and sources belong to no single tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, Field

from ...store.repos import MAX_BAN_REASON, MAX_SOURCE
from ..auth import OperatorAuth, ctx_of
from ..errors import not_found
from .params import MAX_ID, MAX_TIME, Limit, Offset, Time
from .schemas import (
    AggregatesOut,
    BanList,
    BanOut,
    CountOut,
    EventOut,
    EventPage,
    HourOut,
    TraceOut,
    ban_out,
    event_out,
    trace_text,
)

router = APIRouter(tags=["security"])
DAY = 86400.0
MAX_BAN = 365 * DAY
EventId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("/events", response_model=EventPage)
async def list_events(
    request: Request,
    me: OperatorAuth,
    since: Time = None,
    until: Time = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    source: Annotated[str | None, Query(max_length=MAX_SOURCE)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> EventPage:
    rows = await ctx_of(request).store.events.query(
        since=since, until=until, reason=reason, source=source, limit=limit + 1, offset=offset
    )
    return EventPage(
        items=[event_out(e) for e in rows[:limit]],
        limit=limit,
        offset=offset,
        more=len(rows) > limit,
    )


@router.get("/events/aggregates", response_model=AggregatesOut)
async def event_aggregates(
    request: Request,
    me: OperatorAuth,
    since: Annotated[
        float | None,
        Query(ge=0, le=MAX_TIME, allow_inf_nan=False, description="default: 24 hours ago"),
    ] = None,
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> AggregatesOut:
    ctx = ctx_of(request)
    start = ctx.wall_clock() - DAY if since is None else since
    events = ctx.store.events
    return AggregatesOut(
        since=start,
        by_hour=[HourOut(hour=h, requests=n) for h, n in await events.by_hour(start)],
        by_reason=[CountOut(key=k, requests=n) for k, n in await events.by_reason(start)],
        by_source=[CountOut(key=k, requests=n) for k, n in await events.by_source(start, top)],
    )


@router.get("/events/{event_id}", response_model=EventOut)
async def get_event(request: Request, me: OperatorAuth, event_id: EventId) -> EventOut:
    event = await ctx_of(request).store.events.get(event_id)
    if event is None:
        raise not_found("event")
    return event_out(event)


@router.get("/events/{event_id}/trace", response_model=TraceOut)
async def get_trace(request: Request, me: OperatorAuth, event_id: EventId) -> TraceOut:
    event = await ctx_of(request).store.events.get(event_id)
    if event is None or not event.sample:
        raise not_found("trace")
    return TraceOut(event_id=event.id, trace=trace_text(event))


class BanIn(BaseModel):
    source: str = Field(max_length=MAX_SOURCE, description="one IPv4 or IPv6 address")
    duration: float = Field(default=DAY, gt=0, le=MAX_BAN, description="seconds")
    reason: str = Field(default="manual", max_length=MAX_BAN_REASON)


@router.get("/bans", response_model=BanList)
async def list_bans(request: Request, me: OperatorAuth) -> BanList:
    ctx = ctx_of(request)
    bans = await ctx.store.bans.list(ctx.wall_clock())
    return BanList(items=[ban_out(b) for b in bans])


@router.post("/bans", response_model=BanOut, status_code=201)
async def add_ban(request: Request, me: OperatorAuth, ban: Annotated[BanIn, Body()]) -> BanOut:
    info = await ctx_of(request).store.bans.add_manual(
        ban.source, duration=ban.duration, reason=ban.reason
    )
    return ban_out(info)


@router.delete("/bans/{source}", status_code=204, response_class=Response)
async def remove_ban(
    request: Request, me: OperatorAuth, source: Annotated[str, Path(max_length=MAX_SOURCE)]
) -> Response:
    if not await ctx_of(request).store.bans.remove_manual(source):
        raise not_found("ban")
    return Response(status_code=204)
