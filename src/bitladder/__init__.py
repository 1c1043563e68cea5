"""bitladder: take a PyTorch model down the precision ladder, fp64 to 1 bit, and measure every rung."""

from bitladder.errors import BitladderError
from bitladder.methods.quantize.api import plan, quantize
from bitladder.methods.quantize.configs import Binary, Codebook, Float, Format, Int, Ternary, config_from_dict
from bitladder.methods.quantize.methods import AWQ, GPTQ, HQQ, RTN, Act, AdaRound, Tune

from bitladder.methods.lowrank.svd import LowRank, factorize
from bitladder.methods.prune.configs import NM, Magnitude
from bitladder.methods.prune.magnitude import prune

__all__ = ["LowRank", "factorize", "Magnitude", "NM", "prune", "AWQ", "Act", "AdaRound", "BitladderError", "Binary", "Codebook", "Float", "Format", "GPTQ", "HQQ", "Int", "RTN",
           "Ternary", "Tune", "config_from_dict", "plan", "quantize", "save", "load"]
__version__ = "0.1.0"


def save(model, path, source=None, config=None, structure=None):
    """Write a model (quantised or not) as a safetensors artifact; see :mod:`bitladder.io.artifact`.
    ``structure``: :func:`bitladder.io.structure.describe` of a reshaped model against its factory's."""
    from bitladder.io.artifact import save as _save

    return _save(model, path, source=source, config=config, structure=structure)


def load(path, model=None):
    """Load an artifact written by :func:`save`; see :mod:`bitladder.io.artifact`."""
    from bitladder.io.artifact import load as _load
    from bitladder.zoo.registry import build_for_load

    return _load(path, model=model, builder=build_for_load)
