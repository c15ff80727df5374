"""TF Serving client and deployment files."""
