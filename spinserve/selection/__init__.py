"""Drafter selection: before each step, which drafter (and how many draft tokens, none
included) each decoding request uses; after verification, learn from what happened.

A policy (`policy.SelectionPolicy`) is pure bookkeeping: it sees what a server may
legitimately know about a request (its id and token counts, never its category), the load,
and per-step outcomes (drafted, accepted, seconds), and answers with `Choice`s. `spin` is
the learning policy (Thompson sampling per request over drafters, k derived, warm-started
from a shared prior, restarted on a change of text); `baselines` holds the fixed, random,
round-robin and oracle policies; `registry` builds any of them by name.
This package must not import torch, touch models or time anything itself: the engine
measures, the policy decides. It holds only what the server runs: the simulator the algorithm
was chosen with, the replay of recorded drafts and the variants they compared live in
``research/selection``, which imports this package and is never imported by it.
"""
