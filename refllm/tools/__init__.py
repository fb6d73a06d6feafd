"""Whole-model tools: what writes model files (quantize_model.py: a model quantized as
llama-quantize does; synth.py: random-weight test models) and what judges a model's output
(compare.py: logits compared as llama-perplexity does)."""
