"""Loader nodes and the model folders they read (registered with folder_paths)."""
