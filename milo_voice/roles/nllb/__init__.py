"""NLLB translation in torch on a GPU: the model (model.py), CTranslate2's beam search (search.py)
and the call the translation role makes of CTranslate2's ``Translator`` (engine.py)."""
