"""genai-service: generative-AI fundamentals served over REST."""

__version__ = "0.1.0"
