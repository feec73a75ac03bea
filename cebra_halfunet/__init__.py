"""cebra-halfunet: reconstruct images from CEBRA embeddings."""

from .decoding import halfunet_decoding
from .embedding import CEBRAEmbedding
from .estimator import HalfUNetRegressor
from .evaluation import DecoderReport, evaluate_decoder
from .metrics import correlation_scorer, identification_scorer, psnr_scorer, ssim_scorer, window_accuracy_scorer
from .networks import ComplexLargeUNetDecoderOnly, HalfUNetDecoder, UNetDecoderOnly

__version__ = "0.1.0"

__all__ = [
    "CEBRAEmbedding",
    "ComplexLargeUNetDecoderOnly",
    "DecoderReport",
    "HalfUNetDecoder",
    "HalfUNetRegressor",
    "UNetDecoderOnly",
    "correlation_scorer",
    "evaluate_decoder",
    "halfunet_decoding",
    "identification_scorer",
    "psnr_scorer",
    "ssim_scorer",
    "window_accuracy_scorer",
    "__version__",
]
