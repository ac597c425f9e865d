"""Plain data shared by every layer: the messages the scheduler and the model runner exchange.

Nothing here imports torch or any other spinserve package; these are the words the layers
speak, not the things that act on them.
"""
