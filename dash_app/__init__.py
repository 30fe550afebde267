"""The hyrax-mlops web app: compare runs and explore latent spaces.

`create_app()` builds the Dash app; `serve()` runs it (127.0.0.1 unless told otherwise, a
token required when exposed). It reads only through MLflow run ids, never user paths.
"""

from dash_app.app import create_app
from dash_app.server import serve

__all__ = ["create_app", "serve"]
