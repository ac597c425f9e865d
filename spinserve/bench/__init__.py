"""`spinserve bench`: the user's benchmark of any OpenAI-compatible endpoint.

A client, nothing more: it sends prompts from a dataset (Spec-Bench, HumanEval, MT-Bench,
ShareGPT or a JSONL file) to one or several endpoints over HTTP with the ``openai`` client,
streams every answer to time it (TTFT, inter-token latency, end to end), and reports tables,
JSON and plots; ``bench quality`` scores HumanEval answers by running them in a sandboxed
subprocess. It must not import the engine, the server, the model code or torch -- the same
numbers must be measurable against spinserve, llama.cpp's server or anything else that speaks
the protocol -- and it may import only `spinserve.types` and `spinserve.config`.
"""
