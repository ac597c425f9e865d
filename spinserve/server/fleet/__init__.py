"""A fleet: one OpenAI endpoint over many engine replicas, on Ray Serve.

The ingress (a Ray Serve deployment) runs the server's own FastAPI app, routes and error
shapes; its engine handle (`FleetEngine`) sends each request to a replica deployment, each
holding one `LLMEngine` with its drafters behind the server's `AsyncEngine`. A request router
keeps a conversation on the replica that served it (its KV prefix cache and its suffix
drafter remember the text) while that replica is not much busier than the least loaded one.
A Ray actor (`FleetBoard`) collects each replica's load and metrics and merges what their
selection policies learned, so a new replica starts with the fleet's prior.

This package is the only one that imports Ray; `config` and `affinity` do not, so the CLI
reads the fleet's flags without it. Nothing here decides scheduling inside an engine.
"""
