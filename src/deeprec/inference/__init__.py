"""The inference wing: a trained model loaded with its data (trained), top-k lists and
their output (ranking, recommendation), the ONNX export and the torch-free serving of it.

Its modules are imported by name (``from deeprec.inference import ranking``); this file
imports none of them.
"""
