"""The floor for held requests: the same HTTP stack (uvicorn, FastAPI) holding a request on a
timer and doing nothing else. ``GET /hold?until=T`` answers at the wall-clock time ``T``."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/hold")
async def hold(until: float) -> dict[str, float]:
    await asyncio.sleep(max(0.0, until - time.time()))
    return {"ended": time.time()}
