"""`refllm serve`: ollama's HTTP API, and its OpenAI-compatible routes, on the reference engine.

    registry.py   which file a request's model name means (never a path)
    options.py    ollama's request options: their types, and where each goes
    schemas.py    the request bodies, as typed pydantic models
    scheduler.py  the engine thread: a queue, loaded models, KV slots, keep_alive
    app.py        the routes (FastAPI), their answers and errors
    host.py       REFLLM_HOST / --host parsing, and running it all on uvicorn

Needs the `serve` extra: pip install "refllm[serve]".
"""
