"""Our own decoder in PyTorch and the KV cache it reads and writes.

The model's whole contract is ``forward(input_ids, positions, attention metadata, kv cache,
logits_indices) -> logits`` over a flat batch of tokens from many requests. Models do not
know about requests, scheduling or files; loading fills their parameters from outside.
"""
