"""The inference wing: predictions from a trained model (predict), top-k lists and their
output (ranking, recommendation), the ONNX export and the torch-free serving of it.

Its modules are imported by name (``from deeprec.inference import predict``); this file
imports none of them, so the training wing can use ``predict`` without loading the rest.
"""
