"""Drafter selection: before each step, which drafter (and how many draft tokens, none
included) each decoding request uses; after verification, learn from what happened.

A policy (`policy.SelectionPolicy`) is pure bookkeeping: it sees what a server may
legitimately know about a request (its id and token counts, never its category), the load,
and per-step outcomes (drafted, accepted, seconds), and answers with `Choice`s. `spin` is
the learning policy (a discounted Thompson-sampling bandit per request over drafter x draft
length, warm-started from a shared prior); `baselines` holds the fixed, random, round-robin
and oracle policies; `simulate` is the pure-Python simulator the algorithm was chosen with.
This package must not import torch, touch models or time anything itself: the engine
measures, the policy decides.
"""
