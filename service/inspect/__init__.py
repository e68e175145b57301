"""Inspection: what a language model computes on the way to its next token (logit lens, attention
weights, the tree of likeliest continuations), for either forward pass the service runs a model with."""
