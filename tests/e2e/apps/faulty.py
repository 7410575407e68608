"""A test application with a route that fails unexpectedly (``GET /api/fault``): a 500."""

from fastapi import FastAPI

from tarefa import Tarefa

jobs = Tarefa(workers=0)
app = FastAPI(title="tarefa e2e faulty app")
jobs.mount(app, prefix="/api")


@app.get("/api/fault")
async def fault() -> None:
    raise RuntimeError("a bug in the application")
