"""Speculative decoding: drafters that propose tokens and the verification that keeps output
exactly the target's.

A drafter proposes up to k draft tokens per request in one batched call; the target checks
them all in one forward; `verify` turns target logits into *accepted* draft tokens plus one
*recovered* token (sampled from the adjusted distribution at the first rejection) or one
*bonus* token (when every draft passes). Drafters may hold models and state; verification is
pure. This layer must not schedule: the engine decides who speculates and how much.
"""
