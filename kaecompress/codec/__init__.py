"""The codec core, numpy only: images cut into tiles and planes (`images`), the .kae bitstream and other
containers, the range coder with its integer tables, the context model, rate-distortion rounding and
the out-of-domain check (`domain`).
Nothing here imports torch; the networks come in as a backend object (`runtime` or `nn`).

The names users call are here: `from kaecompress.codec import Codec, open_image`.
"""

from kaecompress.codec.domain import DomainCheck, domain_of
from kaecompress.codec.images import BACKENDS, DEVICES, Codec, Layout, check_backend, open_image, working_mode

__all__ = ["BACKENDS", "DEVICES", "Codec", "DomainCheck", "Layout", "check_backend", "domain_of", "open_image",
           "working_mode"]
