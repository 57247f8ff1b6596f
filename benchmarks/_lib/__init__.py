"""Helpers the benchmark scripts share: one clock (``timing``), quiet trainers and smoke-mode flags (``trainers``),
synthetic Llama pairs built with the library's constructors (``llm``), synthetic tokens (``synthetic``), result rows
and process-group teardown (``results``), the byte-level GPT experiments (``pydoc_gpt``) and the fused-loss inputs
(``fused``)."""
