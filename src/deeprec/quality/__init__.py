"""The quality wing: the workflows that measure and improve a model, above training and
inference: evaluate's table (evaluation), the rating blend (blending), the top-k blend
(topk_blend), held-out users (strong_generalization) and the search (tuning).

Its modules are imported by name (``from deeprec.quality import blending``); this file
imports none of them.
"""
