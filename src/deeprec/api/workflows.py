"""The workflows the commands run, reached from the API floor: hyperparameter search
(``tuning``), the rating and top-k blends (``blending``, ``topk_blend``), the
strong-generalization protocol (``strong_generalization``), and the machine report
(``environment``). Each is a module of its own floor; this names them for the commands
(``python -m deeprec.tune``, ``blend``, ``info``) and for scripts.
"""

from __future__ import annotations

from deeprec import environment
from deeprec.quality import blending, strong_generalization, topk_blend, tuning

__all__ = ["blending", "environment", "strong_generalization", "topk_blend", "tuning"]
