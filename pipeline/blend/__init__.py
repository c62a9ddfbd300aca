"""Blending: combine finished experiments' OOF and test predictions (reads only their prediction files).

:mod:`pipeline.blend.methods`
    the blend methods (registry and math, on arrays).
:mod:`pipeline.blend.predictions`
    an experiment's prediction files: loading and the checks that make a blend honest.
:mod:`pipeline.blend.stage`
    choosing the experiments, blending them, writing ``output/blend/``.
"""
