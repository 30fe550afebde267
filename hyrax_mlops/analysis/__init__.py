"""Reducers and analyses of embeddings."""
