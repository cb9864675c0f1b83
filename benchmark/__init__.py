"""ood-bench: out-of-distribution robustness under spurious correlations.

MNIST digits are composited onto CIFAR-10 backgrounds so that, in training,
the background alone predicts the label. Methods are pluggy plugins; the
harness owns data, splits, training budget, evaluation, storage and tables.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ood-bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Re-exported so that a plugin file needs one import line; both modules are
# light (no torch at import time) and import nothing else from the package.
from benchmark.hookspec import hookimpl
from benchmark.method import Method, Param

__all__ = ["Method", "Param", "__version__", "hookimpl"]
