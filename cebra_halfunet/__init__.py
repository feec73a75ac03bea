"""cebra-halfunet: reconstruct images from CEBRA embeddings."""

from ._cebra_pickling import register_cebra_pickling
from ._version import __version__
from .decoding import halfunet_decoding
from .embedding import CEBRAEmbedding
from .estimator import HalfUNetRegressor
from .evaluation import DecoderReport, evaluate_decoder
from .metrics import correlation_scorer, identification_scorer, psnr_scorer, ssim_scorer, window_accuracy_scorer
from .networks import ComplexLargeUNetDecoderOnly, HalfUNetDecoder, UNetDecoderOnly

register_cebra_pickling()  # a fitted cebra.CEBRA pickles (only if cebra is imported already: see the module)

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
