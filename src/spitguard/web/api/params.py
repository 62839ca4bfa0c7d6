"""Query parameters shared by the API's list endpoints: bounded, so no input reaches the
database as a number it cannot hold."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_LIMIT = 500
MAX_OFFSET = 10_000_000
MAX_ID = 2**62
# Epoch seconds from 1970 to 2200: beyond that a time filter is a mistake, not a query.
MAX_TIME = 7_258_118_400.0

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
Search = Annotated[
    str | None, Query(max_length=200, description="case-insensitive substring filter")
]
TenantName = Annotated[str | None, Query(max_length=64, description="only this tenant")]
Time = Annotated[
    float | None,
    Query(ge=0, le=MAX_TIME, allow_inf_nan=False, description="epoch seconds"),
]
