"""Ray Serve deployments: one file each. Classes are plain Python; ``sam2_serve.deployments.app`` wraps and binds them."""
