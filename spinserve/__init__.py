"""spinserve: LLM serving with heterogeneous speculative drafters.

The package is layered; each subpackage may import only those below it:

    types <- config <- ops <- models <- loading
                               models <- runtime <- spec <- engine <- server <- cli
             config <- selection <- engine

``tests/test_architecture.py`` walks the imports and enforces this order.
"""

__version__ = "0.1.0"
