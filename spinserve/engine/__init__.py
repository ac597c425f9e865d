"""The engine: requests, scheduling, KV block bookkeeping, detokenization and the step loop.

Bookkeeping modules here (`request`, `block_manager`, `scheduler`, `detokenizer`) import no
torch and are tested without a model. Only `engine.py` touches the runtime; it asks the
scheduler who runs, hands the batch to the runner, and feeds results back.
"""
