"""kaecompress: image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold layers.

Importing this package is cheap: torch is imported by the submodules that need it.
"""

from kaecompress.errors import KaecError

__version__ = "0.1.0"
__all__ = ["KaecError", "__version__"]
