"""cebra-halfunet: reconstruct images from CEBRA embeddings."""

from .networks import ComplexLargeUNetDecoderOnly, HalfUNetDecoder, UNetDecoderOnly

__version__ = "0.1.0"

__all__ = ["ComplexLargeUNetDecoderOnly", "HalfUNetDecoder", "UNetDecoderOnly", "__version__"]
