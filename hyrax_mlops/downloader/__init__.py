"""Getting cutouts from survey services over real networks: the shared engine (parallel
requests, retries, validation), its journal, credentials and the staging of answers. The
services themselves are sources (`hyrax_mlops.sources`). Named `downloader` so that it never
shadows the `hyrax_mlops.download()` stage function."""
