"""The HTTP front: an OpenAI-compatible API, Prometheus metrics, admission and shutdown.

`AsyncEngine` runs the engine's step loop in one dedicated thread and hands each request's
outputs to the event loop; the FastAPI app (`app.build_app`) validates requests, streams
responses and reports metrics. Model work never runs on the event loop, and nothing here
but the engine thread touches the `LLMEngine`. This package must not hold scheduling or
sampling logic: it translates HTTP to engine requests and engine outputs to HTTP.
"""
