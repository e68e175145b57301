"""Open Inference Protocol (KServe v2) for the digit classifier, under /v2."""
