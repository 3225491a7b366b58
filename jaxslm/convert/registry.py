"""The supported families, by `model_type`.

Each family module registers its `Family` in `table.FAMILIES` when imported;
this module imports them all, in the order `export` tries them when a
checkpoint does not say which family it is, and looks them up.
"""

from __future__ import annotations

# In this order (Llama-shaped first): the order `export` tries them in.
from jaxslm.convert import llama, gpt2, gpt_neox, phi, gemma3  # noqa: F401, I001 (they register)
from jaxslm.convert.table import FAMILIES, Family
from jaxslm.errors import UserError


def get_family(model_type: str | None, where: str = "config.json") -> Family:
  if model_type not in FAMILIES:
    raise UserError(f"model_type={model_type!r} in {where} is not supported; supported model "
                    f"types: {sorted(FAMILIES)}.")
  return FAMILIES[model_type]


def supported_model_types() -> list[str]:
  return sorted(FAMILIES)
