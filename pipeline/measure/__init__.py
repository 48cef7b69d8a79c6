"""Measuring one request: latency per stage (``timing``), FLOPs by three routes (``vision_flops``,
``llm_flops``, ``flop_count``), the stage measurement itself (``stages.measure_request``),
fidelity to the uncompressed model (``fidelity``), the encoder-only comparison
(``vision_compare``) and interleaved stage-time ratios (``time_ratios``).
"""
