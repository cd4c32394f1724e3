"""The codec core, numpy only: images cut into tiles and planes (`images`), the .kae bitstream and other
containers, the range coder with its integer tables, the context model and rate-distortion rounding.
Nothing here imports torch; the networks come in as a backend object (`runtime` or `nn`).

The names users call are here: `from kaecompress.codec import Codec, open_image`.
"""

from kaecompress.codec.images import (BACKENDS, DEVICES, Codec, DomainCheck, Layout, check_backend, domain_of,
                                      open_image, working_mode)

__all__ = ["BACKENDS", "DEVICES", "Codec", "DomainCheck", "Layout", "check_backend", "domain_of", "open_image",
           "working_mode"]
