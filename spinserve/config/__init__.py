"""Frozen, validated configuration dataclasses, one per concern.

Config is what a user or a model file states; it never changes at run time. Invalid values
raise ``ValueError`` with a message naming the field. No torch here.
"""
