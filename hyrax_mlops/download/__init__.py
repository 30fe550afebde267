"""Getting cutouts from survey services: a shared engine (retries, validation, journal)
and one module per service."""
