"""The Flower App components: ``server_app:app`` and ``client_app:app``."""
