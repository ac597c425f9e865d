"""Runs a model on a `StepBatch`: turns chunks into tensors, owns the KV cache and samplers.

The runtime never decides who runs or which blocks a request gets; the engine's scheduler
does, and tells the runtime through `spinserve.types.batch.StepBatch`. `block_manager` is the
pool's bookkeeping (which blocks are free); it imports no torch, and both the engine's
scheduler and the model drafters use it.
"""
