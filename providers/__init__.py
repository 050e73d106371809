"""Backend adapters behind one small interface (``providers.base.Provider``)."""
