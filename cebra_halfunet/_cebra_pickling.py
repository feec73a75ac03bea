"""Make a fitted ``cebra.CEBRA`` picklable, so that ``joblib.dump`` of
``make_pipeline(cebra.CEBRA(...), HalfUNetRegressor(...))`` works.

Pickle stores a class by its module and name. In cebra 0.6, two model classes share the name
``cebra.models.model.Offset10Model`` (``"offset10-model"`` and ``"offset10-model-mse-tanh"``),
and the module attribute is the second one, so a fitted ``"offset10-model"`` (the
architecture of CEBRA's examples) cannot be pickled. For every class in CEBRA's model
registry that pickle cannot find by name, a reducer is registered with :mod:`copyreg` that
stores the registry name and the module's state instead; loading looks the class up in the
registry again and restores the state (its parameters, buffers and attributes, so an
optimizer pickled beside it still points at the same parameters).

The rule, so that importing ``cebra_halfunet`` never imports cebra (which costs seconds):
the reducers are registered when ``cebra_halfunet`` is imported after cebra, and in
``HalfUNetRegressor.fit`` and ``CEBRAEmbedding.fit`` otherwise (the decoder of a Pipeline is
fitted after CEBRA, before any dump), and when a pickled model is loaded (so that a loaded
Pipeline can be dumped again). Loading needs nothing registered.
"""

from __future__ import annotations

import copyreg
import sys

_registered = False


def _model_classes() -> dict:
    """CEBRA's model registry: ``{name: class}``."""
    import cebra.models
    from cebra.registry import _Registry

    return {name: cls for name, (cls, _) in _Registry.get_instance(cebra.models).items()}


def _found_by_name(cls: type) -> bool:
    """Whether pickle finds ``cls`` under its module and qualified name."""
    found = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def _empty_model(name: str):
    """An instance of CEBRA's model class ``name`` without state (pickle restores it). Loading
    registers the reducers too, so that what was loaded can be saved again, whatever the
    order of the imports."""
    register_cebra_pickling()
    cls = _model_classes()[name]
    return cls.__new__(cls)


def register_cebra_pickling() -> None:
    """Register the reducers if cebra is imported (once; does nothing otherwise)."""
    global _registered
    if _registered or sys.modules.get("cebra") is None:  # None: an import of cebra was blocked
        return
    for name, cls in _model_classes().items():
        if not _found_by_name(cls):
            copyreg.pickle(cls, lambda model, name=name: (_empty_model, (name,), model.__dict__))
    _registered = True
