"""Ray-free wrappers over sam2's builders: the checkpoint registry, loading, and the image model."""
