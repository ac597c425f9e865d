"""Getting models and tokenizers from files: GGUF, Hugging Face folders and the model zoo.

Loading reads files and fills a `spinserve.models.Decoder`; it converts formats (GGUF ->
Hugging Face layout) and fetches zoo models from their registry packages into the cache.
It must not run models or know about requests.
"""
