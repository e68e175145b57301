"""Handwritten-digit classification: an MNIST-trained MLP served at `POST /classify-digit`.

`model` loads (or trains) the classifier, `preprocess` turns pixel arrays and real images into MNIST's
28x28 form, `train` is the `train-digits` command, `router`/`schemas` are the HTTP layer.
"""
