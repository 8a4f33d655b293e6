"""The scoring floor: what gives items a score for a user and how scores are graded.

The bias baseline, item/user kNN and EASE, an autoencoder's predictions (predict), and the
rating and top-k metrics. It stands below training: the Trainer fits the baseline for
residual offsets and validates through predict and metrics; the workflows in
``deeprec.quality`` and the inference wing use them too. Its modules are imported by name
(``from deeprec.scoring import baseline``); this file imports none of them.
"""
