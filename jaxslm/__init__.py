"""jaxslm: small language models that reason about math, in JAX/Flax.

  import jaxslm
  model_cfg, params, tok = jaxslm.load("runs/default")
"""

from jaxslm.loading import Loaded, load
from jaxslm.models import Decoder, ModelConfig

__version__ = "0.1.0"
__all__ = ["Decoder", "Loaded", "ModelConfig", "load", "__version__"]
