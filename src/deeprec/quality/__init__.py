"""The quality wing: the classical baselines (bias baseline, item/user kNN), evaluation
metrics and protocols, the blend, and the hyperparameter search.

Its modules are imported by name (``from deeprec.quality import baseline``); this file
imports none of them, so the training wing can use the baseline without loading the rest.
"""
