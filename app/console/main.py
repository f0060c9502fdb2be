"""The console's web app: one page (`/`), its live figures as server-sent events (`/events`), the
same snapshot as JSON (`/snapshot`), and its static files (no CDN: it works offline)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.console.lake_probe import (
    BestSellers,
    lake_reading,
    quarantine_reading,
    stream_retention_reading,
)
from app.console.probes import (
    PostgresReader,
    airflow_reading,
    api_reading,
    drain_gaps_reading,
    kafka_reading,
    mongo_reading,
    open_event_store,
    top_users_reading,
)
from app.console.sampler import Probe, Sampler
from app.console.stream_probe import spark_reading
from app.core.airflow_api import AirflowClient
from app.core.config import Settings, get_settings

HERE = Path(__file__).parent
# Figures that need a scan or a listing are read less often than the live rates.
SLOW_SECONDS = 10.0


def lab_probes(settings: Settings) -> list[Probe]:
    """Every probe of the lab, with the clients it keeps for the console's life."""
    http = httpx.Client()
    airflow = AirflowClient(settings, http)
    store = open_event_store(settings)
    best_sellers = BestSellers(settings)
    postgres = PostgresReader(settings)
    quarantine_rows: dict[str, int] = {}
    fast = settings.console_tick_seconds
    return [
        Probe("api", "api", fast, lambda: api_reading(settings, http)),
        Probe("kafka", "kafka", fast, lambda: kafka_reading(settings)),
        Probe("drain_gaps", "kafka", SLOW_SECONDS, lambda: drain_gaps_reading(settings, store)),
        # A DAG run lasts a minute or two; each reading costs Airflow's API server two requests,
        # which at every tick made it the busiest of Airflow's components in the soak.
        Probe("airflow", "airflow", SLOW_SECONDS, lambda: airflow_reading(settings, airflow)),
        Probe("mongo", "mongo", fast, lambda: mongo_reading(store)),
        Probe("top_users", "mongo", SLOW_SECONDS, lambda: top_users_reading(store)),
        Probe("spark", "spark", fast, lambda: spark_reading(settings)),
        Probe(
            "quarantine",
            "spark",
            SLOW_SECONDS,
            lambda: quarantine_reading(settings, quarantine_rows),
        ),
        Probe("lake", "lake", SLOW_SECONDS, lambda: lake_reading(settings)),
        Probe("best_sellers", "lake", SLOW_SECONDS, best_sellers.reading),
        Probe(
            "stream_retention",
            "lake",
            SLOW_SECONDS,
            lambda: stream_retention_reading(settings),
        ),
        Probe("postgres", "postgres", SLOW_SECONDS, postgres.reading),
    ]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    sampler = Sampler(settings, lab_probes(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=sampler.run, args=(stop,), name="sampler", daemon=True)
        thread.start()
        yield
        stop.set()

    app = FastAPI(title="E-commerce event lab console", lifespan=lifespan, docs_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "console.html",
            {"hops": sampler.hops, "tick": settings.console_tick_seconds},
        )

    @app.get("/snapshot")
    def snapshot() -> dict[str, object]:
        return sampler.snapshot()

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            # The browser reconnects by itself after `retry` ms when the stream drops.
            yield f"retry: {int(settings.console_tick_seconds * 1000)}\n\n"
            while not await request.is_disconnected():
                yield f"data: {json.dumps(sampler.snapshot(), default=str)}\n\n"
                await asyncio.sleep(settings.console_tick_seconds)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    return app
