"""Research tools beside the product: code that studies spinserve, imports it, and is never
imported by it (tests/test_architecture.py checks). Nothing here runs in the server."""
