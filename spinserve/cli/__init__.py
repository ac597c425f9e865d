"""The ``spinserve`` command: model zoo management and generation from the terminal.

The CLI parses flags into config dataclasses, calls the engine, and prints; it holds no logic
of its own. Errors meant for users (`SpinserveError`, `ValueError` from config validation)
are printed as one line, never as a traceback.
"""
