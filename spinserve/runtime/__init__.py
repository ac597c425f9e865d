"""Runs a model on a `StepBatch`: turns chunks into tensors, owns the KV cache and samplers.

The runtime never decides who runs or which blocks a request gets; the engine's scheduler
does, and tells the runtime through `spinserve.types.batch.StepBatch`.
"""
