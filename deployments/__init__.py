"""Ray Serve deployments: one file each. Classes are plain Python; ``deployments.app`` wraps and binds them."""
