"""jaxslm: small language models that reason about math, in JAX/Flax.

  import jaxslm
  model_cfg, params, tok = jaxslm.load("runs/default")
  print(jaxslm.sample("runs/default", "Question: ...\nAnswer:", max_new_tokens=64))
"""

from jaxslm.api import sample
from jaxslm.loading import Loaded, load
from jaxslm.models import Decoder, ModelConfig
from jaxslm.sampling import Generation, generate

__version__ = "0.1.0"
__all__ = ["Decoder", "Generation", "Loaded", "ModelConfig", "generate", "load", "sample",
           "__version__"]
