"""The model gateway: the only holder of the model key, its process and its prices."""
