"""Stateless tensor functions: norms, rotary embeddings, ragged attention, sampling.

Each op is a pure function of its tensor arguments with shapes written down. Ops know nothing
of requests, caches or models; they must not import anything above ``config``.
"""
