"""`GET /healthz`: can the API write events, and is the warehouse reachable?

200 when both answer, 503 when either does not. No authentication; the body holds no paths, URLs
or error messages (they may name hosts or credentials), only the error's class.
"""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from billing_pipeline import edge_store
from billing_pipeline.settings import Settings
from billing_pipeline.warehouse import get_engine

router = APIRouter(tags=["health"])


def _edge_counts(path: Path) -> dict:
    with closing(edge_store.connect(path)) as conn:
        pending = conn.execute("SELECT count(*) FROM events WHERE processed_at IS NULL").fetchone()[0]
        processed = conn.execute("SELECT count(*) FROM events WHERE processed_at IS NOT NULL").fetchone()[0]
    return {"pending": pending, "processed": processed}


def _warehouse_ping(settings: Settings) -> dict:
    with get_engine(settings).connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    return {}


async def _probe(function, argument, timeout: float) -> dict:
    try:
        # The timeout bounds the answer; a connect that hangs finishes in its worker thread later.
        details = await asyncio.wait_for(run_in_threadpool(function, argument), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        return {"status": "down", "error": f"no answer within {timeout:g} s"}
    except Exception as exc:  # noqa: BLE001 - any failure means down
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "ok", **details}


@router.get("/healthz", summary="Edge store and warehouse health (503 when either is down)")
async def healthz(request: Request) -> JSONResponse:
    state = request.app.state
    timeout = state.api_config.healthz_timeout_seconds
    edge, warehouse = await asyncio.gather(
        _probe(_edge_counts, state.settings.edge_path, timeout),
        _probe(_warehouse_ping, state.settings, timeout),
    )
    ok = edge["status"] == warehouse["status"] == "ok"
    return JSONResponse(
        {"status": "ok" if ok else "down", "edge_store": edge, "warehouse": warehouse},
        status_code=200 if ok else 503,
    )
