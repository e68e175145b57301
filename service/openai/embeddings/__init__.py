"""`POST /v1/embeddings`: OpenAI's embeddings over the language model's hidden states (service/language/embeddings.py)."""
