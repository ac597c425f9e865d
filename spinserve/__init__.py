"""spinserve: LLM serving with heterogeneous speculative drafters.

The package is layered; each subpackage may import only those below it:

    types <- config <- ops <- models <- loading
                               models <- runtime <- speculative <- engine <- server <- cli
             config <- selection <- engine                 types, config <- bench <- cli

``tests/test_architecture.py`` walks the imports and enforces this order, and that the import
graph has no cycle. ``research/`` and ``benchmarks/`` import the package, never the reverse.
"""

__version__ = "0.1.0"
