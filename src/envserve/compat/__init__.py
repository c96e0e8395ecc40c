"""Compatibility packages put on a worker's ``sys.path`` (after the environment's own packages, so a real
installation always wins): ``mlserver`` -- MLServer's public surface for custom runtimes, on envserve's
types, for environments that do not have MLServer. Nothing here is imported by envserve itself.
"""

import os

#: The directory to append to ``sys.path`` so ``import mlserver`` finds the compatibility package.
PATH = os.path.dirname(os.path.abspath(__file__))
