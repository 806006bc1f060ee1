"""megadigits: the ATS paper's Megapixel-MNIST experiment (sec. 4.2) on real handwritten digits.

``data`` draws the canvases, ``nets`` holds the networks (registered in the package's registry
on import, so a recipe names them), ``recipe`` reads ``pipelines/megadigits.toml``, ``train``
is the one training loop, ``cost`` measures a training step, and ``run`` ties them together.
"""

from experiments.megadigits import nets  # noqa: F401  (registers the experiment's networks)
