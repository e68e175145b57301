"""Handwritten-digit classification: an MNIST-trained MLP served at `POST /classify-digit`.

`model` is the classifier and its file format, `provision` picks the configured file (training it when
missing), `train` fits a model and `train_cli` is the `train-digits` command over it, `preprocess` turns
pixel arrays and real images into MNIST's 28x28 form, `decoding` turns request bodies into `jobs`, and
`router`/`schemas` are the HTTP layer.
"""
